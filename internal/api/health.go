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

func registerHealth(hapi huma.API, o Options) {
	huma.Register(hapi, huma.Operation{
		OperationID: "healthz",
		Method:      http.MethodGet,
		Path:        "/healthz",
		Summary:     "Liveness: the process is running and serving",
		Tags:        []string{"health"},
	}, func(ctx context.Context, _ *struct{}) (*statusBody, error) {
		out := &statusBody{}
		out.Body.Status = "ok"
		return out, nil
	})

	huma.Register(hapi, huma.Operation{
		OperationID: "readyz",
		Method:      http.MethodGet,
		Path:        "/readyz",
		Summary:     "Readiness: the engine is reachable and writable",
		Tags:        []string{"health"},
		Errors:      []int{http.StatusServiceUnavailable},
	}, func(ctx context.Context, _ *struct{}) (*statusBody, error) {
		if err := o.Ready.Ready(ctx); err != nil {
			o.Logger.Warn("not ready", "error", err)
			return nil, NewError(http.StatusServiceUnavailable, "engine.unavailable", "the engine is not reachable or not writable")
		}
		out := &statusBody{}
		out.Body.Status = "ready"
		return out, nil
	})
}
