package api

import (
	"context"
	"net/http"
	"testing"

	"github.com/danielgtaylor/huma/v2"
	"github.com/danielgtaylor/huma/v2/adapters/humago"

	"github.com/penstock/penstock/internal/authz"
)

func mustPanic(t *testing.T, what string, f func()) {
	t.Helper()
	defer func() {
		if recover() == nil {
			t.Fatalf("%s did not stop the start", what)
		}
	}()
	f()
}

// A route that declares no action does not start, whether it is registered through
// register without one or straight through huma.
func TestRoutesWithoutAnActionDoNotStart(t *testing.T) {
	newAPI := func() huma.API { return humago.New(http.NewServeMux(), huma.DefaultConfig("t", "1")) }
	handler := func(ctx context.Context, _ *caller, _ *struct{}) (*struct{}, error) { return nil, nil }
	mustPanic(t, "register without an action", func() {
		g := gate{reg: &routes{}}
		register(g, newAPI(), Route{}, huma.Operation{OperationID: "x", Method: "GET", Path: "/x"}, func(*struct{}) authz.Scope { return authz.Platform }, handler)
	})
	mustPanic(t, "a route registered around register", func() {
		g, hapi := gate{reg: &routes{}}, newAPI()
		register(g, hapi, Route{Action: authz.TenantRead}, huma.Operation{OperationID: "ok", Method: "GET", Path: "/ok"}, func(*struct{}) authz.Scope { return authz.Platform }, handler)
		huma.Register(hapi, huma.Operation{OperationID: "sneaky", Method: "GET", Path: "/sneaky"}, func(ctx context.Context, _ *struct{}) (*struct{}, error) { return nil, nil })
		g.reg.check(hapi)
	})
}
