package api

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/danielgtaylor/huma/v2"

	"github.com/penstock/penstock/internal/authz"
	"github.com/penstock/penstock/internal/identity"
)

type grantInput struct {
	Body struct {
		Subject string `json:"subject" doc:"user:<name>" maxLength:"80"`
		Role    string `json:"role" enum:"platform-admin,owner,admin,developer,operator,viewer,auditor"`
		Scope   string `json:"scope" doc:"platform, tenant, tenant/environment or tenant/environment/application" maxLength:"200"`
	}
}

type scopeQuery struct {
	Scope string `query:"scope" doc:"platform (default), tenant, tenant/environment or tenant/environment/application" maxLength:"200"`
}

type bindingPath struct {
	ID string `path:"id" maxLength:"40"`
}

type bindingOutput struct{ Body identity.RoleBinding }
type bindingsOutput struct {
	Body struct {
		Bindings []identity.RoleBinding `json:"bindings"`
	}
}

type createKeyInput struct {
	Body struct {
		Name    string    `json:"name,omitempty" maxLength:"63"`
		Role    string    `json:"role" enum:"owner,admin,developer,operator,viewer,auditor"`
		Scope   string    `json:"scope" maxLength:"200"`
		Service bool      `json:"service,omitempty" doc:"a service key bound to the application the scope names, not to you"`
		Expires time.Time `json:"expires,omitzero"`
		CIDRs   []string  `json:"cidrs,omitempty" maxItems:"64" doc:"source addresses the key may be used from"`
	}
}

type keyView struct {
	ID       string    `json:"id"`
	Name     string    `json:"name,omitempty"`
	Owner    string    `json:"owner"`
	Role     string    `json:"role"`
	Scope    string    `json:"scope"`
	CIDRs    []string  `json:"cidrs,omitempty"`
	Expires  time.Time `json:"expires,omitzero"`
	LastUsed time.Time `json:"last_used,omitzero"`
	Revoked  bool      `json:"revoked"`
	Created  time.Time `json:"created"`
}

func viewKey(k identity.APIKey) keyView {
	return keyView{ID: k.ID, Name: k.Name, Owner: k.Owner, Role: string(k.Role), Scope: k.Scope.String(), CIDRs: k.CIDRs,
		Expires: k.Expires, LastUsed: k.LastUsed, Revoked: k.Revoked, Created: k.Created}
}

type createKeyOutput struct {
	Body struct {
		Key    string  `json:"key" doc:"psk_<id>_<secret>: shown once, never stored"`
		Record keyView `json:"record"`
	}
}

type keysOutput struct {
	Body struct {
		Keys []keyView `json:"keys"`
	}
}

type keyPath struct {
	ID string `path:"id" pattern:"^[0-9a-f]{16}$"`
}

func scopeOf(raw string) authz.Scope {
	if raw == "" {
		return authz.Platform
	}
	sc, err := authz.ParseScope(raw)
	if err != nil {
		// Unparseable scopes are refused by the handler; for the gate, an impossible tenant.
		return authz.Scope{Tenant: "\x00invalid"}
	}
	return sc
}

func registerGrants(g gate, hapi huma.API, o Options) {
	id := o.Identity
	roles := Route{Action: authz.RoleManage}

	register(g, hapi, roles, huma.Operation{
		OperationID: "role-grant", Method: http.MethodPost, Path: "/v1/roles", Tags: []string{"roles"},
		Summary: "Grant a role at a scope; you can grant only what you hold there", DefaultStatus: http.StatusCreated,
	}, func(in *grantInput) authz.Scope { return scopeOf(in.Body.Scope) },
		func(ctx context.Context, c *caller, in *grantInput) (*bindingOutput, error) {
			sc, err := authz.ParseScope(in.Body.Scope)
			if err != nil {
				return nil, invalidField("body.scope", err.Error())
			}
			role := authz.Role(in.Body.Role)
			if c.principal.Kind != "user" {
				// A key could grant its owner the role it holds, which would outlive the
				// owner's directory group; roles are granted by people.
				return nil, NewError(http.StatusForbidden, "forbidden", "roles are granted by a logged-in user, not an API key")
			}
			if in.Body.Subject == c.principal.Kind+":"+c.principal.Name {
				// What one holds through a directory group must not outlive the group: a
				// grant to oneself would. Another administrator grants it, if at all.
				return nil, NewError(http.StatusForbidden, "forbidden", "you cannot grant a role to yourself")
			}
			if !authz.Grants(c.principal.Bindings, role, sc) {
				return nil, NewError(http.StatusForbidden, "forbidden", "you cannot grant a role you do not hold at that scope")
			}
			// Below the platform, roles go to the tenant's members only (the platform
			// administrator adds a user to a tenant): anything else answers as a missing user
			// does, so tenants cannot probe for the platform's users.
			if !authz.Decide(c.principal, authz.UserManage, authz.Platform).Allow && !id.Member(in.Body.Subject, sc.Tenant) {
				return nil, notFoundOf(named(identity.ErrNotFound, fmt.Sprintf("member %q of tenant %s", in.Body.Subject, sc.Tenant)))
			}
			b, err := id.Grant(ctx, in.Body.Subject, role, sc)
			if err != nil {
				return nil, identityError(o, "grant", named(err, fmt.Sprintf("subject %q", in.Body.Subject)))
			}
			return &bindingOutput{Body: b}, nil
		})

	register(g, hapi, roles, huma.Operation{
		OperationID: "role-list", Method: http.MethodGet, Path: "/v1/roles", Tags: []string{"roles"},
		Summary: "Role bindings at and under a scope",
	}, func(in *scopeQuery) authz.Scope { return scopeOf(in.Scope) },
		func(ctx context.Context, c *caller, in *scopeQuery) (*bindingsOutput, error) {
			if _, err := authz.ParseScope(in.Scope); in.Scope != "" && err != nil {
				return nil, NewError(http.StatusBadRequest, "name.invalid", "query.scope: "+err.Error())
			}
			sc := scopeOf(in.Scope)
			out := &bindingsOutput{}
			out.Body.Bindings = []identity.RoleBinding{}
			for _, b := range id.Bindings("") {
				if sc.Contains(b.Scope) && g.fromAllowed(c, b.Scope.Tenant) {
					out.Body.Bindings = append(out.Body.Bindings, b)
				}
			}
			return out, nil
		})

	register(g, hapi, roles, huma.Operation{
		OperationID: "role-revoke", Method: http.MethodDelete, Path: "/v1/roles/{id}", Tags: []string{"roles"},
		Summary: "Revoke a role binding", DefaultStatus: http.StatusNoContent,
	}, func(in *bindingPath) authz.Scope {
		if b, ok := id.Binding(in.ID); ok {
			return b.Scope
		}
		return authz.Scope{Tenant: "\x00missing"}
	}, func(ctx context.Context, c *caller, in *bindingPath) (*struct{}, error) {
		b, ok := id.Binding(in.ID)
		if !ok {
			return nil, notFoundOf(named(identity.ErrNotFound, fmt.Sprintf("role binding %q", in.ID)))
		}
		if !authz.Grants(c.principal.Bindings, b.Role, b.Scope) {
			return nil, NewError(http.StatusForbidden, "forbidden", "you cannot revoke a role you do not hold at that scope")
		}
		return nil, identityError(o, "revoke", id.Revoke(ctx, in.ID))
	})

	keys := Route{Action: authz.APIKeyManage}
	register(g, hapi, keys, huma.Operation{
		OperationID: "apikey-create", Method: http.MethodPost, Path: "/v1/apikeys", Tags: []string{"api keys"},
		Summary: "Create an API key with one role at one scope (at most what you hold there); the key is shown once", DefaultStatus: http.StatusCreated,
	}, func(in *createKeyInput) authz.Scope { return scopeOf(in.Body.Scope) },
		func(ctx context.Context, c *caller, in *createKeyInput) (*createKeyOutput, error) {
			sc, err := authz.ParseScope(in.Body.Scope)
			if err != nil {
				return nil, invalidField("body.scope", err.Error())
			}
			if c.principal.Kind != "user" {
				return nil, NewError(http.StatusForbidden, "forbidden", "API keys are created by users, not by other keys")
			}
			role := authz.Role(in.Body.Role)
			if !authz.Grants(c.principal.Bindings, role, sc) {
				return nil, NewError(http.StatusForbidden, "forbidden", "a key cannot hold a role you do not hold at that scope")
			}
			owner := c.principal.Kind + ":" + c.principal.Name
			if in.Body.Service {
				if sc.Application == "" {
					return nil, invalidField("body.scope", "a service key is bound to an application: tenant/environment/application")
				}
				owner = "app:" + sc.String()
			}
			nk, err := id.CreateAPIKey(ctx, owner, in.Body.Name, role, sc, in.Body.Expires, in.Body.CIDRs)
			if err != nil {
				return nil, identityError(o, "create key", err)
			}
			out := &createKeyOutput{}
			out.Body.Key, out.Body.Record = nk.Key.Reveal(), viewKey(nk.Record)
			return out, nil
		})

	register(g, hapi, keys, huma.Operation{
		OperationID: "apikey-list", Method: http.MethodGet, Path: "/v1/apikeys", Tags: []string{"api keys"},
		Summary: "API keys at and under a scope (never their secrets)",
	}, func(in *scopeQuery) authz.Scope { return scopeOf(in.Scope) },
		func(ctx context.Context, c *caller, in *scopeQuery) (*keysOutput, error) {
			if _, err := authz.ParseScope(in.Scope); in.Scope != "" && err != nil {
				return nil, NewError(http.StatusBadRequest, "name.invalid", "query.scope: "+err.Error())
			}
			sc := scopeOf(in.Scope)
			out := &keysOutput{}
			out.Body.Keys = []keyView{}
			for _, k := range id.APIKeys("") {
				if sc.Contains(k.Scope) && g.fromAllowed(c, k.Scope.Tenant) {
					out.Body.Keys = append(out.Body.Keys, viewKey(k))
				}
			}
			return out, nil
		})

	register(g, hapi, keys, huma.Operation{
		OperationID: "apikey-revoke", Method: http.MethodDelete, Path: "/v1/apikeys/{id}", Tags: []string{"api keys"},
		Summary: "Revoke an API key everywhere", DefaultStatus: http.StatusNoContent,
	}, func(in *keyPath) authz.Scope {
		if k, ok := id.APIKey(in.ID); ok {
			return k.Scope
		}
		return authz.Scope{Tenant: "\x00missing"}
	}, func(ctx context.Context, c *caller, in *keyPath) (*struct{}, error) {
		k, ok := id.APIKey(in.ID)
		if !ok {
			return nil, notFoundOf(named(identity.ErrNotFound, fmt.Sprintf("API key %q", in.ID)))
		}
		if k.Owner != c.principal.Kind+":"+c.principal.Name && !authz.Grants(c.principal.Bindings, k.Role, k.Scope) {
			return nil, NewError(http.StatusForbidden, "forbidden", "you cannot revoke a key with a role you do not hold at its scope")
		}
		return nil, identityError(o, "revoke key", id.RevokeAPIKey(ctx, in.ID))
	})
}

func invalidField(loc, msg string) error {
	return &Error{Status: http.StatusUnprocessableEntity, Code: "invalid_request", Message: strings.TrimSpace(msg),
		Details: []*ErrorDetail{{Location: loc, Message: msg}}}
}
