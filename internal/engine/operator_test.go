package engine_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/engine"
	"github.com/penstock/penstock/internal/testenv"
)

// resolverJWT asks the server's resolver, as its system user, for the account's JWT.
func resolverJWT(t *testing.T, srv *testenv.OperatorNATS, pub string) *jwt.AccountClaims {
	t.Helper()
	nc, err := nats.Connect(srv.URL, nats.UserCredentials(srv.SystemCredsFile))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	m, err := nc.Request(fmt.Sprintf("$SYS.REQ.ACCOUNT.%s.CLAIMS.LOOKUP", pub), nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Data) == 0 {
		return nil
	}
	ac, err := jwt.DecodeAccountClaims(string(m.Data))
	if err != nil {
		t.Fatal(err)
	}
	return ac
}

// Each account Penstock opens in operator mode is an account JWT in the servers' resolver,
// signed by the operator signing key, with nothing shared: no imports, no exports, tenants'
// streams on disk only and within the storage limit the fabric sets.
func TestOperatorSignsAccountsIntoTheResolver(t *testing.T) {
	srv := testenv.StartOperatorNATS(t)
	e := openOperatorMode(t, srv)
	defer e.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if !e.Operator() || e.Embedded() {
		t.Fatalf("Operator() = %v, Embedded() = %v", e.Operator(), e.Embedded())
	}
	if err := e.Ready(ctx); err != nil {
		t.Fatalf("ready: %v", err)
	}
	const quota = 1 << 20
	if err := e.SetLimits("acme-production", engine.AccountLimits{Storage: quota}); err != nil {
		t.Fatal(err)
	}
	if e.HasAccount("acme-production") {
		t.Fatal("HasAccount is true before the account was opened")
	}
	acc, err := e.Account(ctx, "acme-production")
	if err != nil {
		t.Fatal(err)
	}
	if !e.HasAccount("acme-production") {
		t.Fatal("HasAccount is false after the account was opened")
	}
	pub, err := e.NATSAccount("acme-production")
	if err != nil || !nkeys.IsValidPublicAccountKey(pub) {
		t.Fatalf("NATSAccount = %q, %v; want an account public key", pub, err)
	}
	platPub, _ := e.NATSAccount(engine.PlatformAccount)
	if platPub == pub {
		t.Fatal("the platform and a tenant share a NATS account")
	}
	ac := resolverJWT(t, srv, pub)
	if ac == nil {
		t.Fatal("the resolver has no JWT for the tenant's account")
	}
	signer, _ := srv.Signer.PublicKey()
	js := ac.Limits.JetStreamLimits
	switch {
	case ac.Issuer != signer:
		t.Errorf("issuer = %s, want the operator signing key %s", ac.Issuer, signer)
	case ac.Name != "acme-production":
		t.Errorf("name = %q", ac.Name)
	case len(ac.Imports) != 0 || len(ac.Exports) != 0 || len(ac.Mappings) != 0 || len(ac.SigningKeys) != 1:
		t.Errorf("the account shares something: imports %v, exports %v, mappings %v, signing keys %v", ac.Imports, ac.Exports, ac.Mappings, ac.SigningKeys)
	case js.DiskStorage != quota || js.MemoryStorage != 0:
		t.Errorf("jetstream limits = %+v, want disk %d and no memory", js, quota)
	}

	// The limits hold: no memory stream, and nothing stored beyond the quota.
	if _, err := acc.Stream(ctx, jetstream.StreamConfig{Name: "MEM", Subjects: []string{"mem.>"}, Storage: jetstream.MemoryStorage}); err == nil {
		t.Error("a memory stream was created in a tenant account")
	}
	if _, err := acc.Stream(ctx, jetstream.StreamConfig{Name: "BIG", Subjects: []string{"big.>"}, MaxBytes: 4 * quota}); err == nil {
		t.Error("a stream larger than the account's storage was created")
	}
	s, err := acc.Stream(ctx, jetstream.StreamConfig{Name: "Q", Subjects: []string{"q.>"}, MaxBytes: quota})
	if err != nil {
		t.Fatal(err)
	}
	payload := make([]byte, 64<<10)
	refused := false
	for range 32 {
		if _, err := acc.JetStream().Publish(ctx, "q.x", payload); err != nil {
			refused = true
			break
		}
	}
	if info, _ := s.Info(ctx); !refused && info.State.Bytes > quota {
		t.Errorf("stored %d bytes past a quota of %d", info.State.Bytes, quota)
	}
}

// Another Penstock process with the same key reaches the same accounts and their data; a
// JWT another tool changed (an export added) is put back as Penstock signs it.
func TestOperatorAccountsOutliveTheProcess(t *testing.T) {
	srv := testenv.StartOperatorNATS(t)
	e := openOperatorMode(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	acc, err := e.Account(ctx, "globex-test")
	if err != nil {
		t.Fatal(err)
	}
	kv, err := acc.KeyValue(ctx, jetstream.KeyValueConfig{Bucket: "state"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "k", []byte("kept")); err != nil {
		t.Fatal(err)
	}
	pub, _ := e.NATSAccount("globex-test")
	e.Close()

	// Another tool adds an export to the account, signed by the same operator.
	ac := resolverJWT(t, srv, pub)
	ac.Exports.Add(&jwt.Export{Name: "leak", Subject: ">", Type: jwt.Stream})
	token, err := ac.Encode(srv.Signer)
	if err != nil {
		t.Fatal(err)
	}
	srv.Push(t, token)
	if got := resolverJWT(t, srv, pub); len(got.Exports) != 1 {
		t.Fatalf("the changed JWT did not land: exports %v", got.Exports)
	}

	e2 := openOperatorMode(t, srv)
	defer e2.Close()
	if !e2.HasAccount("globex-test") || e2.HasAccount("never-made") {
		t.Fatalf("HasAccount after restart: globex-test %v, never-made %v", e2.HasAccount("globex-test"), e2.HasAccount("never-made"))
	}
	acc2, err := e2.Account(ctx, "globex-test")
	if err != nil {
		t.Fatal(err)
	}
	kv2, err := acc2.JetStream().KeyValue(ctx, "state")
	if err != nil {
		t.Fatal(err)
	}
	if v, err := kv2.Get(ctx, "k"); err != nil || string(v.Value()) != "kept" {
		t.Fatalf("after restart: %v, %v", v, err)
	}
	if got := resolverJWT(t, srv, pub); len(got.Exports) != 0 {
		t.Fatalf("the export another tool added is still there: %v", got.Exports)
	}
}

// A client of another account of the same operator (a different tenant's application, or
// anything else on that NATS deployment) sees nothing of a Penstock account's subjects.
func TestOperatorOutsideAccountSeesNothing(t *testing.T) {
	srv := testenv.StartOperatorNATS(t)
	e := openOperatorMode(t, srv)
	defer e.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	acc, err := e.Account(ctx, "initech-production")
	if err != nil {
		t.Fatal(err)
	}
	// An account of its own, signed by the same operator and pushed to the resolver: one
	// connection listens to everything, another asks.
	creds := srv.AddAccount(t, "outsider")
	out, err := nats.Connect(srv.URL, nats.UserCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	asker, err := nats.Connect(srv.URL, nats.UserCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer asker.Close()
	sub, err := out.SubscribeSync("*.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := out.Flush(); err != nil {
		t.Fatal(err)
	}
	// The tenant publishes and answers requests on svc.echo.
	if err := acc.Conn().Publish("orders.new", []byte("secret order")); err != nil {
		t.Fatal(err)
	}
	rsub, err := acc.Conn().Subscribe("svc.echo", func(m *nats.Msg) { _ = m.Respond(m.Data) })
	if err != nil {
		t.Fatal(err)
	}
	defer rsub.Unsubscribe()
	if _, err := acc.Conn().Request("svc.echo", []byte("ping"), 5*time.Second); err != nil {
		t.Fatalf("the tenant's own request: %v", err) // its subscription is live
	}
	// The outsider's request on the same subject reaches only the outsider's own listener.
	if m, err := asker.Request("svc.echo", []byte("outsider-ping"), 2*time.Second); err == nil {
		t.Fatalf("the outsider's request was answered: %q", m.Data)
	}
	// The tenant's messages went out before the outsider asked: had they crossed, they would
	// arrive before the outsider's own.
	for {
		m, err := sub.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatalf("the outsider's listener never saw its own request: %v", err)
		}
		if m.Subject == "svc.echo" && string(m.Data) == "outsider-ping" {
			break
		}
		t.Fatalf("the outsider saw %q on %s", m.Data, m.Subject)
	}
}

// A key file that is not an operator seed, missing, or readable by others is refused with an error naming the
// setting, and never with what the file holds.
func TestOperatorKeyFileRefused(t *testing.T) {
	srv := testenv.StartOperatorNATS(t)
	acct, _ := nkeys.CreateAccount()
	aseed, _ := acct.Seed()
	dir := t.TempDir()
	wrong := filepath.Join(dir, "account.nk")
	if err := os.WriteFile(wrong, aseed, 0o600); err != nil {
		t.Fatal(err)
	}
	open := filepath.Join(dir, "readable.nk")
	sseed, _ := srv.Signer.Seed()
	if err := os.WriteFile(open, sseed, 0o644); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{wrong: "not an operator nkey seed", filepath.Join(dir, "missing.nk"): "no such file",
		open: "readable by group or others"} {
		cfg := config.Default().Engine
		cfg.NATSURL, cfg.NATSOperatorKeyFile, cfg.NATSSystemCredsFile = srv.URL, path, srv.SystemCredsFile
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := engine.Open(ctx, engine.Options{Config: cfg})
		cancel()
		if err == nil || !strings.Contains(err.Error(), "engine.nats_operator_key_file") || !strings.Contains(err.Error(), want) {
			t.Fatalf("open with %s: %v, want an error naming engine.nats_operator_key_file: %s", path, err, want)
		}
		if strings.Contains(err.Error(), string(aseed)) || strings.Contains(err.Error(), string(sseed)) {
			t.Fatalf("the error shows the seed: %v", err)
		}
	}
}

// A system creds file that is not a user's .creds (a bare seed: the client would send it whole
// as its JWT), an operator key the servers do not trust, and the operator's own key on an
// operator that requires signing keys are refused at start, naming the setting and never what
// the files hold.
func TestOperatorCredentialsRefused(t *testing.T) {
	srv := testenv.StartOperatorNATS(t)
	dir := t.TempDir()
	sseed, _ := srv.Signer.Seed()
	seedAsCreds := filepath.Join(dir, "seed.creds")
	if err := os.WriteFile(seedAsCreds, sseed, 0o600); err != nil {
		t.Fatal(err)
	}
	stranger, _ := nkeys.CreateOperator()
	strangerSeed, _ := stranger.Seed()
	strangerFile := filepath.Join(dir, "stranger.nk")
	if err := os.WriteFile(strangerFile, strangerSeed, 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct{ key, creds, want string }{
		{srv.OperatorKeyFile, seedAsCreds, "engine.nats_system_creds_file " + seedAsCreds + ": not a user's .creds"},
		{srv.OperatorKeyFile, srv.OperatorKeyFile, "not a user's .creds"},
		{strangerFile, srv.SystemCredsFile, "engine.nats_operator_key_file " + strangerFile + ": key"},
		{filepath.Join(srv.Dir, "operator", engine.OperatorSeedFile), srv.SystemCredsFile, "refused"},
	}
	for _, c := range cases {
		cfg := config.Default().Engine
		cfg.NATSURL, cfg.NATSOperatorKeyFile, cfg.NATSSystemCredsFile = srv.URL, c.key, c.creds
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, err := engine.Open(ctx, engine.Options{Config: cfg})
		cancel()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("open with key %s and creds %s: %v, want %q", c.key, c.creds, err, c.want)
		}
		if strings.Contains(err.Error(), string(sseed)) || strings.Contains(err.Error(), string(strangerSeed)) {
			t.Fatalf("the error shows a seed: %v", err)
		}
	}
	if strings.Contains(srv.Log(), string(sseed)) {
		t.Fatal("the signing key's seed reached the server")
	}
}

// Limits set after an account was opened (a backup opened it first) reach its JWT; a JWT
// another tool changed in any way (an expiry, default permissions, a scope on the signing
// key, another issuer) is signed again by Penstock when it opens the account; and accounts
// whose JWTs the servers lost while Penstock runs are pushed again: the connections come back.
func TestOperatorKeepsItsAccountJWTs(t *testing.T) {
	srv := testenv.StartOperatorNATS(t)
	e := openOperatorMode(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := e.Account(ctx, "acme_production"); err != nil {
		t.Fatal(err)
	}
	if err := e.SetLimits("acme_production", engine.AccountLimits{Storage: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	pub, _ := e.NATSAccount("acme_production")
	if js := resolverJWT(t, srv, pub).Limits.JetStreamLimits; js.DiskStorage != 1<<20 {
		t.Fatalf("limits set after the account opened: disk %d, want %d", js.DiskStorage, 1<<20)
	}

	// Lost while running: the server comes back without its JWTs.
	srv.Restart(t, true)
	waitFor(t, "the account usable again after the server lost its JWTs", time.Minute, func() bool {
		if e.Ready(ctx) != nil {
			return false
		}
		acc, err := e.Account(ctx, "acme_production")
		if err == nil {
			_, err = acc.KeyValue(ctx, jetstream.KeyValueConfig{Bucket: "after"})
		}
		return err == nil
	})
	e.Close()

	signer, _ := srv.Signer.PublicKey()
	other, _ := nkeys.CreateOperator() // not trusted by the servers: only the resolver keeps it
	tampers := map[string]func(ac *jwt.AccountClaims) nkeys.KeyPair{
		"expiry": func(ac *jwt.AccountClaims) nkeys.KeyPair {
			ac.Expires = time.Now().Add(time.Hour).Unix()
			return srv.Signer
		},
		"default permissions": func(ac *jwt.AccountClaims) nkeys.KeyPair {
			ac.DefaultPermissions.Pub.Deny.Add("$JS.API.>")
			return srv.Signer
		},
		"signing key scope": func(ac *jwt.AccountClaims) nkeys.KeyPair {
			for k := range ac.SigningKeys {
				us := jwt.NewUserScope()
				us.Key = k
				us.Template.Pub.Deny.Add(">")
				ac.SigningKeys.AddScopedSigner(us)
			}
			return srv.Signer
		},
		"another issuer": func(*jwt.AccountClaims) nkeys.KeyPair { return other },
	}
	for what, tamper := range tampers {
		ac := resolverJWT(t, srv, pub)
		token, err := ac.Encode(tamper(ac))
		if err != nil {
			t.Fatal(err)
		}
		srv.Push(t, token)
		e := openOperatorMode(t, srv)
		if err := e.SetLimits("acme_production", engine.AccountLimits{Storage: 1 << 20}); err != nil {
			t.Fatal(err)
		}
		acc, err := e.Account(ctx, "acme_production")
		if err != nil {
			t.Fatalf("after %s: %v", what, err)
		}
		if _, err := acc.KeyValue(ctx, jetstream.KeyValueConfig{Bucket: "after"}); err != nil {
			t.Fatalf("after %s: %v", what, err)
		}
		got := resolverJWT(t, srv, pub)
		if got.Issuer != signer || got.Expires != 0 || got.DefaultPermissions.Pub.Deny.Contains("$JS.API.>") || len(got.SigningKeys) != 1 {
			t.Fatalf("after %s the resolver holds %+v", what, got)
		}
		for _, sc := range got.SigningKeys {
			if sc != nil {
				t.Fatalf("after %s a signing key keeps a scope: %+v", what, sc)
			}
		}
		e.Close()
	}
}
