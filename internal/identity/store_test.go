package identity

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/penstock/penstock/internal/authz"
	"github.com/penstock/penstock/internal/keyring"
	"github.com/penstock/penstock/internal/keyring/keyringtest"
	"github.com/penstock/penstock/internal/redact"
	"github.com/penstock/penstock/internal/testenv"
)

var ctx = context.Background()

type node struct {
	store *Store
	now   *time.Time
}

// openNodes opens n identity stores on one engine, as n Penstock processes would.
func openNodes(t *testing.T, n int) []node {
	t.Helper()
	st, err := keyringtest.Open(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	plat, kr := st.Platform, st.Keyring
	var nodes []node
	for range n {
		now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
		cfg := DefaultConfig()
		cfg.Argon2 = cheap
		nd := node{now: &now}
		cfg.Now = func() time.Time { return *nd.now }
		s, err := Open(ctx, plat, kr, cfg, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		nd.store = s
		nodes = append(nodes, nd)
	}
	t.Cleanup(func() {
		for _, nd := range nodes {
			nd.store.Close()
		}
		st.Close()
	})
	return nodes
}

func TestTenantsAndApps(t *testing.T) {
	s := openNodes(t, 1)[0].store
	ten, err := s.CreateTenant(ctx, "acme")
	if err != nil || len(ten.Environments) != 3 || len(ten.ID) < 20 {
		t.Fatalf("create: %+v %v", ten, err)
	}
	if _, err := s.CreateTenant(ctx, "acme"); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate: %v", err)
	}
	for _, bad := range []string{"platform", "Acme", "-x", ""} {
		if _, err := s.CreateTenant(ctx, bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("tenant %q: %v", bad, err)
		}
	}
	if _, err := s.CreateApp(ctx, "acme", "production", "billing"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateApp(ctx, "acme", "qa", "billing"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("app in a missing environment: %v", err)
	}
	if apps := s.Apps("acme", ""); len(apps) != 1 || apps[0].Name != "billing" {
		t.Fatalf("apps %+v", apps)
	}
	if _, err := s.SetAllowList(ctx, "acme", []string{"10.0.0.1/8", "bad"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad CIDR: %v", err)
	}
	ten, err = s.SetAllowList(ctx, "acme", []string{"10.0.0.1/8"})
	if err != nil || ten.AllowList[0] != "10.0.0.0/8" {
		t.Fatalf("allow list %v %v", ten.AllowList, err)
	}
	if _, err := s.SetEgress(ctx, "acme", []string{"127.0.0.1:5432", "nope:99999"}); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "rules[1]") {
		t.Fatalf("bad egress rule: %v", err)
	}
	if p := s.EgressPolicy("acme"); len(p.Rules) != 0 {
		t.Fatalf("a refused list was stored: %+v", p)
	}
	ten, err = s.SetEgress(ctx, "acme", []string{"10.1.0.0/8:443", "DB.example."})
	if err != nil || ten.Egress[0] != "10.0.0.0/8:443" || ten.Egress[1] != "db.example" {
		t.Fatalf("egress %v %v", ten.Egress, err)
	}
	if p := s.EgressPolicy("acme"); p.Tenant != "acme" || len(p.Rules) != 2 || p.Rules[1].Host != "db.example" {
		t.Fatalf("policy %+v", p)
	}
	// The lifecycle's order, in short: destroy the keys, then remove the records.
	if err := s.keys.Destroy(ctx, keyring.Scope{Tenant: "acme", Environment: "production", Application: "billing"}); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveScope(ctx, authz.Scope{Tenant: "acme", Environment: "production", Application: "billing"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateApp(ctx, "acme", "production", "billing"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("reusing a deleted application's name: %v", err)
	}
	if err := s.keys.Destroy(ctx, keyring.Scope{Tenant: "acme"}); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveScope(ctx, authz.Scope{Tenant: "acme"}); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Tenant("acme"); ok {
		t.Fatal("tenant still there")
	}
	if _, err := s.CreateTenant(ctx, "acme"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("reusing a deleted tenant's name: %v", err)
	}
}

func TestLoginMFAAndSessions(t *testing.T) {
	nd := openNodes(t, 1)[0]
	s := nd.store
	if _, _, err := s.CreateUser(ctx, "alice", "alice@example.com", redact.NewSecret("alice-Pass-2024!")); err == nil {
		t.Fatal("a password containing the user name was accepted")
	}
	u, pw, err := s.CreateUser(ctx, "alice", "alice@example.com", redact.Secret{})
	if err != nil || !u.MustChange || pw.IsZero() {
		t.Fatalf("create: %+v %v", u, err)
	}
	lock := NewLockout()
	lock.Now = func() time.Time { return *nd.now }

	tok, sess, err := s.Login(ctx, lock, "alice", pw, "", "192.0.2.1")
	if err != nil || sess.MFA {
		t.Fatalf("login: %v", err)
	}
	if got, err := s.Session(ctx, tok.Reveal()); err != nil || got.User != "alice" {
		t.Fatalf("session: %v", err)
	}
	next := redact.NewSecret("Correct-Horse-Battery-7")
	if err := s.ChangePassword(ctx, lock, "alice", pw, next, tok.Reveal()); err != nil {
		t.Fatal(err)
	}
	if u, _ := s.User("alice"); u.MustChange {
		t.Fatal("still must change after a change")
	}

	enr, err := s.EnrolMFA(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ConfirmMFA(ctx, lock, "alice", "000000"); !errors.Is(err, ErrBadCode) {
		t.Fatalf("confirm with a wrong code: %v", err)
	}
	c := testenv.TOTPCode(t, enr.Secret.Reveal(), *nd.now)
	if err := s.ConfirmMFA(ctx, lock, "alice", c); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Login(ctx, lock, "alice", next, "", "192.0.2.1"); !errors.Is(err, ErrMFARequired) {
		t.Fatalf("login without a code: %v", err)
	}
	if _, _, err := s.Login(ctx, lock, "alice", next, c, "192.0.2.1"); !errors.Is(err, ErrBadCode) {
		t.Fatalf("login replaying the enrolment code: %v", err)
	}
	*nd.now = nd.now.Add(30 * time.Second)
	tok, sess, err = s.Login(ctx, lock, "alice", next, testenv.TOTPCode(t, enr.Secret.Reveal(), *nd.now), "192.0.2.1")
	if err != nil || !sess.MFA {
		t.Fatalf("login with a code: %v", err)
	}
	if _, _, err := s.Login(ctx, lock, "alice", next, enr.RecoveryCodes[0].Reveal(), "192.0.2.1"); err != nil {
		t.Fatalf("login with a recovery code: %v", err)
	}
	if _, _, err := s.Login(ctx, lock, "alice", next, enr.RecoveryCodes[0].Reveal(), "192.0.2.1"); !errors.Is(err, ErrBadCode) {
		t.Fatalf("recovery code reused: %v", err)
	}

	// Idle and absolute expiry, on the store's clock.
	*nd.now = nd.now.Add(29 * time.Minute)
	if _, err := s.Session(ctx, tok.Reveal()); err != nil {
		t.Fatalf("session idle 29 minutes: %v", err)
	}
	*nd.now = nd.now.Add(31 * time.Minute)
	if _, err := s.Session(ctx, tok.Reveal()); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("session idle 31 minutes: %v", err)
	}
	tok, _, _ = s.Login(ctx, lock, "alice", next, enr.RecoveryCodes[1].Reveal(), "192.0.2.1")
	for range 25 {
		*nd.now = nd.now.Add(29 * time.Minute)
		s.Session(ctx, tok.Reveal())
	}
	if _, err := s.Session(ctx, tok.Reveal()); !errors.Is(err, ErrUnauthenticated) {
		t.Fatal("an active session outlived the 12-hour limit")
	}

	// Disabling ends sessions and stops logins, with the same answer as a wrong password.
	tok, _, _ = s.Login(ctx, lock, "alice", next, enr.RecoveryCodes[2].Reveal(), "192.0.2.1")
	if err := s.SetDisabled(ctx, "alice", true); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Session(ctx, tok.Reveal()); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("session of a disabled user: %v", err)
	}
	if _, _, err := s.Login(ctx, lock, "alice", next, enr.RecoveryCodes[3].Reveal(), "192.0.2.2"); !errors.Is(err, ErrBadCredentials) {
		t.Fatalf("disabled user login: %v", err)
	}
}

func TestLoginLockoutDoesNotRevealAccounts(t *testing.T) {
	nd := openNodes(t, 1)[0]
	s := nd.store
	_, pw, _ := s.CreateUser(ctx, "bob", "", redact.Secret{})
	lock := NewLockout()
	lock.Now = func() time.Time { return *nd.now }
	for _, user := range []string{"bob", "nobody"} {
		for range 5 {
			if _, _, err := s.Login(ctx, lock, user, redact.NewSecret("wrong-Password-1!"), "", "198.51.100."+user[:1]); !errors.Is(err, ErrBadCredentials) {
				t.Fatalf("%s: %v", user, err)
			}
		}
		if _, _, err := s.Login(ctx, lock, user, pw, "", "203.0.113.9"); !errors.Is(err, ErrLocked) {
			t.Fatalf("%s after 5 failures: %v, want the same lock for existing and missing accounts", user, err)
		}
	}
	*nd.now = nd.now.Add(time.Minute)
	if _, _, err := s.Login(ctx, lock, "bob", pw, "", "203.0.113.9"); err != nil {
		t.Fatalf("after the lock ended: %v", err)
	}
}

// A revocation made by one process reaches another sharing the engine (in well under a second
// on an idle machine; the test logs how long, and allows a busy one 30 s).
func TestRevocationPropagatesToAnotherNode(t *testing.T) {
	nodes := openNodes(t, 2)
	a, b := nodes[0].store, nodes[1].store
	if _, err := a.CreateTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	activeUser(t, a, "alice", authz.Owner, authz.Scope{Tenant: "acme"})
	nk, err := a.CreateAPIKey(ctx, "user:alice", "ci", authz.Developer, authz.Scope{Tenant: "acme"}, time.Time{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	src := netip.MustParseAddr("192.0.2.1")
	eventually := func(what string, ok func() bool) {
		t.Helper()
		start := time.Now()
		deadline := start.Add(30 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not seen by the other node within 30s", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
		t.Logf("%s: seen by the other node after %v", what, time.Since(start).Round(time.Millisecond))
	}
	eventually("new key", func() bool { _, err := b.VerifyAPIKey(nk.Key.Reveal(), src); return err == nil })
	if err := a.RevokeAPIKey(ctx, nk.Record.ID); err != nil {
		t.Fatal(err)
	}
	eventually("revoked key", func() bool { _, err := b.VerifyAPIKey(nk.Key.Reveal(), src); return err != nil })

	_, pw, _ := a.CreateUser(ctx, "carol", "", redact.Secret{})
	lock := NewLockout()
	tok, _, err := a.Login(ctx, lock, "carol", pw, "", "192.0.2.1")
	if err != nil {
		t.Fatal(err)
	}
	eventually("session", func() bool { _, err := b.Session(ctx, tok.Reveal()); return err == nil })
	rb, err := a.Grant(ctx, "user:carol", authz.Viewer, authz.Scope{Tenant: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	eventually("grant", func() bool { return len(b.Principal("user:carol").Bindings) == 1 })
	if err := a.Revoke(ctx, rb.ID); err != nil {
		t.Fatal(err)
	}
	eventually("revoked grant", func() bool { return len(b.Principal("user:carol").Bindings) == 0 })
	if err := a.SetDisabled(ctx, "carol", true); err != nil {
		t.Fatal(err)
	}
	eventually("ended session", func() bool { _, err := b.Session(ctx, tok.Reveal()); return err != nil })
}

func TestAPIKeyChecks(t *testing.T) {
	nd := openNodes(t, 1)[0]
	s := nd.store
	s.CreateTenant(ctx, "acme")
	activeUser(t, s, "alice", authz.Owner, authz.Scope{Tenant: "acme"})
	scope := authz.Scope{Tenant: "acme", Environment: "production"}
	src := netip.MustParseAddr("192.0.2.1")
	exp, err := s.CreateAPIKey(ctx, "user:alice", "", authz.Operator, scope, nd.now.Add(time.Hour), []string{"192.0.2.0/24"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.VerifyAPIKey(exp.Key.Reveal(), src); err != nil {
		t.Fatalf("valid key: %v", err)
	}
	if _, err := s.VerifyAPIKey(exp.Key.Reveal(), netip.MustParseAddr("198.51.100.1")); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("outside the CIDRs: %v", err)
	}
	k := exp.Key.Reveal()
	if _, err := s.VerifyAPIKey(k[:len(k)-2]+"00", src); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("wrong secret: %v", err)
	}
	*nd.now = nd.now.Add(2 * time.Hour)
	if _, err := s.VerifyAPIKey(k, src); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("expired key: %v", err)
	}
	if _, err := s.CreateAPIKey(ctx, "user:alice", "", authz.PlatformAdmin, scope, time.Time{}, nil); !errors.Is(err, ErrInvalid) {
		t.Fatalf("platform-admin key: %v", err)
	}
	if _, err := s.CreateAPIKey(ctx, "user:alice", "", authz.Viewer, authz.Scope{Tenant: "globex"}, time.Time{}, nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("key for a missing tenant: %v", err)
	}
	nk, _ := s.CreateAPIKey(ctx, "user:alice", "", authz.Viewer, scope, time.Time{}, nil)
	id, _, _ := ParseAPIKey(nk.Key.Reveal())
	rec, signing, err := s.KeyForSignature(ctx, id, src)
	if err != nil || rec.ID != id || signing != SigningKey(nk.Key) {
		t.Fatalf("signing key: %v", err)
	}
}

// activeUser creates a user who has set their own password and holds role at scope: an owner
// whose keys work.
func activeUser(t *testing.T, s *Store, name string, role authz.Role, scope authz.Scope) {
	t.Helper()
	_, pw, err := s.CreateUser(ctx, name, "", redact.Secret{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ChangePassword(ctx, NewLockout(), name, pw, redact.NewSecret("Sturdy-Pass-Word-9"), ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Grant(ctx, "user:"+name, role, scope); err != nil {
		t.Fatal(err)
	}
}

// Raising the argon2 parameters upgrades a user's hash at their next successful login.
func TestLoginUpgradesTheHash(t *testing.T) {
	nd := openNodes(t, 1)[0]
	s := nd.store
	_, pw, _ := s.CreateUser(ctx, "erin", "", redact.Secret{})
	before, _ := s.User("erin")
	s.cfg.Argon2 = Argon2Params{Memory: 2 << 10, Time: 2, Threads: 1}
	if _, _, err := s.Login(ctx, NewLockout(), "erin", pw, "", "192.0.2.1"); err != nil {
		t.Fatal(err)
	}
	after, _ := s.User("erin")
	if after.PasswordHash == before.PasswordHash || !strings.HasPrefix(after.PasswordHash, "$argon2id$v=19$m=2048,t=2,p=1$") {
		t.Fatalf("hash not upgraded: %s", after.PasswordHash)
	}
	if _, _, err := s.Login(ctx, NewLockout(), "erin", pw, "", "192.0.2.1"); err != nil {
		t.Fatalf("login with the upgraded hash: %v", err)
	}
}
