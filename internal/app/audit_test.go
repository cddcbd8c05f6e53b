package app

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/redact"

	"github.com/penstock/penstock/internal/audit"
)

type auditEvents struct {
	Events     []audit.Event `json:"events"`
	NextCursor uint64        `json:"next_cursor"`
}

func (ta *testApp) auditEvents(t *testing.T, token, query string) auditEvents {
	t.Helper()
	status, _, raw := ta.call(t, "GET", "/v1/audit?limit=1000&"+query, token, nil)
	if status != 200 {
		t.Fatalf("audit list %s: %d %s", query, status, raw)
	}
	var out auditEvents
	if err := json.Unmarshal([]byte(raw), &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// Each kind of action leaves an event with the right fields; planted secrets reach none; a
// tenant's auditor sees its tenant's events only; the log verifies.
func TestAuditCoverage(t *testing.T) {
	ta := startApp(t, nil)
	admin := ta.adminSession(t)
	const planted = "planted-secret-value-93bd"
	ta.call(t, "POST", "/v1/tenants", admin, map[string]string{"name": "acme"})
	ta.call(t, "POST", "/v1/tenants", admin, map[string]string{"name": "globex"})
	ta.call(t, "POST", "/v1/tenants/acme/environments/production/applications", admin, map[string]string{"name": "etl"})
	ta.call(t, "PUT", "/v1/tenants/acme/environments/production/applications/etl/secrets/db", admin, map[string]string{"value": planted})
	_, key, _ := ta.call(t, "POST", "/v1/apikeys", admin, map[string]string{"role": "viewer", "scope": "acme"})
	viewer := key["key"].(string)
	ta.call(t, "PUT", "/v1/tenants/acme/environments/production/applications/etl/secrets/x", viewer, map[string]string{"value": planted}) // denied
	ta.call(t, "GET", "/v1/tenants/globex", viewer, nil)                                                                                  // hidden: denied
	ta.call(t, "POST", "/v1/auth/login", "-", map[string]string{"user": "admin", "password": planted})                                    // failed login
	ta.call(t, "GET", "/v1/keys", "psk_0000000000000000_"+strings.Repeat("0", 64), nil)                                                   // refused credential
	ta.call(t, "POST", "/v1/keys/rotate", admin, map[string]string{"scope": "acme"})
	_, auditorKey, _ := ta.call(t, "POST", "/v1/apikeys", admin, map[string]string{"role": "auditor", "scope": "acme"})

	all := ta.auditEvents(t, admin, "")
	find := func(pred func(audit.Event) bool) *audit.Event {
		for i := range all.Events {
			if pred(all.Events[i]) {
				return &all.Events[i]
			}
		}
		return nil
	}
	cases := []struct {
		name string
		pred func(audit.Event) bool
	}{
		{"start", func(e audit.Event) bool { return e.Action == "platform.start" && e.Actor == "system" }},
		{"tenant created", func(e audit.Event) bool {
			return e.Action == "tenant.create" && e.Result == "ok" && e.Actor == "user:admin" && e.Target == "/v1/tenants" && e.Source == "127.0.0.1" && e.RequestID != ""
		}},
		{"change announced before it is made", func(e audit.Event) bool { return e.Action == "tenant.create" && e.Result == "started" }},
		{"application created", func(e audit.Event) bool {
			return e.Action == "app.manage" && e.Tenant == "acme" && e.Environment == "production" && e.Result == "ok"
		}},
		{"secret written", func(e audit.Event) bool {
			return e.Action == "secret.write" && e.Application == "etl" && e.Result == "ok" && e.Details["operation"] == "secret-put"
		}},
		{"secret write denied", func(e audit.Event) bool {
			return e.Action == "secret.write" && e.Result == "denied" && e.Code == "forbidden" && strings.HasPrefix(e.Actor, "apikey:")
		}},
		{"other tenant hidden, and denied", func(e audit.Event) bool {
			return e.Action == "tenant.read" && e.Tenant == "globex" && e.Result == "denied" && e.Code == "not_found"
		}},
		{"API key created", func(e audit.Event) bool { return e.Action == "apikey.manage" && e.Result == "ok" }},
		{"login ok", func(e audit.Event) bool {
			return e.Action == "auth.login" && e.Result == "ok" && e.Actor == "user:admin"
		}},
		{"login failed", func(e audit.Event) bool {
			return e.Action == "auth.login" && e.Result == "denied" && e.Code == "auth.invalid_credentials"
		}},
		{"credential refused", func(e audit.Event) bool { return e.Action == "auth.authenticate" && e.Result == "denied" }},
		{"password changed", func(e audit.Event) bool {
			return e.Action == "account" && e.Details["operation"] == "change-password" && e.Result == "ok"
		}},
		{"second factor enrolled", func(e audit.Event) bool { return e.Details["operation"] == "mfa-verify" && e.Result == "ok" }},
		{"key rotated", func(e audit.Event) bool {
			return e.Action == "key.manage" && e.Details["operation"] == "keys-rotate" && e.Result == "ok"
		}},
	}
	for _, tc := range cases {
		if find(tc.pred) == nil {
			t.Errorf("no audit event: %s", tc.name)
		}
	}
	raw, _ := json.Marshal(all)
	for name, secret := range map[string]string{"planted value": planted, "admin session": admin, "API key": viewer, "password": ta.adminPassword} {
		if strings.Contains(string(raw), secret) {
			t.Errorf("the %s is in the audit log", name)
		}
	}

	// A tenant auditor reads its tenant's events and nothing else.
	auditor := auditorKey["key"].(string)
	mine := ta.auditEvents(t, auditor, "tenant=acme")
	if len(mine.Events) == 0 {
		t.Fatal("the auditor sees no events of its tenant")
	}
	for _, e := range mine.Events {
		if e.Tenant != "acme" {
			t.Fatalf("acme's auditor sees an event of %q", e.Tenant)
		}
	}
	for _, q := range []string{"", "tenant=globex"} {
		if status, _, raw := ta.call(t, "GET", "/v1/audit?"+q, auditor, nil); status != 403 && status != 404 {
			t.Fatalf("acme's auditor reading %q: %d %s", q, status, raw)
		}
	}

	// Paging: every event once, in order.
	var paged []uint64
	cursor := ""
	for {
		page := ta.auditEvents(t, admin, "limit=7&"+cursor)
		for _, e := range page.Events {
			paged = append(paged, e.Seq)
		}
		if page.NextCursor == 0 {
			break
		}
		cursor = "cursor=" + strconvU(page.NextCursor)
	}
	if len(paged) < len(all.Events) {
		t.Fatalf("paging returned %d events, the full list %d", len(paged), len(all.Events))
	}
	for i := 1; i < len(paged); i++ {
		if paged[i] <= paged[i-1] {
			t.Fatalf("paging out of order at %d", i)
		}
	}

	status, rep, rawv := ta.call(t, "GET", "/v1/audit/verify", admin, nil)
	if status != 200 || rep["ok"] != true {
		t.Fatalf("verify: %d %s", status, rawv)
	}
}

// A change that cannot be audited does not happen.
func TestAuditFailsClosed(t *testing.T) {
	ta := startApp(t, nil)
	admin := ta.adminSession(t)
	plat, err := ta.eng.Account(context.Background(), "platform")
	if err != nil {
		t.Fatal(err)
	}
	if err := plat.JetStream().DeleteStream(context.Background(), audit.Stream); err != nil {
		t.Fatal(err)
	}
	status, body, raw := ta.call(t, "POST", "/v1/tenants", admin, map[string]string{"name": "acme"})
	if status != 503 || body["code"] != "audit.unavailable" {
		t.Fatalf("change with the audit log gone: %d %s", status, raw)
	}
	if _, ok := ta.ident.Tenant("acme"); ok {
		t.Fatal("the unaudited change happened")
	}
	if status, _, _ := ta.call(t, "GET", "/v1/tenants", admin, nil); status != 200 {
		t.Fatalf("reads still work: %d", status)
	}
}

func strconvU(u uint64) string {
	b, _ := json.Marshal(u)
	return string(b)
}

// The configured webhook receives every event, across a restart of Penstock, with none lost.
func TestWebhookForwardingAcrossRestart(t *testing.T) {
	var mu sync.Mutex
	seen := map[uint64]bool{}
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var e audit.Event
		json.NewDecoder(r.Body).Decode(&e)
		mu.Lock()
		seen[e.Seq] = true
		mu.Unlock()
	}))
	defer srv.Close()
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600)
	hook := func(c *config.Config) {
		c.Audit.WebhookURL, c.Audit.WebhookCAFile = srv.URL, caFile
		c.Audit.WebhookSecret = redact.NewSecret("webhook-secret-0123456789")
	}
	ta := startApp(t, hook)
	admin := ta.adminSession(t)
	ta.call(t, "POST", "/v1/tenants", admin, map[string]string{"name": "acme"})
	ta.stop()
	dataDir := ta.cfg.DataDir
	tb := startApp(t, func(c *config.Config) { hook(c); c.DataDir = dataDir })
	tb.admin = admin
	tb.call(t, "POST", "/v1/tenants", admin, map[string]string{"name": "globex"})

	var total uint64
	tb.audit.Records(context.Background(), 1, func(r audit.Record) bool {
		if r.Event != nil {
			total++
		}
		return true
	})
	waitUntil := time.Now().Add(20 * time.Second)
	for {
		mu.Lock()
		n := uint64(len(seen))
		mu.Unlock()
		if n >= total {
			break
		}
		if time.Now().After(waitUntil) {
			t.Fatalf("webhook received %d of %d events", n, total)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Each start records which configuration keys changed since the previous start.
func TestStartRecordsConfigChanges(t *testing.T) {
	ta := startApp(t, nil)
	ta.stop()
	dataDir := ta.cfg.DataDir
	tb := startApp(t, func(c *config.Config) { c.DataDir = dataDir; c.Log.Level = "debug" })
	var starts []audit.Event
	tb.audit.Records(context.Background(), 1, func(r audit.Record) bool {
		if r.Event != nil && r.Event.Action == "platform.start" {
			starts = append(starts, *r.Event)
		}
		return true
	})
	if len(starts) != 2 {
		t.Fatalf("%d start events", len(starts))
	}
	if first := starts[0].Details["config_changed"]; !strings.Contains(first, "api.listen") || !strings.Contains(first, "log.level") {
		t.Fatalf("first start records %q", first)
	}
	if second := starts[1].Details; second["config_changed"] != "log.level" || second["config.log.level"] != "debug" {
		t.Fatalf("second start records %v", second)
	}
}
