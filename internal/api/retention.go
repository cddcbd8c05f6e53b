package api

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"time"

	"github.com/danielgtaylor/huma/v2"

	"github.com/penstock/penstock/internal/activity"
	"github.com/penstock/penstock/internal/authz"
	"github.com/penstock/penstock/internal/retention"
)

// RetentionWarningHeader is on every response about an environment retention has warned of.
const RetentionWarningHeader = "Penstock-Retention-Warning"

type envOutput struct {
	Body struct {
		Tenant       string              `json:"tenant"`
		Name         string              `json:"name"`
		Applications []string            `json:"applications"`
		Retention    retention.EnvStatus `json:"retention"`
	}
}

type envDeleteInput struct {
	Tenant      string `path:"tenant" pattern:"^[a-z0-9][a-z0-9-]{0,62}$"`
	Environment string `path:"environment" pattern:"^[a-z0-9][a-z0-9-]{0,62}$"`
	Confirm     string `query:"confirm" doc:"tenant/environment, repeated: the deletion cannot be undone"`
}

type reportInput struct {
	Tenant string `query:"tenant" doc:"one tenant; empty means every tenant (platform administrators)" pattern:"^[a-z0-9][a-z0-9-]{0,62}$"`
}

type reportOutput struct {
	Body struct {
		Environments []retention.EnvStatus `json:"environments"`
	}
}

type runInput struct {
	Body struct {
		DryRun bool `json:"dry_run,omitempty" doc:"list what would be warned and deleted, and change nothing"`
	}
}

type runOutput struct{ Body retention.RunResult }

type policyInput struct {
	Tenant string `path:"tenant" pattern:"^[a-z0-9][a-z0-9-]{0,62}$"`
	Body   retention.TenantPolicy
}

type policyOutput struct{ Body retention.TenantPolicy }

func registerRetention(g gate, hapi huma.API, o Options) {
	r := o.Retention
	id := o.Identity
	register(g, hapi, Route{Action: authz.TenantRead}, huma.Operation{
		OperationID: "env-get", Method: http.MethodGet, Path: "/v1/tenants/{tenant}/environments/{environment}", Tags: []string{"tenants"},
		Summary: "An environment: its applications, its last use and when retention warns and deletes it",
	}, (*envPath).scope, func(ctx context.Context, _ *caller, in *envPath) (*envOutput, error) {
		st, err := r.Env(ctx, in.Tenant, in.Environment)
		if err != nil {
			return nil, retentionError(o, "environment", err)
		}
		out := &envOutput{}
		out.Body.Tenant, out.Body.Name, out.Body.Retention = in.Tenant, in.Environment, st
		out.Body.Applications = []string{}
		for _, a := range id.Apps(in.Tenant, in.Environment) {
			out.Body.Applications = append(out.Body.Applications, a.Name)
		}
		return out, nil
	})

	register(g, hapi, Route{Action: authz.TenantDelete, Deletion: true}, huma.Operation{
		OperationID: "env-delete", Method: http.MethodDelete, Path: "/v1/tenants/{tenant}/environments/{environment}", Tags: []string{"tenants"},
		Summary:       "Delete an environment now and crypto-shred its keys (confirm=tenant/environment): its data becomes unrecoverable, from the store and from every backup",
		DefaultStatus: http.StatusNoContent,
	}, func(in *envDeleteInput) authz.Scope {
		return authz.Scope{Tenant: in.Tenant, Environment: in.Environment}
	},
		func(ctx context.Context, c *caller, in *envDeleteInput) (*struct{}, error) {
			if in.Confirm != in.Tenant+"/"+in.Environment {
				return nil, &Error{Status: http.StatusBadRequest, Code: "confirmation_required",
					Message: "the deletion cannot be undone: repeat the environment as confirm=" + in.Tenant + "/" + in.Environment,
					Details: []*ErrorDetail{{Location: "query.confirm", Message: "must be " + in.Tenant + "/" + in.Environment}}}
			}
			sc := authz.Scope{Tenant: in.Tenant, Environment: in.Environment}
			return nil, identityError(o, "delete environment", o.Lifecycle.DeleteFor(ctx, c.actor(), "early deletion asked by "+c.actor(), sc))
		})

	tags := []string{"retention"}
	register(g, hapi, Route{Action: authz.TenantRead}, huma.Operation{
		OperationID: "retention-report", Method: http.MethodGet, Path: "/v1/retention",
		Summary: "Every environment (of one tenant, or of all): its last use, the dates of its warnings and of its deletion", Tags: tags,
	}, func(in *reportInput) authz.Scope {
		if in.Tenant == "" {
			return authz.Platform
		}
		return authz.Scope{Tenant: in.Tenant}
	}, func(ctx context.Context, _ *caller, in *reportInput) (*reportOutput, error) {
		list, err := r.Report(ctx, in.Tenant)
		if err != nil {
			return nil, retentionError(o, "report", err)
		}
		out := &reportOutput{}
		out.Body.Environments = list
		return out, nil
	})

	register(g, hapi, Route{Action: authz.RetentionManage}, huma.Operation{
		OperationID: "retention-run", Method: http.MethodPost, Path: "/v1/retention/run",
		Summary: "Run retention now (what the scheduler does every retention.check_every); dry_run lists what would go and changes nothing", Tags: tags,
	}, func(*runInput) authz.Scope { return authz.Platform }, func(ctx context.Context, _ *caller, in *runInput) (*runOutput, error) {
		res, err := r.Run(ctx, in.Body.DryRun)
		if err != nil && len(res.Actions) == 0 && res.Checked == 0 {
			return nil, retentionError(o, "run", err)
		}
		// Errors of single environments are in their actions; the others are tried again.
		return &runOutput{Body: res}, nil
	})

	register(g, hapi, Route{Action: authz.TenantRead}, huma.Operation{
		OperationID: "retention-policy-get", Method: http.MethodGet, Path: "/v1/retention/tenants/{tenant}",
		Summary: "A tenant's own retention policy (empty: the platform's)", Tags: tags,
	}, (*tenantPath).scope, func(ctx context.Context, _ *caller, in *tenantPath) (*policyOutput, error) {
		p, err := r.PolicyOf(ctx, in.Tenant)
		if err != nil {
			return nil, retentionError(o, "policy", err)
		}
		return &policyOutput{Body: p}, nil
	})
	register(g, hapi, Route{Action: authz.RetentionManage}, huma.Operation{
		OperationID: "retention-policy-put", Method: http.MethodPut, Path: "/v1/retention/tenants/{tenant}",
		Summary: "Set a tenant's retention: its own inactive_after and its exempt environments (platform administrators)", Tags: tags,
	}, func(in *policyInput) authz.Scope { return authz.Scope{Tenant: in.Tenant} },
		func(ctx context.Context, _ *caller, in *policyInput) (*policyOutput, error) {
			p, err := r.SetPolicy(ctx, in.Tenant, in.Body)
			if err != nil {
				return nil, retentionError(o, "set policy", err)
			}
			return &policyOutput{Body: p}, nil
		})
}

func retentionError(o Options, op string, err error) error {
	if errors.Is(err, retention.ErrInvalid) {
		return NewError(http.StatusUnprocessableEntity, "invalid_request", err.Error())
	}
	return identityError(o, op, err)
}

// noteUse, for a request about an environment: a call by one of the tenant's own principals
// is use (a platform administrator looking does not keep it), and a warned environment's
// responses say when it will be deleted.
func noteUse(ctx context.Context, o Options, c *caller, sc authz.Scope) {
	if sc.Environment == "" {
		return
	}
	if w, ok := o.Retention.Warned(sc.Tenant, sc.Environment); ok {
		if h := requestFrom(ctx).header; h != nil {
			h.Set(RetentionWarningHeader, "environment "+sc.Tenant+"/"+sc.Environment+" is unused; retention deletes it with all of its data on "+
				w.DeleteAt.UTC().Format(time.RFC3339)+" unless it is used before (penstock env get)")
		}
	}
	if slices.ContainsFunc(c.principal.Bindings, func(b authz.Binding) bool { return b.Scope.Tenant == sc.Tenant }) {
		o.Activity.Touch(sc.Tenant, sc.Environment, activity.API)
	}
}
