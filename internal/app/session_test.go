package app

import (
	"strings"
	"testing"
	"time"

	"github.com/penstock/penstock/internal/testenv"
)

// adminSession logs the bootstrap administrator in, changes its one-time password and enrols
// a second factor, as a first login must, and returns the resulting session token.
func (ta *testApp) adminSession(t testing.TB) string {
	t.Helper()
	if ta.admin != "" {
		return ta.admin
	}
	pw := ta.BootstrapPassword()
	if pw.IsZero() {
		t.Fatal("no bootstrap password on a new data directory")
	}
	status, body, raw := ta.call(t, "POST", "/v1/auth/login", "-", map[string]string{"user": "admin", "password": pw.Reveal()})
	if status != 200 || body["must_change_password"] != true {
		t.Fatalf("first login: %d %s", status, raw)
	}
	tok := body["token"].(string)
	if status, _, raw := ta.call(t, "GET", "/v1/tenants", tok, nil); status != 403 || !strings.Contains(raw, "auth.password_change_required") {
		t.Fatalf("before the password change: %d %s", status, raw)
	}
	ta.adminPassword = "Chang3d-Secret-Pass"
	if status, _, raw := ta.call(t, "POST", "/v1/auth/password", tok, map[string]string{"current": pw.Reveal(), "new": ta.adminPassword}); status != 204 {
		t.Fatalf("password change: %d %s", status, raw)
	}
	if status, _, raw := ta.call(t, "GET", "/v1/tenants", tok, nil); status != 403 || !strings.Contains(raw, "auth.mfa_required") {
		t.Fatalf("before enrolling a second factor: %d %s", status, raw)
	}
	status, body, raw = ta.call(t, "POST", "/v1/auth/mfa/enrol", tok, nil)
	if status != 200 {
		t.Fatalf("enrol: %d %s", status, raw)
	}
	ta.adminTOTP = body["secret"].(string)
	if status, _, raw := ta.call(t, "POST", "/v1/auth/mfa/verify", tok, map[string]string{"code": testenv.TOTPCode(t, ta.adminTOTP, time.Now())}); status != 204 {
		t.Fatalf("verify: %d %s", status, raw)
	}
	if status, _, raw := ta.call(t, "GET", "/v1/tenants", tok, nil); status != 200 {
		t.Fatalf("after setup: %d %s", status, raw)
	}
	ta.admin = tok
	return tok
}
