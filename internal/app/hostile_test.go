package app

import (
	"encoding/json"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/penstock/penstock/internal/api"
	"github.com/penstock/penstock/internal/config"
)

// hostile are names no rule allows: wildcards and separators of engine subjects, spaces, path
// steps, NUL, control and non-ASCII characters, and a very long one.
var hostile = []string{">", "*", "a.b", "a b", "..", "a/../b", "a\x00b", "a\nb", "ＡＣＭＥ", "Acme", "-a", strings.Repeat("x", 300), "%2e%2e"}

var pathParam = regexp.MustCompile(`\{([a-z_]+)\}`)

// Every path and query parameter of every route, given each hostile name by an administrator
// and by another tenant's viewer: the answer is a 4xx, never a 5xx; the denials are audited
// (never under a chain the name would start); and the audit log verifies afterwards with no
// more chains than there are tenants.
func TestHostileNamesAtEveryDoor(t *testing.T) {
	ta := startApp(t, func(c *config.Config) {
		c.API.Limits.ConnRate, c.API.Limits.ConnBurst = 1e6, 1e6
		c.API.Limits.RequestRate, c.API.Limits.RequestBurst = 1e6, 1e6
	})
	admin := ta.adminSession(t)
	for _, s := range []struct {
		method, path string
		body         any
	}{
		{"POST", "/v1/tenants", map[string]string{"name": "acme"}},
		{"POST", "/v1/tenants", map[string]string{"name": "globex"}},
		{"POST", "/v1/tenants/acme/environments/production/applications", map[string]string{"name": "billing"}},
		{"POST", "/v1/tenants/acme/environments/production/applications/billing/queues", map[string]any{"name": "jobs"}},
	} {
		if st, _, raw := ta.call(t, s.method, s.path, admin, s.body); st >= 300 {
			t.Fatalf("setup %s %s: %d %s", s.method, s.path, st, raw)
		}
	}
	_, out, _ := ta.call(t, "POST", "/v1/apikeys", admin, map[string]any{"role": "viewer", "scope": "globex"})
	viewer, _ := out["key"].(string)
	if viewer == "" {
		t.Fatal("no viewer key")
	}
	valid := map[string]string{"tenant": "acme", "environment": "production", "application": "billing", "queue": "jobs",
		"exchange": "events", "pipeline": "orders", "name": "x", "id": "x", "seq": "1", "user": "victim"}
	calls, fives := 0, 0
	for _, r := range ta.routes {
		if r.Action == api.Public {
			continue
		}
		params := pathParam.FindAllStringSubmatch(r.Path, -1)
		for _, p := range params {
			for _, bad := range hostile {
				path := pathParam.ReplaceAllStringFunc(r.Path, func(m string) string {
					name := m[1 : len(m)-1]
					if name == p[1] {
						return url.PathEscape(bad)
					}
					return valid[name]
				})
				for _, token := range []string{admin, viewer} {
					st, _, raw := ta.call(t, r.Method, path, token, map[string]any{})
					calls++
					if st >= 500 {
						fives++
						t.Errorf("%s %s (%s=%q): %d %s", r.Method, path, p[1], bad, st, raw)
					}
				}
			}
		}
	}
	for _, q := range []string{"/v1/audit?tenant=", "/v1/audit/export?tenant=", "/v1/apikeys?scope=", "/v1/roles?scope="} {
		for _, bad := range hostile {
			for _, token := range []string{admin, viewer} {
				st, _, raw := ta.call(t, "GET", q+url.QueryEscape(bad), token, nil)
				calls++
				if st >= 500 || st < 400 {
					t.Errorf("GET %s%q: %d %s", q, bad, st, raw)
				}
			}
		}
	}
	t.Logf("%d hostile calls, %d answered 5xx", calls, fives)
	// What does not exist is still a 404, and an unparsable scope in a body the handler's own
	// error, not the gate's.
	for _, c := range []struct {
		method, path string
		body         any
		want         int
	}{
		{"DELETE", "/v1/roles/nope", nil, 404},
		{"DELETE", "/v1/apikeys/0123456789abcdef", nil, 404},
		{"POST", "/v1/apikeys", map[string]any{"role": "viewer", "scope": "acme/>"}, 422},
	} {
		st, _, raw := ta.call(t, c.method, c.path, admin, c.body)
		if st != c.want || strings.Contains(raw, `\u0000`) || strings.Contains(raw, "x00") {
			t.Errorf("%s %s: %d %s, want %d", c.method, c.path, st, raw, c.want)
		}
	}

	// The denials are in the log, under the caller's tenant or the platform, naming what was asked.
	denied := ta.auditEvents(t, admin, "result=denied")
	asked := 0
	for _, e := range denied.Events {
		if e.Details["requested_scope"] != "" {
			asked++
			if e.Tenant != "" && e.Tenant != "globex" {
				t.Fatalf("a denial for a hostile name went to chain %q: %+v", e.Tenant, e)
			}
		}
	}
	if asked == 0 {
		t.Fatalf("no denial names the requested scope among %d denials", len(denied.Events))
	}
	st, _, raw := ta.call(t, "GET", "/v1/audit/verify", admin, nil)
	var rep struct {
		OK     bool `json:"ok"`
		Chains int  `json:"chains"`
	}
	if err := json.Unmarshal([]byte(raw), &rep); st != 200 || err != nil || !rep.OK || rep.Chains > 3 {
		t.Fatalf("audit verify after hostile names: %d %s", st, raw)
	}
}
