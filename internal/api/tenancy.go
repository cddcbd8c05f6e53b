package api

import (
	"context"
	"fmt"
	"net/http"

	"github.com/danielgtaylor/huma/v2"

	"github.com/penstock/penstock/internal/authz"
	"github.com/penstock/penstock/internal/identity"
	"github.com/penstock/penstock/internal/redact"
)

type tenantPath struct {
	Tenant string `path:"tenant" pattern:"^[a-z0-9][a-z0-9-]{0,62}$"`
}

func (p *tenantPath) scope() authz.Scope { return authz.Scope{Tenant: p.Tenant} }

type envPath struct {
	Tenant      string `path:"tenant" pattern:"^[a-z0-9][a-z0-9-]{0,62}$"`
	Environment string `path:"environment" pattern:"^[a-z0-9][a-z0-9-]{0,62}$"`
}

func (p *envPath) scope() authz.Scope {
	return authz.Scope{Tenant: p.Tenant, Environment: p.Environment}
}

type appDeletePath struct {
	Tenant      string `path:"tenant" pattern:"^[a-z0-9][a-z0-9-]{0,62}$"`
	Environment string `path:"environment" pattern:"^[a-z0-9][a-z0-9-]{0,62}$"`
	Application string `path:"application" pattern:"^[a-z0-9][a-z0-9-]{0,62}$"`
}

type nameInput struct {
	Body struct {
		Name string `json:"name" pattern:"^[a-z0-9][a-z0-9-]{0,62}$"`
	}
}

type createAppInput struct {
	Tenant      string `path:"tenant" pattern:"^[a-z0-9][a-z0-9-]{0,62}$"`
	Environment string `path:"environment" pattern:"^[a-z0-9][a-z0-9-]{0,62}$"`
	Body        struct {
		Name string `json:"name" pattern:"^[a-z0-9][a-z0-9-]{0,62}$"`
	}
}

type envCreateInput struct {
	Tenant string `path:"tenant" pattern:"^[a-z0-9][a-z0-9-]{0,62}$"`
	Body   struct {
		Name string `json:"name" pattern:"^[a-z0-9][a-z0-9-]{0,62}$"`
	}
}

type allowListInput struct {
	Tenant string `path:"tenant" pattern:"^[a-z0-9][a-z0-9-]{0,62}$"`
	Body   struct {
		CIDRs []string `json:"cidrs" maxItems:"256" doc:"empty allows every address"`
	}
}

type egressInput struct {
	Tenant string `path:"tenant" pattern:"^[a-z0-9][a-z0-9-]{0,62}$"`
	Body   struct {
		Rules []string `json:"rules" maxItems:"256" doc:"CIDR, address or host name, each with an optional :port, such as 203.0.113.0/24, 127.0.0.1:5432 or db.internal.example:5432; empty leaves the default policy"`
	}
}

type tenantOutput struct{ Body identity.Tenant }
type tenantsOutput struct {
	Body struct {
		Tenants []identity.Tenant `json:"tenants"`
	}
}
type appOutput struct{ Body identity.Application }
type appsOutput struct {
	Body struct {
		Applications []identity.Application `json:"applications"`
	}
}
type envsOutput struct {
	Body struct {
		Environments []string `json:"environments"`
	}
}

type userView struct {
	Name       string `json:"name"`
	Email      string `json:"email,omitempty"`
	Disabled   bool   `json:"disabled"`
	MFA        bool   `json:"mfa" doc:"a second factor is enrolled"`
	MustChange bool   `json:"must_change_password"`
	Source     string `json:"source" enum:"local,directory" doc:"directory: logs in through the directory, which holds its password and groups"`
	DN         string `json:"dn,omitempty" doc:"a directory user's entry"`
}

func viewUser(u identity.User) userView {
	v := userView{Name: u.Name, Email: u.Email, Disabled: u.Disabled, MFA: u.MFA != nil && u.MFA.Confirmed, MustChange: u.MustChange, Source: "local"}
	if u.Directory != nil {
		v.Source, v.DN = "directory", u.Directory.DN
	}
	return v
}

type createUserInput struct {
	Body struct {
		Name     string `json:"name" pattern:"^[a-z0-9][a-z0-9-]{0,62}$"`
		Email    string `json:"email,omitempty" maxLength:"254"`
		Password string `json:"password,omitempty" maxLength:"1024" writeOnly:"true" doc:"omit to have one generated"`
	}
}

type userPath struct {
	User string `path:"user" pattern:"^[a-z0-9][a-z0-9-]{0,62}$"`
}

type userOutput struct {
	Body struct {
		User     userView `json:"user"`
		Password string   `json:"password,omitempty" doc:"the generated password, shown once; it must be changed at first login"`
	}
}

type usersOutput struct {
	Body struct {
		Users []userView `json:"users"`
	}
}

func registerTenancy(g gate, hapi huma.API, o Options) {
	id := o.Identity
	plat := func(*struct{}) authz.Scope { return authz.Platform }

	register(g, hapi, Route{Action: authz.TenantCreate}, huma.Operation{
		OperationID: "tenant-create", Method: http.MethodPost, Path: "/v1/tenants", Tags: []string{"tenants"},
		Summary: "Create a tenant with the production, staging and test environments", DefaultStatus: http.StatusCreated,
	}, platformScope[nameInput], func(ctx context.Context, _ *caller, in *nameInput) (*tenantOutput, error) {
		t, err := o.Lifecycle.CreateTenant(ctx, in.Body.Name)
		if err != nil {
			return nil, identityError(o, "create tenant", named(err, fmt.Sprintf("tenant %q", in.Body.Name)))
		}
		return &tenantOutput{Body: t}, nil
	})

	register(g, hapi, Route{Action: authz.TenantRead, Listing: true}, huma.Operation{
		OperationID: "tenant-list", Method: http.MethodGet, Path: "/v1/tenants", Tags: []string{"tenants"},
		Summary: "List the tenants you have a role in (all of them for a platform role)",
	}, plat, func(ctx context.Context, c *caller, _ *struct{}) (*tenantsOutput, error) {
		out := &tenantsOutput{}
		out.Body.Tenants = []identity.Tenant{}
		for _, t := range id.Tenants() {
			if g.member(c, t) {
				out.Body.Tenants = append(out.Body.Tenants, t)
			}
		}
		return out, nil
	})

	register(g, hapi, Route{Action: authz.TenantRead}, huma.Operation{
		OperationID: "tenant-get", Method: http.MethodGet, Path: "/v1/tenants/{tenant}", Tags: []string{"tenants"},
		Summary: "A tenant",
	}, (*tenantPath).scope, func(ctx context.Context, _ *caller, in *tenantPath) (*tenantOutput, error) {
		t, ok := id.Tenant(in.Tenant)
		if !ok {
			return nil, notFound()
		}
		return &tenantOutput{Body: t}, nil
	})

	register(g, hapi, Route{Action: authz.TenantDelete, Deletion: true}, huma.Operation{
		OperationID: "tenant-delete", Method: http.MethodDelete, Path: "/v1/tenants/{tenant}", Tags: []string{"tenants"},
		Summary: "Delete a tenant and crypto-shred its keys: its data becomes unrecoverable", DefaultStatus: http.StatusNoContent,
	}, (*tenantPath).scope, func(ctx context.Context, c *caller, in *tenantPath) (*struct{}, error) {
		return nil, identityError(o, "delete tenant", o.Lifecycle.Delete(ctx, c.actor(), authz.Scope{Tenant: in.Tenant}))
	})

	register(g, hapi, Route{Action: authz.AllowlistManage}, huma.Operation{
		OperationID: "allowlist-set", Method: http.MethodPut, Path: "/v1/tenants/{tenant}/allowlist", Tags: []string{"tenants"},
		Summary: "Set the source addresses (CIDRs) allowed to make authenticated requests for the tenant",
	}, func(in *allowListInput) authz.Scope { return authz.Scope{Tenant: in.Tenant} },
		func(ctx context.Context, _ *caller, in *allowListInput) (*tenantOutput, error) {
			t, err := id.SetAllowList(ctx, in.Tenant, in.Body.CIDRs)
			if err != nil {
				return nil, identityError(o, "allow-list", err)
			}
			return &tenantOutput{Body: t}, nil
		})

	register(g, hapi, Route{Action: authz.EgressManage}, huma.Operation{
		OperationID: "egress-set", Method: http.MethodPut, Path: "/v1/tenants/{tenant}/egress", Tags: []string{"tenants"},
		Summary: "Set the destinations the tenant's connectors may reach beyond the default egress policy (platform admins only)",
	}, func(in *egressInput) authz.Scope { return authz.Scope{Tenant: in.Tenant} },
		func(ctx context.Context, _ *caller, in *egressInput) (*tenantOutput, error) {
			t, err := id.SetEgress(ctx, in.Tenant, in.Body.Rules)
			if err != nil {
				return nil, identityError(o, "egress", err)
			}
			return &tenantOutput{Body: t}, nil
		})

	register(g, hapi, Route{Action: authz.TenantRead}, huma.Operation{
		OperationID: "env-list", Method: http.MethodGet, Path: "/v1/tenants/{tenant}/environments", Tags: []string{"tenants"},
		Summary: "A tenant's environments",
	}, (*tenantPath).scope, func(ctx context.Context, _ *caller, in *tenantPath) (*envsOutput, error) {
		t, ok := id.Tenant(in.Tenant)
		if !ok {
			return nil, notFound()
		}
		out := &envsOutput{}
		out.Body.Environments = t.Environments
		return out, nil
	})

	register(g, hapi, Route{Action: authz.EnvManage}, huma.Operation{
		OperationID: "env-create", Method: http.MethodPost, Path: "/v1/tenants/{tenant}/environments", Tags: []string{"tenants"},
		Summary: "Add an environment to a tenant", DefaultStatus: http.StatusCreated,
	}, func(in *envCreateInput) authz.Scope { return authz.Scope{Tenant: in.Tenant} },
		func(ctx context.Context, _ *caller, in *envCreateInput) (*tenantOutput, error) {
			t, err := o.Lifecycle.CreateEnvironment(ctx, in.Tenant, in.Body.Name)
			if err != nil {
				return nil, identityError(o, "add environment", named(err, fmt.Sprintf("environment %q of tenant %q", in.Body.Name, in.Tenant)))
			}
			return &tenantOutput{Body: t}, nil
		})

	register(g, hapi, Route{Action: authz.TenantRead}, huma.Operation{
		OperationID: "app-list", Method: http.MethodGet, Path: "/v1/tenants/{tenant}/environments/{environment}/applications",
		Tags: []string{"applications"}, Summary: "An environment's applications",
	}, (*envPath).scope, func(ctx context.Context, _ *caller, in *envPath) (*appsOutput, error) {
		if _, ok := id.Tenant(in.Tenant); !ok {
			return nil, notFound()
		}
		out := &appsOutput{}
		out.Body.Applications = append([]identity.Application{}, id.Apps(in.Tenant, in.Environment)...)
		return out, nil
	})

	register(g, hapi, Route{Action: authz.AppManage}, huma.Operation{
		OperationID: "app-create", Method: http.MethodPost, Path: "/v1/tenants/{tenant}/environments/{environment}/applications",
		Tags: []string{"applications"}, Summary: "Create an application", DefaultStatus: http.StatusCreated,
	}, func(in *createAppInput) authz.Scope {
		return authz.Scope{Tenant: in.Tenant, Environment: in.Environment}
	},
		func(ctx context.Context, _ *caller, in *createAppInput) (*appOutput, error) {
			a, err := o.Lifecycle.CreateApplication(ctx, in.Tenant, in.Environment, in.Body.Name)
			if err != nil {
				return nil, identityError(o, "create application", named(err, fmt.Sprintf("application %q in %s/%s", in.Body.Name, in.Tenant, in.Environment)))
			}
			return &appOutput{Body: a}, nil
		})

	register(g, hapi, Route{Action: authz.AppManage, Deletion: true}, huma.Operation{
		OperationID: "app-delete", Method: http.MethodDelete, Path: "/v1/tenants/{tenant}/environments/{environment}/applications/{application}",
		Tags: []string{"applications"}, Summary: "Delete an application and crypto-shred its keys", DefaultStatus: http.StatusNoContent,
	}, func(in *appDeletePath) authz.Scope {
		return authz.Scope{Tenant: in.Tenant, Environment: in.Environment, Application: in.Application}
	}, func(ctx context.Context, c *caller, in *appDeletePath) (*struct{}, error) {
		sc := authz.Scope{Tenant: in.Tenant, Environment: in.Environment, Application: in.Application}
		return nil, identityError(o, "delete application", o.Lifecycle.Delete(ctx, c.actor(), sc))
	})

	userManage := Route{Action: authz.UserManage}
	register(g, hapi, userManage, huma.Operation{
		OperationID: "user-create", Method: http.MethodPost, Path: "/v1/users", Tags: []string{"users"},
		Summary: "Create a user (with a generated password unless one is given); it must be changed at first login", DefaultStatus: http.StatusCreated,
	}, platformScope[createUserInput], func(ctx context.Context, _ *caller, in *createUserInput) (*userOutput, error) {
		u, pw, err := id.CreateUser(ctx, in.Body.Name, in.Body.Email, redact.NewSecret(in.Body.Password))
		if err != nil {
			return nil, identityError(o, "create user", err)
		}
		out := &userOutput{}
		out.Body.User = viewUser(u)
		if in.Body.Password == "" {
			out.Body.Password = pw.Reveal()
		}
		return out, nil
	})

	register(g, hapi, userManage, huma.Operation{
		OperationID: "user-list", Method: http.MethodGet, Path: "/v1/users", Tags: []string{"users"}, Summary: "List users",
	}, plat, func(ctx context.Context, _ *caller, _ *struct{}) (*usersOutput, error) {
		out := &usersOutput{}
		out.Body.Users = []userView{}
		for _, u := range id.Users() {
			out.Body.Users = append(out.Body.Users, viewUser(u))
		}
		return out, nil
	})

	for _, v := range []struct {
		verb    string
		disable bool
	}{{"disable", true}, {"enable", false}} {
		register(g, hapi, userManage, huma.Operation{
			OperationID: "user-" + v.verb, Method: http.MethodPost, Path: "/v1/users/{user}/" + v.verb, Tags: []string{"users"},
			Summary: v.verb + " a user (disabling ends their sessions)", DefaultStatus: http.StatusNoContent,
		}, platformScope[userPath], func(ctx context.Context, _ *caller, in *userPath) (*struct{}, error) {
			return nil, identityError(o, v.verb+" user", named(id.SetDisabled(ctx, in.User, v.disable), fmt.Sprintf("user %q", in.User)))
		})
	}

	register(g, hapi, userManage, huma.Operation{
		OperationID: "user-end-sessions", Method: http.MethodPost, Path: "/v1/users/{user}/end-sessions", Tags: []string{"users"},
		Summary: "End every session of a user", DefaultStatus: http.StatusNoContent,
	}, platformScope[userPath], func(ctx context.Context, _ *caller, in *userPath) (*struct{}, error) {
		if _, ok := id.User(in.User); !ok {
			return nil, notFoundOf(named(identity.ErrNotFound, fmt.Sprintf("user %q", in.User)))
		}
		return nil, identityError(o, "end sessions", id.EndSessions(ctx, in.User))
	})

	register(g, hapi, userManage, huma.Operation{
		OperationID: "user-reset-password", Method: http.MethodPost, Path: "/v1/users/{user}/reset-password", Tags: []string{"users"},
		Summary: "Give a user a generated password, shown once, to change at first login; ends their sessions",
	}, platformScope[userPath], func(ctx context.Context, _ *caller, in *userPath) (*userOutput, error) {
		pw, err := id.ResetPassword(ctx, in.User)
		if err != nil {
			return nil, identityError(o, "reset password", named(err, fmt.Sprintf("user %q", in.User)))
		}
		u, _ := id.User(in.User)
		out := &userOutput{}
		out.Body.User, out.Body.Password = viewUser(u), pw.Reveal()
		return out, nil
	})
}
