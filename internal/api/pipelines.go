package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/danielgtaylor/huma/v2"

	"github.com/penstock/penstock/internal/authz"
	"github.com/penstock/penstock/internal/keyring"
	"github.com/penstock/penstock/internal/pipeline"
)

type pipelineParams struct {
	Tenant      string `path:"tenant" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Tenant"`
	Environment string `path:"environment" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Environment"`
	Application string `path:"application" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Application"`
	Pipeline    string `path:"pipeline" pattern:"^[a-z0-9][a-z0-9-]{0,57}$" doc:"Pipeline"`
}

func (p *pipelineParams) app() appParams { return appParams{p.Tenant, p.Environment, p.Application} }

func (p *pipelineParams) pipeline() thing { return p.app().thing("pipeline", p.Pipeline) }

type applyPipelineInput struct {
	Tenant      string `path:"tenant" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Tenant"`
	Environment string `path:"environment" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Environment"`
	Application string `path:"application" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Application"`
	Pipeline    string `path:"pipeline" pattern:"^[a-z0-9][a-z0-9-]{0,57}$" doc:"Pipeline"`
	DryRun      bool   `query:"dry_run" doc:"validate completely (secrets, egress) without storing"`
	Body        map[string]any
}

func (p *applyPipelineInput) app() appParams {
	return appParams{p.Tenant, p.Environment, p.Application}
}

type pipelineOutput struct{ Body pipeline.Pipeline }

type pipelinesOutput struct {
	Body struct {
		Pipelines []pipeline.Pipeline `json:"pipelines"`
	}
}

type runsOutput struct {
	Body struct {
		Runs []pipeline.Run `json:"runs"`
	}
}

type logsOutput struct {
	Body struct {
		Lines []json.RawMessage `json:"lines"`
	}
}

func registerPipelines(g gate, hapi huma.API, o Options) {
	ps := o.Pipelines
	tags := []string{"pipelines"}
	pScope := func(in *pipelineParams) authz.Scope { return in.app().scope() }
	// exists answers 404 for an application that does not exist, before anything else.
	exists := func(a appParams) error {
		if _, ok := o.Identity.App(a.Tenant, a.Environment, a.Application); !ok {
			return missing(a.scope())
		}
		return nil
	}
	fail := func(op string, err error, about ...thing) error { return pipelineError(o, op, err, about...) }

	register(g, hapi, Route{Action: authz.PipelineManage}, huma.Operation{
		OperationID: "pipeline-apply", Method: http.MethodPut, Path: appBase + "/pipelines/{pipeline}", Tags: tags,
		Summary: "Create or update a pipeline (validated completely first; dry_run only validates)",
	}, func(in *applyPipelineInput) authz.Scope { return in.app().scope() },
		func(ctx context.Context, _ *caller, in *applyPipelineInput) (*pipelineOutput, error) {
			if err := exists(in.app()); err != nil {
				return nil, err
			}
			if n, ok := in.Body["name"]; ok && n != in.Pipeline {
				return nil, NewError(http.StatusUnprocessableEntity, "invalid_request", "name: must match the pipeline in the path")
			}
			in.Body["name"] = in.Pipeline
			doc, _ := json.Marshal(in.Body)
			if in.DryRun {
				spec, err := ps.Validate(ctx, in.app().keyScope(), doc)
				if err != nil {
					return nil, fail("validate pipeline", err, in.app().thing("pipeline", in.Pipeline))
				}
				return &pipelineOutput{Body: pipeline.Pipeline{Tenant: in.Tenant, Environment: in.Environment,
					Application: in.Application, Name: spec.Name, Spec: spec}}, nil
			}
			p, _, err := ps.Apply(ctx, in.app().keyScope(), doc)
			if err != nil {
				return nil, fail("apply pipeline", err, in.app().thing("pipeline", in.Pipeline))
			}
			return &pipelineOutput{Body: p}, nil
		})

	register(g, hapi, Route{Action: authz.TenantRead}, huma.Operation{
		OperationID: "pipeline-list", Method: http.MethodGet, Path: appBase + "/pipelines", Tags: tags,
		Summary: "An application's pipelines",
	}, func(in *appParams) authz.Scope { return in.scope() }, func(ctx context.Context, _ *caller, in *appParams) (*pipelinesOutput, error) {
		if err := exists(*in); err != nil {
			return nil, err
		}
		list, err := ps.List(ctx, in.keyScope())
		if err != nil {
			return nil, fail("list pipelines", err)
		}
		out := &pipelinesOutput{}
		out.Body.Pipelines = list
		return out, nil
	})

	register(g, hapi, Route{Action: authz.TenantRead}, huma.Operation{
		OperationID: "pipeline-get", Method: http.MethodGet, Path: appBase + "/pipelines/{pipeline}", Tags: tags,
		Summary: "A pipeline: its spec, version, state and last run",
	}, pScope, func(ctx context.Context, _ *caller, in *pipelineParams) (*pipelineOutput, error) {
		p, err := ps.Get(ctx, in.app().keyScope(), in.Pipeline)
		if err != nil {
			return nil, fail("get pipeline", err, in.pipeline())
		}
		return &pipelineOutput{Body: p}, nil
	})

	register(g, hapi, Route{Action: authz.PipelineManage}, huma.Operation{
		OperationID: "pipeline-delete", Method: http.MethodDelete, Path: appBase + "/pipelines/{pipeline}", Tags: tags,
		Summary: "Stop and delete a pipeline, its checkpoint and history (its dead-letter queue stays)", DefaultStatus: http.StatusNoContent,
	}, pScope, func(ctx context.Context, _ *caller, in *pipelineParams) (*struct{}, error) {
		return nil, fail("delete pipeline", ps.Delete(ctx, in.app().keyScope(), in.Pipeline), in.pipeline())
	})

	for _, act := range []struct {
		op, path, summary string
		paused            bool
	}{{"pipeline-pause", "/pause", "Pause a pipeline: the batch in flight commits, then it stops", true},
		{"pipeline-resume", "/resume", "Resume a paused pipeline", false}} {
		register(g, hapi, Route{Action: authz.PipelineRun}, huma.Operation{
			OperationID: act.op, Method: http.MethodPost, Path: appBase + "/pipelines/{pipeline}" + act.path, Tags: tags, Summary: act.summary,
		}, pScope, func(ctx context.Context, _ *caller, in *pipelineParams) (*pipelineOutput, error) {
			p, err := ps.SetPaused(ctx, in.app().keyScope(), in.Pipeline, act.paused)
			if err != nil {
				return nil, fail(act.op, err, in.pipeline())
			}
			return &pipelineOutput{Body: p}, nil
		})
	}

	register(g, hapi, Route{Action: authz.PipelineRun}, huma.Operation{
		OperationID: "pipeline-run", Method: http.MethodPost, Path: appBase + "/pipelines/{pipeline}/run", Tags: tags,
		Summary: "Start a run now, whatever the schedule", DefaultStatus: http.StatusAccepted,
	}, pScope, func(ctx context.Context, _ *caller, in *pipelineParams) (*runNowOutput, error) {
		id, err := ps.RunNow(ctx, in.app().keyScope(), in.Pipeline)
		if err != nil {
			return nil, fail("run pipeline", err, in.pipeline())
		}
		out := &runNowOutput{}
		out.Body.Run = id
		return out, nil
	})

	register(g, hapi, Route{Action: authz.TenantRead}, huma.Operation{
		OperationID: "pipeline-runs", Method: http.MethodGet, Path: appBase + "/pipelines/{pipeline}/runs", Tags: tags,
		Summary: "A pipeline's last 50 runs, newest first: counts, duration, error",
	}, pScope, func(ctx context.Context, _ *caller, in *pipelineParams) (*runsOutput, error) {
		if err := ps.Exists(ctx, in.app().keyScope(), in.Pipeline); err != nil {
			return nil, fail("pipeline runs", err, in.pipeline())
		}
		runs, err := ps.Runs(ctx, in.app().keyScope(), in.Pipeline)
		if err != nil {
			return nil, fail("pipeline runs", err, in.pipeline())
		}
		out := &runsOutput{}
		out.Body.Runs = runs
		return out, nil
	})

	register(g, hapi, Route{Action: authz.PipelineRun}, huma.Operation{
		OperationID: "pipeline-logs", Method: http.MethodGet, Path: appBase + "/pipelines/{pipeline}/logs", Tags: tags,
		Summary: "A pipeline's last 500 log lines on this node (redacted), oldest first",
	}, pScope, func(ctx context.Context, _ *caller, in *pipelineParams) (*logsOutput, error) {
		if err := ps.Exists(ctx, in.app().keyScope(), in.Pipeline); err != nil {
			return nil, fail("pipeline logs", err, in.pipeline())
		}
		out := &logsOutput{}
		out.Body.Lines = ps.Logs(in.app().keyScope(), in.Pipeline)
		return out, nil
	})
}

// pipelineError maps the pipelines' errors to the API's codes; a missing pipeline is named from
// about, the things the request names.
func pipelineError(o Options, op string, err error, about ...thing) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, pipeline.ErrNotFound):
		for _, t := range about {
			if t.kind == "pipeline" {
				return NewError(http.StatusNotFound, "not_found", "no such "+t.desc)
			}
		}
		return NewError(http.StatusNotFound, "not_found", "no such pipeline")
	case errors.Is(err, pipeline.ErrInvalid):
		return specError(err)
	case errors.Is(err, pipeline.ErrPaused):
		return NewError(http.StatusConflict, "pipeline.paused", "the pipeline is paused; resume it first")
	case errors.Is(err, pipeline.ErrRunning):
		return NewError(http.StatusConflict, "pipeline.running", "a run is already in progress or queued")
	case errors.Is(err, keyring.ErrDestroyed):
		return keyError(o, op, err)
	}
	return fabricError(o, op, err)
}

type runNowOutput struct {
	Body struct {
		Run string `json:"run" doc:"the run's id, as GET .../runs lists it once it starts (a run in progress shows its totals there)"`
	}
}

// specError answers a spec's problems: one detail each, located at its field path in the
// body (the spec is the body), as huma locates its own validation errors.
func specError(err error) *Error {
	var es pipeline.SpecErrors
	if !errors.As(err, &es) {
		return NewError(http.StatusUnprocessableEntity, "pipeline.invalid", err.Error())
	}
	e := NewError(http.StatusUnprocessableEntity, "pipeline.invalid", fmt.Sprintf("pipeline spec has %d error(s)", len(es)))
	for _, se := range es {
		loc := "body"
		if se.Path != "" {
			loc += "." + se.Path
		}
		e.Details = append(e.Details, &ErrorDetail{Location: loc, Message: se.Detail()})
	}
	return e
}

type webhookInput struct {
	Tenant      string `path:"tenant" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Tenant"`
	Environment string `path:"environment" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Environment"`
	Application string `path:"application" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Application"`
	Pipeline    string `path:"pipeline" pattern:"^[a-z0-9][a-z0-9-]{0,57}$" doc:"Pipeline"`
	Delivery    string `header:"Idempotency-Key" maxLength:"256" doc:"makes a resend within the queue's duplicate window a no-op"`
	RawBody     []byte
	headers     http.Header
}

// Resolve keeps the request's headers: the signature header's name is the pipeline's setting.
func (in *webhookInput) Resolve(ctx huma.Context) []error {
	in.headers = http.Header{}
	ctx.EachHeader(func(name, value string) { in.headers.Add(name, value) })
	return nil
}

type webhookOutput struct {
	Body struct {
		Queued bool `json:"queued" doc:"the body is stored durably in the pipeline's ingest queue"`
	}
}

func registerWebhooks(g gate, hapi huma.API, o Options) {
	register(g, hapi, Route{Action: Public}, huma.Operation{
		OperationID: "webhook", Method: http.MethodPost, Path: "/v1/hooks/{tenant}/{environment}/{application}/{pipeline}", Tags: []string{"pipelines"},
		Summary:       "A webhook pipeline's endpoint: the body, signed with HMAC-SHA256 in the pipeline's signature header, is queued durably before the 202",
		DefaultStatus: http.StatusAccepted, Errors: []int{http.StatusUnauthorized, http.StatusNotFound},
	}, nil, func(ctx context.Context, _ *caller, in *webhookInput) (*webhookOutput, error) {
		app := appParams{in.Tenant, in.Environment, in.Application}
		err := o.Pipelines.Webhook(ctx, app.keyScope(), in.Pipeline, in.headers.Get, in.RawBody, in.Delivery)
		switch {
		case errors.Is(err, pipeline.ErrNotFound), errors.Is(err, pipeline.ErrNotWebhook):
			// The same answer for a wrong signature's neighbours: nothing to learn by probing.
			return nil, NewError(http.StatusNotFound, "not_found", "no such webhook")
		case errors.Is(err, pipeline.ErrBadSignature):
			return nil, NewError(http.StatusUnauthorized, "webhook.bad_signature", "the signature header does not match the body")
		case err != nil:
			return nil, pipelineError(o, "webhook", err)
		}
		out := &webhookOutput{}
		out.Body.Queued = true
		return out, nil
	})
}
