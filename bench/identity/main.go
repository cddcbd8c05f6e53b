// Command identity measures the per-request costs of access control, each beside a peer in the
// same run: API-key verification (against a bare SHA-256 of the key), the authorization
// decision (against a map lookup), and a login's argon2id (against bcrypt at cost 12).
//
//	go run ./bench/identity
package main

import (
	"context"
	"crypto/sha256"
	"fmt"
	"log"
	"log/slog"
	"net/netip"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/penstock/penstock/internal/authz"
	"github.com/penstock/penstock/internal/identity"
	"github.com/penstock/penstock/internal/keyring/keyringtest"
	"github.com/penstock/penstock/internal/redact"
)

func main() {
	ctx := context.Background()
	st, closeStack, err := keyringtest.OpenTemp(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer closeStack()
	plat, kr := st.Platform, st.Keyring
	cfg := identity.DefaultConfig()
	cfg.Argon2 = identity.Argon2Params{Memory: 19 << 10, Time: 1, Threads: 1} // quick set-up of 1,001 users; the login line below measures the default
	store, err := identity.Open(ctx, plat, kr, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	if _, err := store.CreateTenant(ctx, "acme"); err != nil {
		log.Fatal(err)
	}
	// A realistic view: 1,000 keys and 1,000 role bindings besides the ones measured. Verifying
	// a key includes checking that its owner still holds its role.
	scope := authz.Scope{Tenant: "acme", Environment: "production"}
	_, pw, err := store.CreateUser(ctx, "alice", "", redact.Secret{})
	if err != nil {
		log.Fatal(err)
	}
	if err := store.ChangePassword(ctx, identity.NewLockout(), "alice", pw, redact.NewSecret("Sturdy-Pass-Word-9"), ""); err != nil {
		log.Fatal(err)
	}
	if _, err := store.Grant(ctx, "user:alice", authz.Developer, scope); err != nil {
		log.Fatal(err)
	}
	for i := range 1000 {
		name := fmt.Sprintf("user-%d", i)
		if _, _, err := store.CreateUser(ctx, name, "", redact.Secret{}); err != nil {
			log.Fatal(err)
		}
		if _, err := store.Grant(ctx, "user:"+name, authz.Viewer, scope); err != nil {
			log.Fatal(err)
		}
	}
	for range 1000 {
		if _, err := store.CreateAPIKey(ctx, "user:alice", "", authz.Viewer, scope, time.Time{}, nil); err != nil {
			log.Fatal(err)
		}
	}
	nk, err := store.CreateAPIKey(ctx, "user:alice", "", authz.Developer, scope, time.Time{}, nil)
	if err != nil {
		log.Fatal(err)
	}
	src := netip.MustParseAddr("192.0.2.1")
	key := nk.Key.Reveal()

	fmt.Printf("%-34s %14s %30s %10s\n", "per request", "penstock", "peer", "ratio")
	sess := measure(func() { _ = store.Principal("user:alice") })
	fmt.Printf("%-34s %14s\n", "principal of a user (1,001 users)", sess)
	kv := measure(func() {
		if _, err := store.VerifyAPIKey(key, src); err != nil {
			log.Fatal(err)
		}
	})
	sh := measure(func() { _ = sha256.Sum256([]byte(key)) })
	fmt.Printf("%-34s %14s %30s %9.1fx\n", "API key verification", kv, sh.String()+" (bare SHA-256)", float64(kv)/float64(sh))

	p := authz.Principal{Kind: "user", Name: "alice", Bindings: []authz.Binding{
		{Role: authz.Viewer, Scope: authz.Scope{Tenant: "globex"}},
		{Role: authz.Operator, Scope: authz.Scope{Tenant: "acme", Environment: "staging"}},
		{Role: authz.Developer, Scope: scope},
	}}
	res := authz.Scope{Tenant: "acme", Environment: "production", Application: "billing"}
	dec := measure(func() {
		if !authz.Decide(p, authz.SecretWrite, res).Allow {
			log.Fatal("denied")
		}
	})
	table := map[string]bool{"developer/acme/production/secret.write": true}
	mp := measure(func() { _ = table["developer/acme/production/secret.write"] })
	fmt.Printf("%-34s %14s %30s %9.1fx\n", "authorization decision", dec, mp.String()+" (map lookup)", float64(dec)/float64(mp))

	pw = redact.NewSecret("Correct-Horse-Battery-7")
	hash, _ := identity.HashPassword(pw, identity.DefaultArgon2)
	ar := measureN(5, func() {
		if ok, _, _ := identity.VerifyPassword(pw, hash, identity.DefaultArgon2); !ok {
			log.Fatal("argon2")
		}
	})
	bh, _ := bcrypt.GenerateFromPassword([]byte(pw.Reveal()), 12)
	bc := measureN(5, func() { _ = bcrypt.CompareHashAndPassword(bh, []byte(pw.Reveal())) })
	fmt.Printf("%-34s %14s %30s %9.2fx\n", fmt.Sprintf("login: argon2id m=%dMiB t=%d p=%d", identity.DefaultArgon2.Memory>>10, identity.DefaultArgon2.Time, identity.DefaultArgon2.Threads),
		ar.Round(time.Millisecond), bc.Round(time.Millisecond).String()+" (bcrypt cost 12)", float64(ar)/float64(bc))
}

// measure returns the mean time of f over about a second.
func measure(f func()) time.Duration {
	for range 1000 {
		f()
	}
	n, start := 0, time.Now()
	for time.Since(start) < time.Second {
		for range 1000 {
			f()
		}
		n += 1000
	}
	return time.Since(start) / time.Duration(n)
}

func measureN(n int, f func()) time.Duration {
	f()
	start := time.Now()
	for range n {
		f()
	}
	return time.Since(start) / time.Duration(n)
}
