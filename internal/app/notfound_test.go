package app

import (
	"testing"
)

// A request for something that does not exist says which thing, by the name the request gave;
// a caller with nothing in another tenant still learns nothing about it.
func TestNotFoundNamesTheThing(t *testing.T) {
	ta := startApp(t, nil)
	admin := ta.adminSession(t)
	base := "/v1/tenants/acme/environments/production/applications/shop"
	for _, s := range []struct {
		path string
		body any
	}{
		{"/v1/tenants", map[string]string{"name": "acme"}},
		{"/v1/tenants", map[string]string{"name": "globex"}},
		{"/v1/tenants/acme/environments/production/applications", map[string]string{"name": "shop"}},
		{"/v1/tenants/globex/environments/production/applications", map[string]string{"name": "web"}},
		{base + "/queues", map[string]string{"name": "orders"}},
		{base + "/exchanges", map[string]string{"name": "events", "type": "topic"}},
		{"/v1/tenants/globex/environments/production/applications/web/queues", map[string]string{"name": "private"}},
	} {
		if st, _, raw := ta.call(t, "POST", s.path, admin, s.body); st != 201 {
			t.Fatalf("POST %s: %d %s", s.path, st, raw)
		}
	}
	st, out, raw := ta.call(t, "POST", "/v1/apikeys", admin, map[string]string{"role": "developer", "scope": "acme/production/shop"})
	if st != 201 {
		t.Fatalf("apikey: %d %s", st, raw)
	}
	key := out["key"].(string)

	for _, c := range []struct {
		method, path, token string
		body                any
		status              int
		code, message       string
	}{
		{"GET", base + "/queues/nope", key, nil, 404, "not_found", `no such queue "nope" in acme/production/shop`},
		{"DELETE", base + "/queues/nope", key, nil, 404, "not_found", `no such queue "nope" in acme/production/shop`},
		{"POST", base + "/queues/nope/messages", key, map[string]any{"messages": []map[string]string{{"data": "x"}}}, 404, "not_found", `no such queue "nope" in acme/production/shop`},
		{"POST", base + "/queues/nope/consume", key, map[string]any{}, 404, "not_found", `no such queue "nope" in acme/production/shop`},
		{"GET", base + "/queues/nope/dead-letters", key, nil, 404, "not_found", `no such queue "nope" in acme/production/shop`},
		{"GET", base + "/queues/orders/dead-letters/7", key, nil, 404, "not_found", `no such dead letter 7 of queue "orders" in acme/production/shop`},
		{"GET", base + "/exchanges/nope", key, nil, 404, "not_found", `no such exchange "nope" in acme/production/shop`},
		{"POST", base + "/exchanges/nope/bind", key, map[string]string{"queue": "orders"}, 404, "not_found", `no such exchange "nope" in acme/production/shop`},
		{"POST", base + "/exchanges/events/bind", key, map[string]string{"queue": "nope", "key": "a.*"}, 404, "not_found", `no such queue "nope" in acme/production/shop`},
		{"POST", base + "/exchanges/events/unbind", key, map[string]string{"queue": "orders", "key": "a.*"}, 404, "not_found",
			`no such binding of queue "orders" with key "a.*" to exchange "events" in acme/production/shop`},
		{"POST", base + "/exchanges/nope/messages", key, map[string]any{"messages": []map[string]string{{"data": "x", "routing_key": "a"}}}, 404, "not_found", `no such exchange "nope" in acme/production/shop`},
		{"POST", base + "/queues", key, map[string]string{"name": "orders"}, 409, "conflict", `queue "orders" in acme/production/shop already exists`},
		{"GET", base + "/pipelines/nope", key, nil, 404, "not_found", `no such pipeline "nope" in acme/production/shop`},
		{"POST", base + "/pipelines/nope/run", admin, nil, 404, "not_found", `no such pipeline "nope" in acme/production/shop`},
		{"DELETE", base + "/secrets/NOPE", admin, nil, 404, "secret.not_found", `no such secret "NOPE" in acme/production/shop`},
		{"POST", "/v1/users/nope/disable", admin, nil, 404, "not_found", `no such user "nope"`},
		{"POST", "/v1/users/nope/end-sessions", admin, nil, 404, "not_found", `no such user "nope"`},
		{"POST", "/v1/users/nope/reset-password", admin, nil, 404, "not_found", `no such user "nope"`},
		{"POST", "/v1/roles", admin, map[string]string{"subject": "user:nope", "role": "viewer", "scope": "acme"}, 404, "not_found", `no such subject "user:nope"`},
		{"DELETE", "/v1/roles/rb_nope", admin, nil, 404, "not_found", `no such role binding "rb_nope"`},
		{"DELETE", "/v1/apikeys/0123456789abcdef", admin, nil, 404, "not_found", `no such API key "0123456789abcdef"`},
		// Another tenant's queue, missing or not, is the same bare 404 for a caller with
		// nothing there: nothing is named that the caller could not see.
		{"GET", "/v1/tenants/globex/environments/production/applications/web/queues/private", key, nil, 404, "not_found", "no such resource"},
		{"GET", "/v1/tenants/globex/environments/production/applications/web/queues/nope", key, nil, 404, "not_found", "no such resource"},
	} {
		st, body, raw := ta.call(t, c.method, c.path, c.token, c.body)
		if st != c.status || body["code"] != c.code || body["message"] != c.message {
			t.Errorf("%s %s: %d %s, want %d %s %q", c.method, c.path, st, raw, c.status, c.code, c.message)
		}
	}
}
