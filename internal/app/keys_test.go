package app

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/keyring"
	"github.com/penstock/penstock/internal/secrets"
)

// call sends a request with the admin token (unless token is "-") and decodes the JSON answer.
func (ta *testApp) call(t testing.TB, method, path, token string, body any) (int, map[string]any, string) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = strings.NewReader(string(b))
	}
	req, _ := http.NewRequest(method, ta.url(path), rd)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token == "" {
		token = ta.adminSession(t)
	}
	if token != "-" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	status, raw := do(t, ta.client("", nil), req)
	var out map[string]any
	_ = json.Unmarshal(raw, &out)
	return status, out, string(raw)
}

func TestRoutesNeedCredentials(t *testing.T) {
	ta := startApp(t, nil)
	for _, tc := range []struct{ method, path, token string }{
		{"GET", "/v1/keys", "-"},
		{"GET", "/v1/keys", strings.Repeat("0", 64)},
		{"GET", "/v1/keys", "psk_0000000000000000_" + strings.Repeat("0", 64)},
		{"POST", "/v1/keys/rotate-master", "-"},
		{"PUT", "/v1/tenants/acme/environments/production/applications/billing/secrets/db", "-"},
	} {
		status, body, raw := ta.call(t, tc.method, tc.path, tc.token, nil)
		if status != 401 || body["code"] != "unauthenticated" {
			t.Errorf("%s %s with token %q = %d %s", tc.method, tc.path, tc.token, status, raw)
		}
	}
	if status, _, _ := ta.call(t, "GET", "/healthz", "-", nil); status != 200 {
		t.Fatalf("healthz needs a token: %d", status)
	}
}

func TestSecretsAndKeysOverTheAPI(t *testing.T) {
	ta := startApp(t, nil)
	const value = "s3cret-db-password-e81f"
	base := "/v1/tenants/acme/environments/production/applications/billing/secrets"
	// Secrets live in an application that exists: none before it is created.
	if status, _, raw := ta.call(t, "PUT", base+"/db-password", "", map[string]string{"value": value}); status != 404 {
		t.Fatalf("put before the application exists = %d %s", status, raw)
	}
	if status, _, raw := ta.call(t, "POST", "/v1/tenants", "", map[string]string{"name": "acme"}); status != 201 {
		t.Fatalf("tenant create = %d %s", status, raw)
	}
	if status, _, raw := ta.call(t, "POST", "/v1/tenants/acme/environments/production/applications", "", map[string]string{"name": "billing"}); status != 201 {
		t.Fatalf("app create = %d %s", status, raw)
	}

	status, meta, raw := ta.call(t, "PUT", base+"/db-password", "", map[string]string{"value": value})
	if status != 200 || meta["name"] != "db-password" || meta["key_version"] != float64(1) {
		t.Fatalf("put = %d %s\n%s", status, raw, ta.logs.String())
	}
	ta.call(t, "PUT", base+"/api-key", "", map[string]string{"value": "other-" + value})
	status, _, raw = ta.call(t, "GET", base, "", nil)
	if status != 200 || !strings.Contains(raw, `"db-password"`) || !strings.Contains(raw, `"api-key"`) {
		t.Fatalf("list = %d %s", status, raw)
	}
	// Write-only: no route answers with the value, and there is no route to read one.
	if status, _, _ := ta.call(t, "GET", base+"/db-password", "", nil); status != 405 && status != 404 {
		t.Fatalf("GET of a single secret = %d, want no such route", status)
	}
	// Inside the process the value is there, as a redacting Secret.
	store, err := secrets.New(context.Background(), ta.keys)
	if err != nil {
		t.Fatal(err)
	}
	app := keyring.Scope{Tenant: "acme", Environment: "production", Application: "billing"}
	got, _, err := store.Get(context.Background(), app, "db-password")
	if err != nil || got.Reveal() != value {
		t.Fatalf("stored value: %v", err)
	}

	for _, bad := range []struct {
		method, path string
		body         any
		want         int
	}{
		{"PUT", base + "/bad.name", map[string]string{"value": "x"}, 422},
		{"PUT", "/v1/tenants/Acme/environments/production/applications/billing/secrets/x", map[string]string{"value": "x"}, 422},
		{"PUT", base + "/empty", map[string]string{"value": ""}, 422},
		{"POST", "/v1/keys/rotate", map[string]string{"scope": "acme/production/billing/extra"}, 422},
		{"POST", "/v1/keys/destroy", map[string]string{"scope": "acme", "confirm": "acme/production"}, 422},
		{"DELETE", base + "/missing", nil, 404},
	} {
		status, body, raw := ta.call(t, bad.method, bad.path, "", bad.body)
		if status != bad.want || body["code"] == nil {
			t.Errorf("%s %s = %d %s, want %d with a code", bad.method, bad.path, status, raw, bad.want)
		}
	}

	status, body, raw := ta.call(t, "POST", "/v1/keys/rotate", "", map[string]string{"scope": "acme/production/billing"})
	if status != 202 || body["version"] != float64(2) {
		t.Fatalf("rotate = %d %s", status, raw)
	}
	status, _, raw = ta.call(t, "POST", "/v1/keys/rotate-master", "", nil)
	if status != 200 || !strings.Contains(raw, `"master":"local:`) {
		t.Fatalf("rotate-master = %d %s", status, raw)
	}
	got, _, err = store.Get(context.Background(), app, "db-password")
	if err != nil || got.Reveal() != value {
		t.Fatalf("after rotations: %v", err)
	}
	status, _, raw = ta.call(t, "GET", "/v1/keys", "", nil)
	if status != 200 || !strings.Contains(raw, `"scope":"acme/production/billing"`) || !strings.Contains(raw, `"versions":2`) {
		t.Fatalf("status = %d %s", status, raw)
	}

	// A restart (the store converting to the key rotate-master made) keeps every value.
	ta.stop()
	firstLogs, dataDir, firstAdmin := ta.logs.String(), ta.cfg.DataDir, ta.admin
	ta = startApp(t, func(c *config.Config) { c.DataDir = dataDir })
	ta.admin = firstAdmin // sessions live in the engine: the restart keeps them
	store, err = secrets.New(context.Background(), ta.keys)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"db-password": value, "api-key": "other-" + value} {
		got, _, err := store.Get(context.Background(), app, name)
		if err != nil || got.Reveal() != want {
			t.Fatalf("%s after restart: %v", name, err)
		}
	}

	status, _, raw = ta.call(t, "POST", "/v1/keys/destroy", "", map[string]string{"scope": "acme", "confirm": "acme"})
	if status != 204 {
		t.Fatalf("destroy = %d %s", status, raw)
	}
	for _, tc := range []struct{ method, path string }{{"GET", base}, {"PUT", base + "/new"}, {"DELETE", base + "/api-key"}} {
		status, body, raw := ta.call(t, tc.method, tc.path, "", map[string]string{"value": "x"})
		if status != 410 || body["code"] != "scope.deleted" {
			t.Errorf("%s after destroy = %d %s, want 410 scope.deleted", tc.method, status, raw)
		}
	}

	ta.stop()
	masterKey, _ := os.ReadFile(filepath.Join(ta.cfg.DataDir, keyring.MasterKeyFile))
	for name, secret := range map[string]string{"value": value, "admin session": firstAdmin, "master key": strings.TrimSpace(string(masterKey))} {
		if strings.Contains(firstLogs+ta.logs.String(), secret) {
			t.Errorf("the %s appears in the logs", name)
		}
	}
}
