package app

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/penstock/penstock/internal/config"
)

// FuzzAPIRequest sends requests built from fuzzed method, path, query and body through the
// whole API handler (edge limits, authentication as a platform administrator, the gate, every
// handler) of one running App: no request may answer 5xx, and the audit log must verify after
// every batch of them, whatever they named.
func FuzzAPIRequest(f *testing.F) {
	for _, seed := range []struct {
		method      uint8
		path, query string
		body        []byte
	}{
		{0, "/v1/audit", "tenant=%3E", nil},
		{0, "/v1/apikeys", "scope=*", nil},
		{0, "/v1/tenants/acme/environments/production/applications/shop/queues", "", nil},
		{1, "/v1/tenants", "", []byte(`{"name":"a..b"}`)},
		{1, "/v1/tenants/acme/environments/production/applications/shop/queues/orders/messages", "", []byte("{\"messages\":[{\"data\":\"\xff\"}]}")},
		{2, "/v1/tenants/acme/environments/production/applications/shop/secrets/x", "", []byte(`{"value":"\ud800"}`)},
		{1, "/v1/keys/rotate", "", []byte(`{"scope":"alpha/../bravo"}`)},
		{3, "/v1/tenants/%2e%2e", "", nil},
	} {
		f.Add(seed.method, seed.path, seed.query, seed.body)
	}
	ta := startApp(f, func(c *config.Config) {
		c.API.Limits.RequestRate, c.API.Limits.RequestBurst = 1e9, 1e9
		c.API.Limits.ConnRate, c.API.Limits.ConnBurst = 1e9, 1e9
	})
	admin := ta.adminSession(f)
	for _, s := range [][2]string{{"/v1/tenants", `{"name":"acme"}`}, {"/v1/tenants/acme/environments/production/applications", `{"name":"shop"}`},
		{"/v1/tenants/acme/environments/production/applications/shop/queues", `{"name":"orders"}`}} {
		req := httptest.NewRequest("POST", "https://localhost"+s[0], strings.NewReader(s[1]))
		req.Header.Set("Authorization", "Bearer "+admin)
		req.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		ta.apiSrv.Handler.ServeHTTP(w, req)
		if w.Code >= 300 {
			f.Fatalf("setup %s: %d %s", s[0], w.Code, w.Body)
		}
	}
	methods := []string{"GET", "POST", "PUT", "DELETE", "PATCH"}
	n := 0
	f.Fuzz(func(t *testing.T, method uint8, path, query string, body []byte) {
		if !strings.HasPrefix(path, "/") || len(path) > 4096 || len(query) > 4096 {
			return
		}
		u := &url.URL{Scheme: "https", Host: "localhost", RawPath: path, RawQuery: query}
		var err error
		if u.Path, err = url.PathUnescape(path); err != nil {
			return
		}
		req, err := http.NewRequest(methods[int(method)%len(methods)], u.String(), bytes.NewReader(body))
		if err != nil {
			return
		}
		req.RemoteAddr = "127.0.0.1:40000"
		req.Header.Set("Authorization", "Bearer "+admin)
		req.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		ta.apiSrv.Handler.ServeHTTP(w, req)
		if w.Code >= 500 {
			t.Fatalf("%s %s?%s %q: %d %s", req.Method, path, query, body, w.Code, w.Body)
		}
		if n++; n%200 == 0 {
			if rep, err := ta.audit.VerifyAll(t.Context()); err != nil || !rep.OK {
				t.Fatalf("audit log after %d requests: %+v %v", n, rep.Break, err)
			}
		}
	})
	if rep, err := ta.audit.VerifyAll(f.Context()); err != nil || !rep.OK {
		f.Fatalf("audit log at the end: %+v %v", rep.Break, err)
	}
}
