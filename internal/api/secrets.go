package api

import (
	"context"
	"fmt"
	"net/http"

	"github.com/danielgtaylor/huma/v2"

	"github.com/penstock/penstock/internal/authz"
	"github.com/penstock/penstock/internal/keyring"
	"github.com/penstock/penstock/internal/redact"
	"github.com/penstock/penstock/internal/secrets"
)

// secretPath repeats appParams' fields: huma reads parameters from one struct level only.
type secretPath struct {
	Tenant      string `path:"tenant" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Tenant"`
	Environment string `path:"environment" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Environment"`
	Application string `path:"application" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Application"`
	Name        string `path:"name" pattern:"^[A-Za-z0-9_-]{1,128}$" doc:"Secret name"`
}

func (p secretPath) scope() keyring.Scope {
	return appParams{p.Tenant, p.Environment, p.Application}.keyScope()
}

type putSecretInput struct {
	Tenant      string `path:"tenant" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Tenant"`
	Environment string `path:"environment" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Environment"`
	Application string `path:"application" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Application"`
	Name        string `path:"name" pattern:"^[A-Za-z0-9_-]{1,128}$" doc:"Secret name"`
	Body        struct {
		Value string `json:"value" minLength:"1" maxLength:"65536" writeOnly:"true" doc:"The secret value; never returned"`
	}
}

type metaOutput struct{ Body secrets.Meta }

type listOutput struct {
	Body struct {
		Secrets []secrets.Meta `json:"secrets"`
	}
}

const secretsPath = "/v1/tenants/{tenant}/environments/{environment}/applications/{application}/secrets"

func registerSecrets(g gate, hapi huma.API, o Options) {
	register(g, hapi, Route{Action: authz.SecretWrite}, huma.Operation{
		OperationID: "secret-put", Method: http.MethodPut, Path: secretsPath + "/{name}",
		Summary: "Store a secret (write-only: its value is never returned)",
		Tags:    []string{"secrets"},
		Errors:  []int{http.StatusGone},
	}, func(in *putSecretInput) authz.Scope {
		return authz.Scope{Tenant: in.Tenant, Environment: in.Environment, Application: in.Application}
	},
		func(ctx context.Context, _ *caller, in *putSecretInput) (*metaOutput, error) {
			p := secretPath{in.Tenant, in.Environment, in.Application, in.Name}
			m, err := o.Secrets.Put(ctx, p.scope(), in.Name, redact.NewSecret(in.Body.Value))
			if err != nil {
				return nil, keyError(o, "put secret", err)
			}
			return &metaOutput{Body: m}, nil
		})

	register(g, hapi, Route{Action: authz.SecretRead}, huma.Operation{
		OperationID: "secret-list", Method: http.MethodGet, Path: secretsPath,
		Summary: "List an application's secrets: names, revisions, times, never values",
		Tags:    []string{"secrets"},
		Errors:  []int{http.StatusGone},
	}, func(in *appParams) authz.Scope { return in.scope() }, func(ctx context.Context, _ *caller, in *appParams) (*listOutput, error) {
		list, err := o.Secrets.List(ctx, in.keyScope())
		if err != nil {
			return nil, keyError(o, "list secrets", err)
		}
		out := &listOutput{}
		out.Body.Secrets = list
		if out.Body.Secrets == nil {
			out.Body.Secrets = []secrets.Meta{}
		}
		return out, nil
	})

	register(g, hapi, Route{Action: authz.SecretWrite}, huma.Operation{
		OperationID: "secret-delete", Method: http.MethodDelete, Path: secretsPath + "/{name}",
		Summary:       "Delete a secret",
		Tags:          []string{"secrets"},
		DefaultStatus: http.StatusNoContent,
		Errors:        []int{http.StatusNotFound, http.StatusGone},
	}, func(in *secretPath) authz.Scope { return authz.Scope(in.scope()) }, func(ctx context.Context, _ *caller, in *secretPath) (*struct{}, error) {
		if err := o.Secrets.Delete(ctx, in.scope(), in.Name); err != nil {
			return nil, keyError(o, "delete secret", named(err, fmt.Sprintf("secret %q in %s", in.Name, authz.Scope(in.scope()))))
		}
		return nil, nil
	})
}
