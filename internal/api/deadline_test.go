package api

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/danielgtaylor/huma/v2"
	"github.com/danielgtaylor/huma/v2/adapters/humago"

	"github.com/penstock/penstock/internal/authz"
)

// An operation with a body may take longer than huma's body read timeout (5 s): the body is
// read before the operation runs, so no deadline may be left on the connection to fail
// net/http's wait for the next request and cancel the operation's context. Before the fix a
// password change that took over 5 s on a busy machine (two argon2id hashes) failed with
// "context canceled" and a 500. The 6 s wait is the clock under test: huma's 5 s default.
func TestLongOperationsKeepTheirContext(t *testing.T) {
	mux := http.NewServeMux()
	hapi := humago.New(mux, huma.DefaultConfig("t", "1"))
	type in struct {
		Body struct {
			X string `json:"x"`
		}
	}
	register(gate{reg: &routes{}}, hapi, Route{Action: Public}, huma.Operation{OperationID: "slow", Method: http.MethodPost, Path: "/slow"},
		func(*in) authz.Scope { return authz.Platform },
		func(ctx context.Context, _ *caller, _ *in) (*struct{}, error) {
			select {
			case <-ctx.Done():
				return nil, NewError(http.StatusInternalServerError, "canceled", "the request's context was canceled: "+context.Cause(ctx).Error())
			case <-time.After(6 * time.Second):
				return nil, nil
			}
		})
	srv := httptest.NewServer(strictJSONText(mux))
	defer srv.Close()
	resp, err := http.Post(srv.URL+"/slow", "application/json", strings.NewReader(`{"x":"y"}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("a 6 s operation answered %d: %s", resp.StatusCode, b)
	}
}
