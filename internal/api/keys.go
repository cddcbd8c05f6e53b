package api

import (
	"context"
	"errors"
	"net/http"

	"github.com/danielgtaylor/huma/v2"

	"github.com/penstock/penstock/internal/authz"
	"github.com/penstock/penstock/internal/keyring"
)

type scopeInput struct {
	Body struct {
		Scope string `json:"scope" doc:"tenant, tenant/environment or tenant/environment/application" example:"acme/production"`
	}
}

type rotateOutput struct {
	Body struct {
		Scope   string `json:"scope"`
		Version int    `json:"version" doc:"The new primary key version"`
	}
}

type destroyInput struct {
	Body struct {
		Scope   string `json:"scope" doc:"the scope whose keys, and those of every scope under it, are destroyed"`
		Confirm string `json:"confirm" doc:"must repeat scope: destruction cannot be undone"`
	}
}

type statusOutput struct{ Body keyring.Status }

type masterOutput struct {
	Body struct {
		Master string `json:"master" doc:"Fingerprint of the new master key"`
	}
}

func registerKeys(g gate, hapi huma.API, o Options) {
	keyManage := Route{Action: authz.KeyManage}
	register(g, hapi, keyManage, huma.Operation{
		OperationID: "keys-status", Method: http.MethodGet, Path: "/v1/keys",
		Summary: "Scopes, key versions, rotation times and re-encryption jobs (never key material)",
		Tags:    []string{"keys"},
	}, platformScope[struct{}], func(ctx context.Context, _ *caller, _ *struct{}) (*statusOutput, error) {
		st, err := o.Keyring.Status(ctx)
		if err != nil {
			return nil, internalError(o, "keys status", err)
		}
		return &statusOutput{Body: st}, nil
	})

	register(g, hapi, keyManage, huma.Operation{
		OperationID: "keys-rotate", Method: http.MethodPost, Path: "/v1/keys/rotate",
		Summary:       "Give a scope a new primary data key and re-encrypt its records in the background",
		Tags:          []string{"keys"},
		DefaultStatus: http.StatusAccepted,
	}, platformScope[scopeInput], func(ctx context.Context, _ *caller, in *scopeInput) (*rotateOutput, error) {
		s, err := parseScope(in.Body.Scope)
		if err != nil {
			return nil, err
		}
		v, err := o.Keyring.Rotate(ctx, s)
		if err != nil {
			return nil, keyError(o, "rotate", err)
		}
		out := &rotateOutput{}
		out.Body.Scope, out.Body.Version = s.String(), v
		return out, nil
	})

	register(g, hapi, keyManage, huma.Operation{
		OperationID: "keys-rotate-master", Method: http.MethodPost, Path: "/v1/keys/rotate-master",
		Summary: "Replace the master key file and rewrap every data key under it, without downtime",
		Tags:    []string{"keys"},
		Errors:  []int{http.StatusConflict},
	}, platformScope[struct{}], func(ctx context.Context, _ *caller, _ *struct{}) (*masterOutput, error) {
		// A rotation, once begun, is finished even if the caller goes away: its steps resume
		// after a crash, but a caller's timeout is not a reason to stop halfway.
		if err := o.Keyring.RotateMaster(context.WithoutCancel(ctx), o.Master); err != nil {
			if errors.Is(err, keyring.ErrRotateConfigured) {
				return nil, NewError(http.StatusConflict, "keys.master_configured", err.Error())
			}
			return nil, internalError(o, "rotate master", err)
		}
		out := &masterOutput{}
		out.Body.Master = o.Master.ID()
		return out, nil
	})

	register(g, hapi, keyManage, huma.Operation{
		OperationID: "keys-destroy", Method: http.MethodPost, Path: "/v1/keys/destroy",
		Summary:       "Crypto-shred a scope: destroy its data keys and those under it, making its data unrecoverable",
		Tags:          []string{"keys"},
		DefaultStatus: http.StatusNoContent,
	}, platformScope[destroyInput], func(ctx context.Context, _ *caller, in *destroyInput) (*struct{}, error) {
		s, err := parseScope(in.Body.Scope)
		if err != nil {
			return nil, err
		}
		if in.Body.Confirm != in.Body.Scope {
			return nil, &Error{Status: http.StatusUnprocessableEntity, Code: "invalid_request", Message: "confirm must repeat scope",
				Details: []*ErrorDetail{{Location: "body.confirm", Message: "must equal body.scope"}}}
		}
		if err := o.Keyring.Destroy(context.WithoutCancel(ctx), s); err != nil { // never left halfway by a caller that goes
			return nil, keyError(o, "destroy", err)
		}
		return nil, nil
	})
}

// platformScope is the resource of platform-wide operations.
func platformScope[I any](*I) authz.Scope { return authz.Platform }

func parseScope(raw string) (keyring.Scope, error) {
	s, err := keyring.ParseScope(raw)
	if err != nil {
		return s, &Error{Status: http.StatusUnprocessableEntity, Code: "invalid_request", Message: "invalid scope",
			Details: []*ErrorDetail{{Location: "body.scope", Message: err.Error()}}}
	}
	return s, nil
}

// keyError maps keyring errors to answers; anything unexpected is logged and is a 500.
func keyError(o Options, op string, err error) error {
	switch {
	case errors.Is(err, keyring.ErrDestroyed):
		return NewError(http.StatusGone, "scope.deleted", "the scope was deleted: its keys were destroyed and its data is unrecoverable")
	case errors.Is(err, keyring.ErrNotFound):
		var n *namedError
		if errors.As(err, &n) {
			return NewError(http.StatusNotFound, "secret.not_found", "no such "+n.what)
		}
		return NewError(http.StatusNotFound, "secret.not_found", "no secret with that name")
	case errors.Is(err, keyring.ErrInvalid):
		return NewError(http.StatusUnprocessableEntity, "invalid_request", err.Error())
	case errors.Is(err, keyring.ErrConflict):
		return NewError(http.StatusConflict, "keys.conflict", "the keys changed concurrently; try again")
	}
	return internalError(o, op, err)
}

func internalError(o Options, op string, err error) error {
	o.Logger.Error("request failed", "op", op, "error", err)
	return NewError(http.StatusInternalServerError, "internal", "internal error")
}
