package api

import (
	"context"
	"net/http"

	"github.com/danielgtaylor/huma/v2"

	"github.com/penstock/penstock/internal/engine"
)

type statusBody struct {
	Body struct {
		Status string `json:"status" enum:"ok,ready,degraded" doc:"ok: the process is alive; ready: the engine accepted a write and a read; degraded: ready, but some streams came back damaged (they are named, and the rest is served)"`
		// Degraded names the platform's damaged streams; a tenant's are counted, not named,
		// since readiness answers anyone.
		Degraded      []degradedStream `json:"degraded,omitempty"`
		TenantStreams int              `json:"damaged_tenant_streams,omitempty" doc:"Damaged streams of tenants: named by penstock doctor and in the audit log (platform.stream_damaged)"`
	}
}

type degradedStream struct {
	Stream   string `json:"stream"`
	Problem  string `json:"problem" doc:"missing, fewer, behind, lost or unreadable"`
	Expected uint64 `json:"expected,omitempty"`
	Found    uint64 `json:"found"`
	Missing  string `json:"missing,omitempty" doc:"Sequences, when known"`
	Detail   string `json:"detail"`
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
		if o.Damage != nil {
			for _, f := range o.Damage() {
				out.Body.Status = "degraded"
				if f.Account != engine.PlatformAccount {
					out.Body.TenantStreams++
					continue
				}
				out.Body.Degraded = append(out.Body.Degraded, degradedStream{Stream: f.Name(), Problem: f.Problem,
					Expected: f.Expected, Found: f.Found, Missing: f.Missing, Detail: f.Detail})
			}
		}
		return out, nil
	})
}
