package app

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/connector/webhook"
	"github.com/penstock/penstock/internal/testenv"
)

// TestWebhookToQueueToPostgres runs a continuous pipeline over HTTPS: signed webhook calls are
// queued durably (202), a wrong signature is refused, and every record reaches PostgreSQL once,
// a resent delivery included. Pipelines are managed through the API: dry run, apply, get,
// runs, logs, pause.
func TestWebhookToQueueToPostgres(t *testing.T) {
	ctx := context.Background()
	pg := testenv.PostgreSQL(t)
	tbl := testenv.Table(t, pg, "hooks", "id bigint PRIMARY KEY, kind text")

	ta := startApp(t, func(c *config.Config) {
		c.API.Limits.RequestRate, c.API.Limits.RequestBurst = 1e6, 1e6
		c.API.Limits.ConnRate, c.API.Limits.ConnBurst = 1e6, 1e6
	})
	admin := ta.adminSession(t)
	must := func(status int, want int, raw string) {
		t.Helper()
		if status != want {
			t.Fatalf("status %d, want %d: %s", status, want, raw)
		}
	}
	st, _, raw := ta.call(t, "POST", "/v1/tenants", admin, map[string]string{"name": "acme"})
	must(st, 201, raw)
	st, _, raw = ta.call(t, "POST", "/v1/tenants/acme/environments/production/applications", admin, map[string]string{"name": "shop"})
	must(st, 201, raw)
	base := "/v1/tenants/acme/environments/production/applications/shop"
	st, _, raw = ta.call(t, "PUT", base+"/secrets/hook-key", admin, map[string]string{"value": "k3y-for-hmac"})
	must(st, 200, raw)
	spec := map[string]any{
		"source":     map[string]any{"type": "webhook", "secret": "${secret:hook-key}"},
		"transforms": []any{map[string]any{"map": "{id: int(id), kind: kind}"}},
		"sink": map[string]any{"type": "postgres", "host": "127.0.0.1", "database": "test", "user": "postgres", "sslmode": "disable",
			"table": tbl, "mode": "upsert", "key": []any{"id"}},
		"schedule": "continuous",
		"batch":    map[string]any{"size": 50, "flush_interval": "50ms"},
	}
	// Before the platform admin opens egress, loopback PostgreSQL is refused at validation.
	st, body, raw := ta.call(t, "PUT", base+"/pipelines/hooks?dry_run=true", admin, spec)
	if st != 422 || body["code"] != "pipeline.invalid" ||
		!strings.Contains(raw, `{"location":"body.sink.host","message":"egress denied: 127.0.0.1:5432`) {
		t.Fatalf("dry run before egress: %d %s", st, raw)
	}
	st, _, raw = ta.call(t, "PUT", "/v1/tenants/acme/egress", admin, map[string]any{"rules": []string{"127.0.0.1:5432"}})
	must(st, 200, raw)
	st, _, raw = ta.call(t, "PUT", base+"/pipelines/hooks?dry_run=true", admin, spec)
	must(st, 200, raw)
	st, body, raw = ta.call(t, "PUT", base+"/pipelines/hooks", admin, spec)
	must(st, 200, raw)
	if body["version"] != 1.0 {
		t.Fatalf("apply: %s", raw)
	}

	hook := func(body, sig, delivery string) (int, string) {
		req, _ := http.NewRequest("POST", ta.url("/v1/hooks/acme/production/shop/hooks"), strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Penstock-Signature", sig)
		if delivery != "" {
			req.Header.Set("Idempotency-Key", delivery)
		}
		st, b := do(t, ta.client("", nil), req)
		return st, string(b)
	}
	key := []byte("k3y-for-hmac")
	for i := 1; i <= 20; i++ {
		b := fmt.Sprintf(`{"id": %d, "kind": "k%d"}`, i, i)
		if st, raw := hook(b, webhook.Sign(key, []byte(b)), fmt.Sprintf("d-%d", i)); st != 202 {
			t.Fatalf("hook %d: %d %s", i, st, raw)
		}
	}
	// A resend of delivery d-3 and a batch body.
	b3 := `{"id": 3, "kind": "k3"}`
	if st, raw := hook(b3, webhook.Sign(key, []byte(b3)), "d-3"); st != 202 {
		t.Fatalf("resend: %d %s", st, raw)
	}
	arr := `[{"id": 21, "kind": "a"}, {"id": 22, "kind": "b"}]`
	if st, raw := hook(arr, webhook.Sign(key, []byte(arr)), ""); st != 202 {
		t.Fatalf("array: %d %s", st, raw)
	}
	if st, raw := hook(`{"id": 99}`, webhook.Sign([]byte("wrong key"), []byte(`{"id": 99}`)), ""); st != 401 || !strings.Contains(raw, "webhook.bad_signature") {
		t.Fatalf("wrong signature: %d %s", st, raw)
	}
	if st, _ := hook(`{"id": 99}`, "", ""); st != 401 {
		t.Fatalf("no signature: %d", st)
	}
	if st, _ := hook(b3, webhook.Sign(key, []byte(b3)), ""); st != 202 {
		t.Fatal("upsert replay")
	}
	req, _ := http.NewRequest("POST", ta.url("/v1/hooks/acme/production/shop/nope"), strings.NewReader("{}"))
	if st, _ := do(t, ta.client("", nil), req); st != 404 {
		t.Fatalf("unknown pipeline: %d", st)
	}

	deadline := time.Now().Add(30 * time.Second)
	var n int
	for time.Now().Before(deadline) {
		if err := pg.QueryRow(ctx, "SELECT count(*) FROM "+tbl).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 22 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n != 22 {
		t.Fatalf("%d rows in %s, want 22", n, tbl)
	}
	var kind string
	if err := pg.QueryRow(ctx, "SELECT kind FROM "+tbl+" WHERE id = 22").Scan(&kind); err != nil || kind != "b" {
		t.Fatalf("row 22: %q %v", kind, err)
	}
	st, body, raw = ta.call(t, "GET", base+"/pipelines/hooks", admin, nil)
	must(st, 200, raw)
	if body["running"] != true || body["spec"].(map[string]any)["schedule"] != "continuous" {
		t.Fatalf("get: %s", raw)
	}
	st, body, raw = ta.call(t, "GET", base+"/pipelines/hooks/runs", admin, nil)
	must(st, 200, raw)
	if runs := body["runs"].([]any); len(runs) != 1 || runs[0].(map[string]any)["status"] != "running" {
		t.Fatalf("runs: %s", raw)
	}
	st, _, raw = ta.call(t, "GET", base+"/pipelines/hooks/logs", admin, nil)
	must(st, 200, raw)
	if !strings.Contains(raw, "run started") || strings.Contains(raw, "k3y-for-hmac") {
		t.Fatalf("logs: %s", raw)
	}
	st, body, raw = ta.call(t, "POST", base+"/pipelines/hooks/pause", admin, nil)
	must(st, 200, raw)
	if body["paused"] != true {
		t.Fatalf("pause: %s", raw)
	}
	st, body, raw = ta.call(t, "GET", base+"/pipelines/hooks/runs", admin, nil)
	must(st, 200, raw)
	if r := body["runs"].([]any)[0].(map[string]any); r["status"] != "stopped" || r["records_out"].(float64) < 22 {
		t.Fatalf("paused run: %s", raw)
	}
	st, _, raw = ta.call(t, "POST", base+"/pipelines/hooks/run", admin, nil)
	if st != 409 || !strings.Contains(raw, "pipeline.paused") {
		t.Fatalf("run while paused: %d %s", st, raw)
	}
}
