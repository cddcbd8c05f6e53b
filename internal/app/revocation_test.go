package app

import (
	"strings"
	"testing"
)

// A key stands on the authority of whoever made it: it stops when its owner is disabled, must
// change their password, or loses the role; a service key stops with its application.
func TestKeysFollowTheirOwner(t *testing.T) {
	ta := startApp(t, nil)
	admin := ta.adminSession(t)
	ta.call(t, "POST", "/v1/tenants", admin, map[string]string{"name": "acme"})
	ta.call(t, "POST", "/v1/tenants/acme/environments/production/applications", admin, map[string]string{"name": "etl"})
	_, out, _ := ta.call(t, "POST", "/v1/users", admin, map[string]string{"name": "alice"})
	pw := out["password"].(string)
	_, rb, _ := ta.call(t, "POST", "/v1/roles", admin, map[string]string{"subject": "user:alice", "role": "admin", "scope": "acme"})
	_, out, _ = ta.call(t, "POST", "/v1/auth/login", "-", map[string]string{"user": "alice", "password": pw})
	alice := out["token"].(string)
	if status, _, raw := ta.call(t, "POST", "/v1/auth/password", alice, map[string]string{"current": pw, "new": "Sturdy-Pass-Word-9"}); status != 204 {
		t.Fatalf("password: %d %s", status, raw)
	}
	status, out, raw := ta.call(t, "POST", "/v1/apikeys", alice, map[string]string{"role": "admin", "scope": "acme"})
	if status != 201 {
		t.Fatalf("alice's key: %d %s", status, raw)
	}
	key := out["key"].(string)
	works := func() bool {
		status, _, _ := ta.call(t, "GET", "/v1/tenants/acme", key, nil)
		return status == 200
	}
	if !works() {
		t.Fatal("a new key does not work")
	}
	// A key cannot make keys, and a tenant admin cannot grant to users outside the tenant
	// (answered as for a user that does not exist).
	if status, _, _ := ta.call(t, "POST", "/v1/apikeys", key, map[string]string{"role": "viewer", "scope": "acme"}); status != 403 {
		t.Fatalf("a key created a key: %d", status)
	}
	ta.call(t, "POST", "/v1/users", admin, map[string]string{"name": "outsider"})
	for _, subject := range []string{"user:outsider", "user:no-such-user"} {
		if status, _, raw := ta.call(t, "POST", "/v1/roles", alice, map[string]string{"subject": subject, "role": "viewer", "scope": "acme"}); status != 404 {
			t.Fatalf("grant to %s by a tenant admin: %d %s", subject, status, raw)
		}
	}

	ta.call(t, "DELETE", "/v1/roles/"+rb["id"].(string), admin, nil)
	if works() {
		t.Fatal("the key outlived its owner's role")
	}
	ta.call(t, "POST", "/v1/roles", admin, map[string]string{"subject": "user:alice", "role": "admin", "scope": "acme"})
	if !works() {
		t.Fatal("the key does not work again with the role back")
	}
	ta.call(t, "POST", "/v1/users/alice/disable", admin, nil)
	if works() {
		t.Fatal("the key outlived its owner's account")
	}

	_, out, _ = ta.call(t, "POST", "/v1/apikeys", admin, map[string]any{"role": "developer", "scope": "acme/production/etl", "service": true})
	svc := out["key"].(string)
	if status, _, _ := ta.call(t, "GET", "/v1/auth/whoami", svc, nil); status != 200 {
		t.Fatal("service key does not work")
	}
	ta.call(t, "DELETE", "/v1/tenants/acme/environments/production/applications/etl", admin, nil)
	if status, _, _ := ta.call(t, "GET", "/v1/auth/whoami", svc, nil); status != 401 {
		t.Fatalf("a service key outlived its application: %d", status)
	}
}

// Changing a password ends the user's other sessions, and guessing the current password from a
// session is locked out like a login.
func TestPasswordChangeEndsOtherSessions(t *testing.T) {
	ta := startApp(t, nil)
	admin := ta.adminSession(t)
	_, out, _ := ta.call(t, "POST", "/v1/users", admin, map[string]string{"name": "bob"})
	pw := out["password"].(string)
	login := func(pass string) string {
		_, out, raw := ta.call(t, "POST", "/v1/auth/login", "-", map[string]string{"user": "bob", "password": pass})
		tok, _ := out["token"].(string)
		if tok == "" {
			t.Fatalf("login: %s", raw)
		}
		return tok
	}
	first, second := login(pw), login(pw)
	ta.call(t, "POST", "/v1/auth/password", first, map[string]string{"current": pw, "new": "Sturdy-Pass-Word-9"})
	if status, _, _ := ta.call(t, "GET", "/v1/auth/whoami", second, nil); status != 401 {
		t.Fatalf("the other session survived the password change: %d", status)
	}
	if status, _, _ := ta.call(t, "GET", "/v1/auth/whoami", first, nil); status != 200 {
		t.Fatalf("the changing session ended: %d", status)
	}
	var last string
	for range 6 {
		_, _, last = ta.call(t, "POST", "/v1/auth/password", first, map[string]string{"current": "Wrong-Guess-123!", "new": "Another-Pass-9x"})
	}
	if !strings.Contains(last, "auth.locked") {
		t.Fatalf("guessing the current password is not locked out: %s", last)
	}
}

// Listings leave out what the tenant's allow-list keeps the caller from reading directly.
func TestListingsHonourAllowLists(t *testing.T) {
	ta := startApp(t, nil)
	admin := ta.adminSession(t)
	ta.call(t, "POST", "/v1/tenants", admin, map[string]string{"name": "acme"})
	ta.call(t, "POST", "/v1/apikeys", admin, map[string]string{"role": "viewer", "scope": "acme"})
	if _, _, raw := ta.call(t, "GET", "/v1/apikeys", admin, nil); !strings.Contains(raw, `"scope":"acme"`) {
		t.Fatalf("key not listed: %s", raw)
	}
	ta.call(t, "PUT", "/v1/tenants/acme/allowlist", admin, map[string]any{"cidrs": []string{"10.0.0.0/8"}})
	for _, path := range []string{"/v1/apikeys", "/v1/roles", "/v1/tenants"} {
		if _, _, raw := ta.call(t, "GET", path, admin, nil); strings.Contains(raw, `acme`) {
			t.Errorf("%s from outside acme's allow-list shows acme: %s", path, raw)
		}
	}
}
