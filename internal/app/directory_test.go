package app

import (
	"bytes"
	"encoding/json"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/penstock/penstock/internal/audit"
	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/redact"
	"github.com/penstock/penstock/internal/testenv"
)

// directoryConfig points c at slapd s over LDAPS, with ops mapped to platform-admin in the
// configuration, and the bootstrap administrator as the break-glass user.
func useDirectory(c *config.Config, s *testenv.Slapd) {
	l := &c.Directory.LDAP
	l.URL, l.CAFile = s.LDAPSURL, s.CAFile
	l.BindDN, l.BindPassword = testenv.LDAPServiceDN, redact.NewSecret(testenv.LDAPServicePass)
	l.UserBase, l.GroupBase = "ou=people,"+testenv.LDAPBase, "ou=groups,"+testenv.LDAPBase
	l.MFAAttribute = "employeeType=mfa"
	c.Directory.Mappings = []string{"platform-admin@platform=" + testenv.GroupDN("ops")}
	c.Directory.BreakGlassUsers = []string{"admin"}
	c.Directory.RecheckEvery, c.Directory.RolesValidFor = time.Second, 4*time.Second
	c.Fabric.NATSListen = "127.0.0.1:0"
	c.API.Limits.ConnRate, c.API.Limits.ConnBurst = 1e6, 1e6
	c.API.Limits.RequestRate, c.API.Limits.RequestBurst = 1e6, 1e6
}

// dirLogin logs a directory user in with its seeded password.
func (ta *testApp) dirLogin(t *testing.T, user string) (int, map[string]any, string) {
	t.Helper()
	return ta.call(t, "POST", "/v1/auth/login", "-", map[string]string{"user": user, "password": user + testenv.LDAPPasswordTail})
}

func (ta *testApp) dirSession(t *testing.T, user string) string {
	t.Helper()
	st, body, raw := ta.dirLogin(t, user)
	if st != 200 {
		t.Fatalf("login %s: %d %s", user, st, raw)
	}
	return body["token"].(string)
}

// Directory users log in with their directory password and get the roles their groups (nested
// ones too) map to; every refusal looks the same; admins still need a second factor unless
// the directory vouches for one; taking a user out of a group takes its roles away within the
// re-check interval from its session, its API key and its native NATS connection; local users
// log in only when they are break-glass users, and that is audited with a warning.
func TestDirectoryUsersGetRolesFromTheirGroups(t *testing.T) {
	s := testenv.StartSlapd(t)
	ta := startApp(t, func(c *config.Config) { useDirectory(c, s) })
	admin := ta.adminSession(t) // the break-glass user
	ta.must(t, "POST", "/v1/tenants", map[string]string{"name": "acme"}, 201)
	ta.must(t, "POST", "/v1/tenants/acme/environments/production/applications", map[string]string{"name": "billing"}, 201)
	ta.must(t, "POST", "/v1/directory/mappings", map[string]string{"group": testenv.GroupDN("acme-devs"), "role": "admin", "scope": "acme/production"}, 201)
	// Written differently (case, spaces): the same group.
	ta.must(t, "POST", "/v1/directory/mappings", map[string]string{"group": "CN=acme-owners, OU=groups, DC=example, DC=org", "role": "owner", "scope": "acme"}, 201)
	base := "/v1/tenants/acme/environments/production/applications/billing"

	// bob: admin of acme/production from acme-devs.
	bob := ta.dirSession(t, "bob")
	st, who, raw := ta.call(t, "GET", "/v1/auth/whoami", bob, nil)
	if st != 200 || !strings.Contains(raw, `"role":"admin"`) || who["restricted"] != nil {
		t.Fatalf("bob whoami: %d %s", st, raw)
	}
	if st, _, raw := ta.call(t, "POST", base+"/queues", bob, map[string]any{"name": "jobs"}); st != 201 {
		t.Fatalf("bob creates a queue: %d %s", st, raw)
	}
	if st, _, _ := ta.call(t, "POST", "/v1/tenants", bob, map[string]string{"name": "bobs"}); st != 403 {
		t.Fatalf("bob creates a tenant: %d", st)
	}
	// The directory holds bob's password: Penstock neither resets nor changes it.
	if st, _, raw := ta.call(t, "POST", "/v1/users/bob/reset-password", admin, nil); st != 422 || !strings.Contains(raw, "directory") {
		t.Fatalf("reset bob's password: %d %s", st, raw)
	}
	if st, _, raw := ta.call(t, "POST", "/v1/auth/password", bob, map[string]string{"current": "bob" + testenv.LDAPPasswordTail, "new": "Another-Passw0rd!x"}); st != 422 {
		t.Fatalf("bob changes his password: %d %s", st, raw)
	}
	if st, _, raw := ta.call(t, "GET", "/v1/users", admin, nil); st != 200 || !strings.Contains(raw, `"name":"bob"`) ||
		!strings.Contains(raw, `"source":"directory"`) || !strings.Contains(raw, `"dn":"uid=bob,ou=people,dc=example,dc=org"`) {
		t.Fatalf("users: %d %s", st, raw)
	}

	// Every refusal is the same answer: wrong password, unknown user, empty password, names
	// that would widen an unescaped filter, a local user's name.
	ta.must(t, "POST", "/v1/users", map[string]string{"name": "localonly"}, 201)
	_, ref, want := ta.call(t, "POST", "/v1/auth/login", "-", map[string]string{"user": "bob", "password": "Wrong-passw0rd!"})
	if ref["code"] != "auth.invalid_credentials" {
		t.Fatalf("wrong password: %s", want)
	}
	for i, try := range []struct{ user, password string }{
		{"nobody", "nobody" + testenv.LDAPPasswordTail},
		{"bob", ""},
		{"*", "bob" + testenv.LDAPPasswordTail},
		{"bob)(uid=*", "bob" + testenv.LDAPPasswordTail},
		{"*)(|(objectClass=*", "bob" + testenv.LDAPPasswordTail},
		{"b*", "bob" + testenv.LDAPPasswordTail},
		{"bob\x00", "bob" + testenv.LDAPPasswordTail},
		{"localonly", "whatever-Passw0rd!"},
	} {
		// Each from an address of its own: the per-address lockout would answer 429 first.
		st, raw := ta.loginFrom(t, "127.0.0."+strconv.Itoa(10+i), try.user, try.password)
		if st != 401 || raw != want {
			t.Errorf("login %q: %d %s, want 401 %s", try.user, st, raw, want)
		}
	}
	// Upper case is the same directory user, not a second one.
	if st, _, raw := ta.call(t, "POST", "/v1/auth/login", "-", map[string]string{"user": "BOB", "password": "bob" + testenv.LDAPPasswordTail}); st != 200 {
		t.Fatalf("BOB: %d %s", st, raw)
	}

	// carol: owner of acme through acme-leads, a member of acme-owners (nested). An owner must
	// enrol Penstock's TOTP; then the session works, and the next login asks for a code.
	st, body, raw := ta.dirLogin(t, "carol")
	if st != 200 || body["must_enrol_mfa"] != true {
		t.Fatalf("carol: %d %s", st, raw)
	}
	carol := body["token"].(string)
	if st, _, raw := ta.call(t, "GET", "/v1/tenants/acme", carol, nil); st != 403 || !strings.Contains(raw, "auth.mfa_required") {
		t.Fatalf("carol before enrolling: %d %s", st, raw)
	}
	st, enrol, raw := ta.call(t, "POST", "/v1/auth/mfa/enrol", carol, nil)
	if st != 200 {
		t.Fatalf("carol enrols: %d %s", st, raw)
	}
	secret := enrol["secret"].(string)
	if st, _, raw := ta.call(t, "POST", "/v1/auth/mfa/verify", carol, map[string]string{"code": testenv.TOTPCode(t, secret, time.Now())}); st != 204 {
		t.Fatalf("carol verifies: %d %s", st, raw)
	}
	if st, _, raw := ta.call(t, "DELETE", "/v1/tenants/acme/environments/staging?confirm=acme/staging", carol, nil); st != 204 {
		t.Fatalf("carol, owner, deletes staging: %d %s", st, raw)
	}
	if st, _, raw := ta.dirLogin(t, "carol"); st != 401 || !strings.Contains(raw, "auth.mfa_required") {
		t.Fatalf("carol's next login without a code: %d %s", st, raw)
	}

	// alice (ops) is a platform admin and must enrol; erin, put in ops, carries the attribute
	// that says the directory checks her second factor: no TOTP asked.
	if st, body, raw := ta.dirLogin(t, "alice"); st != 200 || body["must_enrol_mfa"] != true {
		t.Fatalf("alice: %d %s", st, raw)
	}
	s.AddMember(t, "ops", testenv.UserDN("erin"))
	st, body, raw = ta.dirLogin(t, "erin")
	if st != 200 || body["must_enrol_mfa"] != false {
		t.Fatalf("erin: %d %s", st, raw)
	}
	erin := body["token"].(string)
	if st, _, raw := ta.call(t, "GET", "/v1/directory/users/carol", erin, nil); st != 200 ||
		!strings.Contains(raw, `"role":"owner"`) || !strings.Contains(raw, "cn=acme-leads") || !strings.Contains(raw, "cn=acme-owners") ||
		!strings.Contains(raw, `"mfa_required":true`) {
		t.Fatalf("auth test carol (as erin, platform admin): %d %s", st, raw)
	}
	if st, _, raw := ta.call(t, "GET", "/v1/directory/users/nobody", erin, nil); st != 404 || !strings.Contains(raw, "directory.user_not_found") {
		t.Fatalf("auth test nobody: %d %s", st, raw)
	}
	if st, _, raw := ta.call(t, "GET", "/v1/directory/users/carol", bob, nil); st != 403 {
		t.Fatalf("auth test by bob: %d %s", st, raw)
	}

	// bob's API key and a native NATS connection with it; then bob leaves acme-devs.
	st, key, raw := ta.call(t, "POST", "/v1/apikeys", bob, map[string]any{"role": "developer", "scope": "acme/production/billing"})
	if st != 201 {
		t.Fatalf("bob's key: %d %s", st, raw)
	}
	bobKey := key["key"].(string)
	nc, err := nats.Connect("tls://"+ta.eng.NativeAddrs().NATS, nats.UserInfo("acme/production", bobKey),
		nats.Secure(nil), nats.RootCAs(filepath.Join(ta.cfg.DataDir, "tls", "ca.crt")), nats.NoReconnect())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if st, _, raw := ta.call(t, "GET", base+"/queues", bobKey, nil); st != 200 {
		t.Fatalf("bob's key before: %d %s", st, raw)
	}
	removed := time.Now()
	s.RemoveMember(t, "acme-devs", testenv.UserDN("bob"))
	waitUntil(t, "bob's session to lose acme", func() bool {
		st, _, _ := ta.call(t, "GET", base+"/queues", bob, nil)
		return st == 404
	})
	waitUntil(t, "bob's API key to stop working", func() bool {
		st, _, _ := ta.call(t, "GET", base+"/queues", bobKey, nil)
		return st == 401
	})
	waitUntil(t, "bob's native connection to close", nc.IsClosed)
	t.Logf("bob lost session, key and native connection %v after leaving the group (recheck_every 1s)", time.Since(removed).Round(time.Millisecond))
	if _, err := nats.Connect("tls://"+ta.eng.NativeAddrs().NATS, nats.UserInfo("acme/production", bobKey),
		nats.Secure(nil), nats.RootCAs(filepath.Join(ta.cfg.DataDir, "tls", "ca.crt")), nats.NoReconnect()); err == nil {
		t.Fatal("bob's key still connects over NATS")
	}

	// The local user is refused (no break-glass), the break-glass admin is let in and that is
	// audited with a warning.
	if st, _, _ := ta.call(t, "POST", "/v1/auth/login", "-", map[string]string{"user": "admin", "password": ta.adminPassword,
		"code": testenv.TOTPCode(t, ta.adminTOTP, time.Now().Add(30*time.Second))}); st != 200 {
		t.Fatalf("break-glass login: %d", st)
	}

	// The directory goes down: a login says so (503, not "wrong password"); roles already
	// read hold for roles_valid_for, then lapse; the break-glass admin still works.
	s.Stop(t)
	if st, _, raw := ta.dirLogin(t, "dave"); st != 503 || !strings.Contains(raw, "auth.directory_unavailable") || strings.Contains(raw, "dc=") {
		t.Fatalf("login with the directory down: %d %s", st, raw)
	}
	waitUntil(t, "erin's roles to lapse with the directory down", func() bool {
		st, _, _ := ta.call(t, "GET", "/v1/directory", erin, nil)
		return st == 403
	})
	if st, _, raw := ta.call(t, "GET", "/v1/directory", admin, nil); st != 200 || !strings.Contains(raw, `"configured":true`) {
		t.Fatalf("break-glass admin with the directory down: %d %s", st, raw)
	}
	s.Start(t)
	waitUntil(t, "erin's roles to come back with the directory", func() bool {
		st, _, _ := ta.call(t, "GET", "/v1/directory", erin, nil)
		return st == 200
	})

	// Everything was audited.
	events := ta.auditEvents(t, admin, "").Events
	has := func(what string, pred func(e audit.Event) bool) {
		t.Helper()
		if !slices.ContainsFunc(events, pred) {
			t.Errorf("no audit event for %s", what)
		}
	}
	has("bob's directory login", func(e audit.Event) bool {
		return e.Action == "auth.login" && e.Actor == "user:bob" && e.Result == "ok" && e.Details["via"] == "directory"
	})
	has("a refused directory login", func(e audit.Event) bool {
		return e.Action == "auth.login" && e.Result == "denied" && e.Code == "auth.invalid_credentials" && e.Details["via"] == "directory"
	})
	has("the directory down at login", func(e audit.Event) bool {
		return e.Action == "auth.login" && e.Code == "auth.directory_unavailable"
	})
	has("the break-glass login", func(e audit.Event) bool {
		return e.Action == "auth.break_glass" && e.Actor == "user:admin" && e.Details["warning"] != ""
	})
	has("bob's roles taken away", func(e audit.Event) bool {
		return e.Action == "directory.roles_changed" && e.Target == "user:bob" && strings.Contains(e.Details["before"], "admin@acme/production") &&
			e.Details["after"] == "none"
	})
	has("the mapping made", func(e audit.Event) bool {
		return e.Action == "directory.mapping_added" && e.Details["role"] == "owner" && e.Details["scope"] == "acme"
	})
	has("the directory down at re-check", func(e audit.Event) bool { return e.Action == "directory.unavailable" })
	has("the directory back", func(e audit.Event) bool { return e.Action == "directory.available" })
	for _, e := range events {
		if strings.Contains(e.Hash, testenv.LDAPPasswordTail) || strings.Contains(strings.Join(mapValues(e.Details), " "), testenv.LDAPPasswordTail) ||
			strings.Contains(e.Actor, testenv.LDAPPasswordTail) {
			t.Errorf("a password in the audit log: %+v", e)
		}
	}
	if strings.Contains(ta.logs.String(), testenv.LDAPPasswordTail) || strings.Contains(ta.logs.String(), testenv.LDAPServicePass) {
		t.Error("a directory password in the logs")
	}
}

// loginFrom logs in from the loopback address src.
func (ta *testApp) loginFrom(t *testing.T, src, user, password string) (int, string) {
	t.Helper()
	b, _ := json.Marshal(map[string]string{"user": user, "password": password})
	req, _ := http.NewRequest("POST", ta.url("/v1/auth/login"), bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	st, raw := do(t, ta.client(src, nil), req)
	return st, string(raw)
}

func mapValues(m map[string]string) []string {
	var out []string
	for _, v := range m {
		out = append(out, v)
	}
	return out
}
