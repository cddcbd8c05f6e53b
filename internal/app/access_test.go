package app

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/identity"
	"github.com/penstock/penstock/internal/redact"
	"github.com/penstock/penstock/internal/signing"
	"github.com/penstock/penstock/internal/testenv"
)

func nonce(t *testing.T) string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Signed requests over the wire: accepted once, refused when replayed (to this or any node),
// tampered with, or dated outside ±5 minutes; the signing key never crosses the network.
func TestSignedRequestsOverHTTP(t *testing.T) {
	ta := startApp(t, nil)
	admin := ta.adminSession(t)
	ta.call(t, "POST", "/v1/tenants", admin, map[string]string{"name": "acme"})
	ta.call(t, "POST", "/v1/tenants/acme/environments/production/applications", admin, map[string]string{"name": "etl"})
	_, out, raw := ta.call(t, "POST", "/v1/apikeys", admin, map[string]string{"role": "developer", "scope": "acme/production/etl"})
	key := redact.NewSecret(out["key"].(string))
	id, _, err := identity.ParseAPIKey(key.Reveal())
	if err != nil {
		t.Fatalf("%v: %s", err, raw)
	}
	c := ta.client("", nil)
	send := func(r *http.Request) (int, string) {
		resp, err := c.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	build := func(body []byte, at time.Time, n string) *http.Request {
		r, _ := http.NewRequest("PUT", ta.url("/v1/tenants/acme/environments/production/applications/etl/secrets/db"), bytes.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		signing.Sign(r, id, identity.SigningKey(key), body, at, n, "content-type")
		return r
	}
	body, _ := json.Marshal(map[string]string{"value": "signed-value"})
	n := nonce(t)
	if status, raw := send(build(body, time.Now(), n)); status != 200 {
		t.Fatalf("signed request: %d %s", status, raw)
	}
	if status, raw := send(build(body, time.Now(), n)); status != 401 || !strings.Contains(raw, "auth.replay") {
		t.Fatalf("replayed: %d %s", status, raw)
	}
	if status, raw := send(build(body, time.Now().Add(-6*time.Minute), nonce(t))); status != 401 || !strings.Contains(raw, "auth.clock_skew") {
		t.Fatalf("old date: %d %s", status, raw)
	}
	r := build(body, time.Now(), nonce(t))
	r.Body = io.NopCloser(bytes.NewReader([]byte(`{"value":"swapped"}`)))
	r.ContentLength = int64(len(`{"value":"swapped"}`))
	if status, raw := send(r); status != 401 || !strings.Contains(raw, `"unauthenticated"`) {
		t.Fatalf("tampered body: %d %s", status, raw)
	}
	// Revoked keys stop signing too.
	ta.call(t, "DELETE", "/v1/apikeys/"+id, admin, nil)
	if status, _ := send(build(body, time.Now(), nonce(t))); status != 401 {
		t.Fatalf("signed with a revoked key: %d", status)
	}
}

// A tenant's allow-list applies to every authenticated request for it, the platform
// administrator's included; other tenants are not affected.
func TestTenantAllowList(t *testing.T) {
	ta := startApp(t, nil)
	admin := ta.adminSession(t)
	ta.call(t, "POST", "/v1/tenants", admin, map[string]string{"name": "acme"})
	ta.call(t, "POST", "/v1/tenants", admin, map[string]string{"name": "globex"})
	if status, _, raw := ta.call(t, "PUT", "/v1/tenants/acme/allowlist", admin, map[string]any{"cidrs": []string{"127.0.0.2/32"}}); status != 200 {
		t.Fatalf("set: %d %s", status, raw)
	}
	get := func(src, path string) (int, string) {
		req, _ := http.NewRequest("GET", ta.url(path), nil)
		req.Header.Set("Authorization", "Bearer "+admin)
		status, b := do(t, ta.client(src, nil), req)
		return status, string(b)
	}
	if status, raw := get("127.0.0.3", "/v1/tenants/acme"); status != 403 || !strings.Contains(raw, "auth.ip_not_allowed") {
		t.Fatalf("from outside the list: %d %s", status, raw)
	}
	if status, _ := get("127.0.0.2", "/v1/tenants/acme"); status != 200 {
		t.Fatalf("from inside the list: %d", status)
	}
	if status, _ := get("127.0.0.3", "/v1/tenants/globex"); status != 200 {
		t.Fatalf("another tenant from anywhere: %d", status)
	}
	if status, raw := get("127.0.0.3", "/v1/tenants"); status != 200 || strings.Contains(raw, `"acme"`) {
		t.Fatalf("listing from outside the list shows acme: %d %s", status, raw)
	}
}

// Login: a wrong password and a missing user get the same answer; the sixth attempt is
// locked either way; the session cookie is Secure, HttpOnly and SameSite=Strict.
func TestLoginOverHTTP(t *testing.T) {
	ta := startApp(t, func(c *config.Config) {})
	ta.adminSession(t)
	login := func(src string, body map[string]string) (int, map[string]any, string) {
		b, _ := json.Marshal(body)
		req, _ := http.NewRequest("POST", ta.url("/v1/auth/login"), bytes.NewReader(b))
		req.Header.Set("Content-Type", "application/json")
		status, raw := do(t, ta.client(src, nil), req)
		var out map[string]any
		json.Unmarshal(raw, &out)
		return status, out, string(raw)
	}
	// Each from its own address, so only the per-account counter is in play.
	for user, src := range map[string]string{"admin": "127.0.0.2", "nobody": "127.0.0.3"} {
		var first string
		for i := range 5 {
			status, _, raw := login(src, map[string]string{"user": user, "password": "Wrong-Passw0rd!"})
			if status != 401 {
				t.Fatalf("%s attempt %d: %d %s", user, i, status, raw)
			}
			if first == "" {
				first = raw
			} else if raw != first {
				t.Fatalf("answers differ: %s / %s", first, raw)
			}
		}
		status, body, raw := login("127.0.0.4", map[string]string{"user": user, "password": ta.adminPassword})
		if status != 429 || body["code"] != "auth.locked" {
			t.Fatalf("%s after five failures: %d %s", user, status, raw)
		}
	}

	if n := metricValue(t, metrics(t, ta), "penstock_auth_lockouts_total"); n < 2 {
		t.Fatalf("lockouts counted: %v", n)
	}

	// A fresh server for the cookie (the first is locked for this address now).
	tb := startApp(t, nil)
	tb.adminSession(t)
	b, _ := json.Marshal(map[string]string{"user": "admin", "password": tb.adminPassword, "code": testenv.TOTPCode(t, tb.adminTOTP, time.Now().Add(30*time.Second))})
	req, _ := http.NewRequest("POST", tb.url("/v1/auth/login"), bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	resp, err := tb.client("", nil).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	cookie := resp.Header.Get("Set-Cookie")
	for _, want := range []string{"penstock_session=", "Secure", "HttpOnly", "SameSite=Strict"} {
		if resp.StatusCode != 200 || !strings.Contains(cookie, want) {
			t.Fatalf("login %d, cookie %q lacks %s", resp.StatusCode, cookie, want)
		}
	}
	// The cookie alone authenticates.
	req, _ = http.NewRequest("GET", tb.url("/v1/auth/whoami"), nil)
	req.Header.Set("Cookie", strings.Split(cookie, ";")[0])
	if status, raw := do(t, tb.client("", nil), req); status != 200 || !strings.Contains(string(raw), `"admin"`) {
		t.Fatalf("whoami by cookie: %d %s", status, raw)
	}
}

// A tenant owner must enrol a second factor before doing anything else; a developer need not.
func TestOwnersMustEnrolMFA(t *testing.T) {
	ta := startApp(t, nil)
	admin := ta.adminSession(t)
	ta.call(t, "POST", "/v1/tenants", admin, map[string]string{"name": "acme"})
	for _, tc := range []struct {
		user, role string
		restricted bool
	}{{"olivia", "owner", true}, {"devon", "developer", false}} {
		_, out, _ := ta.call(t, "POST", "/v1/users", admin, map[string]string{"name": tc.user})
		pw := out["password"].(string)
		ta.call(t, "POST", "/v1/roles", admin, map[string]string{"subject": "user:" + tc.user, "role": tc.role, "scope": "acme"})
		_, out, _ = ta.call(t, "POST", "/v1/auth/login", "-", map[string]string{"user": tc.user, "password": pw})
		tok := out["token"].(string)
		if status, _, raw := ta.call(t, "POST", "/v1/auth/password", tok, map[string]string{"current": pw, "new": "Sturdy-Pass-" + tc.role + "-9"}); status != 204 {
			t.Fatalf("%s: change password: %d %s", tc.user, status, raw)
		}
		status, _, raw := ta.call(t, "GET", "/v1/tenants/acme", tok, nil)
		if tc.restricted && (status != 403 || !strings.Contains(raw, "auth.mfa_required")) || !tc.restricted && status != 200 {
			t.Fatalf("%s (%s) before enrolling: %d %s", tc.user, tc.role, status, raw)
		}
	}
}
