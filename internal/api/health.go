package api

import (
	"context"
	"net/http"

	"github.com/danielgtaylor/huma/v2"
)

type statusBody struct {
	Body struct {
		Status string `json:"status" enum:"ok,ready" doc:"ok: the process is alive; ready: the engine accepted a write and a read"`
	}
}

func registerHealth(g gate, hapi huma.API, o Options) {
	register(g, hapi, Route{Action: Public}, huma.Operation{
		OperationID: "healthz",
		Method:      http.MethodGet,
		Path:        "/healthz",
		Summary:     "Liveness: the process is running and serving",
		Tags:        []string{"health"},
	}, nil, func(ctx context.Context, _ *caller, _ *struct{}) (*statusBody, error) {
		out := &statusBody{}
		out.Body.Status = "ok"
		return out, nil
	})

	register(g, hapi, Route{Action: Public}, huma.Operation{
		OperationID: "readyz",
		Method:      http.MethodGet,
		Path:        "/readyz",
		Summary:     "Readiness: the engine is reachable and writable",
		Tags:        []string{"health"},
		Errors:      []int{http.StatusServiceUnavailable},
	}, nil, func(ctx context.Context, _ *caller, _ *struct{}) (*statusBody, error) {
		if err := o.Ready.Ready(ctx); err != nil {
			o.Logger.Warn("not ready", "error", err)
			return nil, NewError(http.StatusServiceUnavailable, "engine.unavailable", "the engine is not reachable or not writable")
		}
		out := &statusBody{}
		out.Body.Status = "ready"
		return out, nil
	})
}
