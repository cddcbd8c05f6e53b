package fabric

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/penstock/penstock/internal/audit"
	"github.com/penstock/penstock/internal/authz"
	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/engine"
	"github.com/penstock/penstock/internal/identity"
	"github.com/penstock/penstock/internal/keyring/keyringtest"
	"github.com/penstock/penstock/internal/testenv"
)

var ctx = context.Background()

// memAudit records audit events in memory: the fabric's own tests look at what it reports;
// the audit log itself is tested in its package and end to end in the app.
type memAudit struct{ ch chan audit.Event }

func (m *memAudit) Append(_ context.Context, e audit.Event) (audit.Event, error) {
	select {
	case m.ch <- e:
	default:
	}
	return e, nil
}

type harness struct {
	t      *testing.T
	stack  *keyringtest.Stack
	id     *identity.Store
	fab    *Service
	audit  *memAudit
	roots  *x509.CertPool
	native engine.NativeAddrs
	dir    string
}

// open starts an embedded engine with native listeners on free loopback ports, an identity
// store with tenants acme and globex (each with application orders in production), and the
// fabric, configured by cfg (nil: the defaults).
func open(t *testing.T, change func(*config.Fabric)) *harness {
	t.Helper()
	return openEngine(t, config.Default().Engine, change)
}

// openEngine is open with the engine configured as ecfg.
func openEngine(t *testing.T, ecfg config.Engine, change func(*config.Fabric)) *harness {
	t.Helper()
	dir := t.TempDir()
	tc, roots := testenv.ServerTLS(t, dir)
	st, err := keyringtest.OpenEngine(ctx, filepath.Join(dir, "data"), ecfg, engine.Native{
		NATSListen: "127.0.0.1:0", MQTTListen: "127.0.0.1:0", WebSocketListen: "127.0.0.1:0", TLS: tc,
	})
	if err != nil {
		t.Fatal(err)
	}
	icfg := identity.DefaultConfig()
	icfg.Argon2 = identity.Argon2Params{Memory: 1 << 10, Time: 1, Threads: 1}
	ids, err := identity.Open(ctx, st.Platform, st.Keyring, icfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	for _, tn := range []string{"acme", "globex"} {
		if _, err := ids.CreateTenant(ctx, tn); err != nil {
			t.Fatal(err)
		}
		if _, err := ids.CreateApp(ctx, tn, "production", "orders"); err != nil {
			t.Fatal(err)
		}
	}
	cfg := config.Default().Fabric
	if change != nil {
		change(&cfg)
	}
	h := &harness{t: t, stack: st, id: ids, audit: &memAudit{ch: make(chan audit.Event, 1000)}, roots: roots, dir: dir}
	h.fab, err = Open(ctx, Options{Engine: st.Engine, Identity: ids, Audit: h.audit, Config: cfg,
		Registry: prometheus.NewRegistry(), SweepInterval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	h.native = st.Engine.NativeAddrs()
	t.Cleanup(func() {
		h.fab.Close()
		ids.Close()
		st.Close()
	})
	return h
}

func (h *harness) queue(tenant, name string, spec QueueSpec) Ref {
	h.t.Helper()
	r := Ref{Tenant: tenant, Environment: "production", Application: "orders", Name: name}
	if _, err := h.fab.CreateQueue(ctx, r, spec); err != nil {
		h.t.Fatal(err)
	}
	return r
}

// withConsumer makes the queue's consumer now, as its first consume would (a queue gets it
// then, on a single node that lets idle tenant-environments go), for a test that reads or
// drives it in the engine directly.
func (h *harness) withConsumer(r Ref) {
	h.t.Helper()
	ta, err := h.fab.account(ctx, r.Tenant, r.Environment)
	if err != nil {
		h.t.Fatal(err)
	}
	if _, err := h.fab.ensureConsumer(ctx, ta, r); err != nil {
		h.t.Fatal(err)
	}
}

// key creates an API key of the orders application with the given role.
func (h *harness) key(tenant string, role authz.Role) (secret, id string) {
	h.t.Helper()
	nk, err := h.id.CreateAPIKey(ctx, "app:"+tenant+"/production/orders", "test", role,
		authz.Scope{Tenant: tenant, Environment: "production", Application: "orders"}, time.Time{}, nil)
	if err != nil {
		h.t.Fatal(err)
	}
	return nk.Key.Reveal(), nk.Record.ID
}

func publish(t *testing.T, f *Service, r Ref, msgs ...Message) []Receipt {
	t.Helper()
	rec, err := f.Publish(ctx, Target{Ref: r}, msgs)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

func text(i int) Message { return Message{Data: fmt.Appendf(nil, "message %d", i)} }

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
