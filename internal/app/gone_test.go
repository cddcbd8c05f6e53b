package app

import (
	"context"
	"net/http"
	"slices"
	"testing"
)

// A change whose caller has gone before it is made (its request's context is canceled, as
// net/http does when the client closes the connection, say on its own timeout) is made whole
// and audited at both ends: a master rotation or a crypto-shred is never left halfway, and the
// audit log never lacks the outcome of a change that happened.
func TestChangesOutliveTheirCaller(t *testing.T) {
	gone := map[string]bool{"/v1/keys/rotate-master": true, "/v1/keys/destroy": true}
	ta := startAppWith(t, nil, func(api http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if gone[r.URL.Path] {
				ctx, cancel := context.WithCancel(r.Context())
				cancel()
				r = r.WithContext(ctx)
			}
			api.ServeHTTP(w, r)
		})
	})
	before := ta.master.ID()
	if status, _, raw := ta.call(t, "POST", "/v1/tenants", "", map[string]string{"name": "acme"}); status != 201 {
		t.Fatalf("tenant create = %d %s", status, raw)
	}
	if status, _, raw := ta.call(t, "POST", "/v1/keys/rotate-master", "", nil); status != 200 {
		t.Fatalf("rotate-master by a caller that has gone = %d %s", status, raw)
	}
	if ta.master.ID() == before {
		t.Fatalf("the master key is still %s", before)
	}
	if status, _, raw := ta.call(t, "POST", "/v1/keys/destroy", "", map[string]string{"scope": "acme", "confirm": "acme"}); status != 204 {
		t.Fatalf("destroy by a caller that has gone = %d %s", status, raw)
	}
	results := map[string][]string{}
	for _, e := range ta.auditEvents(t, "", "").Events {
		results[e.Target] = append(results[e.Target], e.Result)
	}
	for path := range gone {
		if got := results[path]; len(got) != 2 || !slices.Contains(got, "started") || !slices.Contains(got, "ok") {
			t.Errorf("%s audited as %v, want started and ok", path, got)
		}
	}
	if status, _, raw := ta.call(t, "GET", "/v1/keys", "", nil); status != 200 {
		t.Fatalf("keys = %d %s", status, raw)
	}
}
