package engine_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/datadir"
	"github.com/penstock/penstock/internal/engine"
	"github.com/penstock/penstock/internal/redact"
	"github.com/penstock/penstock/internal/testenv"
)

func storeKey(t *testing.T) redact.Secret {
	t.Helper()
	k, err := datadir.LoadOrCreateKey(filepath.Join(t.TempDir(), "store.key"))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func openEmbedded(t *testing.T, dir string, key redact.Secret, mutate func(*config.Engine)) *engine.Engine {
	t.Helper()
	cfg := config.Default().Engine
	if mutate != nil {
		mutate(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e, err := engine.Open(ctx, engine.Options{DataDir: dir, Config: cfg, StoreKey: key})
	if err != nil {
		t.Fatalf("open embedded engine: %v", err)
	}
	return e
}

func openExternal(t *testing.T) *engine.Engine {
	t.Helper()
	testenv.RequireNATS(t)
	cfg := config.Default().Engine
	cfg.NATSURL = testenv.NATSURL
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e, err := engine.Open(ctx, engine.Options{Config: cfg})
	if err != nil {
		t.Fatalf("open external engine: %v", err)
	}
	return e
}

// openOperatorMode connects to a nats-server in operator mode started for the test, as
// Penstock with the operator's signing key and a system account user.
func openOperatorMode(t *testing.T, srv *testenv.OperatorNATS) *engine.Engine {
	t.Helper()
	cfg := config.Default().Engine
	cfg.NATSURL = srv.URL
	cfg.NATSOperatorKeyFile = srv.OperatorKeyFile
	cfg.NATSSystemCredsFile = srv.SystemCredsFile
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e, err := engine.Open(ctx, engine.Options{Config: cfg})
	if err != nil {
		t.Fatalf("open operator-mode engine: %v\n%s", err, srv.Log())
	}
	return e
}

func uniqueName(t *testing.T, prefix string) string {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return prefix + "_" + hex.EncodeToString(b)
}

// TestEngineModes runs the same checks against the embedded engine and the machine's NATS.
func TestEngineModes(t *testing.T) {
	modes := map[string]func(t *testing.T) *engine.Engine{
		"embedded": func(t *testing.T) *engine.Engine { return openEmbedded(t, t.TempDir(), storeKey(t), nil) },
		"external": openExternal,
		"operator": func(t *testing.T) *engine.Engine { return openOperatorMode(t, testenv.StartOperatorNATS(t)) },
	}
	for name, open := range modes {
		t.Run(name, func(t *testing.T) {
			e := open(t)
			defer e.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()

			if err := e.Ready(ctx); err != nil {
				t.Fatalf("ready: %v", err)
			}
			plat, err := e.Account(ctx, engine.PlatformAccount)
			if err != nil {
				t.Fatal(err)
			}

			t.Run("kv", func(t *testing.T) {
				bucket := uniqueName(t, "test_kv")
				kv, err := plat.KeyValue(ctx, jetstream.KeyValueConfig{Bucket: bucket})
				if err != nil {
					t.Fatal(err)
				}
				defer plat.JetStream().DeleteKeyValue(context.Background(), bucket)
				if _, err := kv.Put(ctx, "a.b", []byte("v1")); err != nil {
					t.Fatal(err)
				}
				got, err := kv.Get(ctx, "a.b")
				if err != nil || string(got.Value()) != "v1" {
					t.Fatalf("get = %v, %v; want v1", got, err)
				}
				st, _ := kv.Status(ctx)
				if info := st.(*jetstream.KeyValueBucketStatus).StreamInfo(); info.Config.Storage != jetstream.FileStorage {
					t.Fatalf("storage = %v, want file", info.Config.Storage)
				}
				if _, err := kv.Get(ctx, "missing"); !errors.Is(err, jetstream.ErrKeyNotFound) {
					t.Fatalf("missing key: %v", err)
				}
			})

			t.Run("stream", func(t *testing.T) {
				name := uniqueName(t, "TEST_STREAM")
				s, err := plat.Stream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{name + ".>"}})
				if err != nil {
					t.Fatal(err)
				}
				defer plat.JetStream().DeleteStream(context.Background(), name)
				for i := range 10 {
					if _, err := plat.JetStream().Publish(ctx, name+".x", []byte(fmt.Sprint(i))); err != nil {
						t.Fatal(err)
					}
				}
				info, err := s.Info(ctx)
				if err != nil || info.State.Msgs != 10 {
					t.Fatalf("info = %+v, %v; want 10 messages", info, err)
				}
				m, err := s.GetMsg(ctx, 7)
				if err != nil || string(m.Data) != "6" {
					t.Fatalf("msg 7 = %v, %v", m, err)
				}
			})

			t.Run("bad account names", func(t *testing.T) {
				for _, bad := range []string{"", "Platform", "a.b", "a b", "-x", strings.Repeat("a", 129), "a>"} {
					if _, err := e.Account(ctx, bad); err == nil || !strings.Contains(err.Error(), "account name") {
						t.Errorf("Account(%q) = %v, want an account name error", bad, err)
					}
				}
			})
		})
	}
}

func TestExternalOffersOnlyItsAccount(t *testing.T) {
	e := openExternal(t)
	defer e.Close()
	if _, err := e.Account(context.Background(), "tenant-a"); !errors.Is(err, engine.ErrAccountUnavailable) {
		t.Fatalf("tenant account on external engine: %v, want ErrAccountUnavailable", err)
	}
}

func TestExternalUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cfg := config.Default().Engine
	cfg.NATSURL = "nats://" + addr
	cfg.NATSPassword = redact.NewSecret("hunter2-external")
	cfg.NATSUser = "svc"
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = engine.Open(ctx, engine.Options{Config: cfg})
	if err == nil || !strings.Contains(err.Error(), addr) {
		t.Fatalf("open unreachable engine: %v, want an error naming %s", err, addr)
	}
	if strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("error leaks the password: %v", err)
	}
}

// Accounts of the embedded engine are separate namespaces: the same stream name in two
// accounts holds different data, and neither sees the other's subjects.
func TestEmbeddedAccountsAreIsolated(t *testing.T) {
	e := openEmbedded(t, t.TempDir(), storeKey(t), nil)
	defer e.Close()
	checkAccountsIsolated(t, e)
}

// The same holds on a NATS deployment Penstock does not run, in operator mode.
func TestOperatorAccountsAreIsolated(t *testing.T) {
	e := openOperatorMode(t, testenv.StartOperatorNATS(t))
	defer e.Close()
	checkAccountsIsolated(t, e)
}

func checkAccountsIsolated(t *testing.T, e *engine.Engine) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, err := e.Account(ctx, "tenant-a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := e.Account(ctx, "tenant-b")
	if err != nil {
		t.Fatal(err)
	}
	for _, acc := range []*engine.Account{a, b} {
		if _, err := acc.Stream(ctx, jetstream.StreamConfig{Name: "ORDERS", Subjects: []string{"orders.>"}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.JetStream().Publish(ctx, "orders.new", []byte("from a")); err != nil {
		t.Fatal(err)
	}
	sub, err := b.Conn().SubscribeSync(">")
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Conn().Publish("orders.core", []byte("core from a")); err != nil {
		t.Fatal(err)
	}
	a.Conn().Flush()
	if m, err := sub.NextMsg(200 * time.Millisecond); err == nil {
		t.Fatalf("account b saw %q on %s", m.Data, m.Subject)
	}
	sub.Unsubscribe()
	sb, _ := b.JetStream().Stream(ctx, "ORDERS")
	info, _ := sb.Info(ctx)
	if info.State.Msgs != 0 {
		t.Fatalf("account b's ORDERS holds %d messages, want 0", info.State.Msgs)
	}
	sa, _ := a.JetStream().Stream(ctx, "ORDERS")
	info, _ = sa.Info(ctx)
	if info.State.Msgs != 2 { // the JetStream publish and the core publish
		t.Fatalf("account a's ORDERS holds %d messages, want 2", info.State.Msgs)
	}
}

// State survives a clean restart, including accounts created after the first start, and
// the store on disk is encrypted: the plain payload is nowhere in it.
func TestEmbeddedRestartAndStoreEncryption(t *testing.T) {
	dir, key := t.TempDir(), storeKey(t)
	const marker = "plaintext-marker-5f1c"
	e := openEmbedded(t, dir, key, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	acc, err := e.Account(ctx, "tenant-x")
	if err != nil {
		t.Fatal(err)
	}
	kv, err := acc.KeyValue(ctx, jetstream.KeyValueConfig{Bucket: "state"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "k", []byte(marker)); err != nil {
		t.Fatal(err)
	}
	e.Close()
	e.Close() // idempotent

	err = filepath.WalkDir(filepath.Join(dir, "jetstream"), func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if strings.Contains(string(b), marker) {
			return fmt.Errorf("%s holds the payload in plain text", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	e = openEmbedded(t, dir, key, nil)
	defer e.Close()
	acc, err = e.Account(ctx, "tenant-x")
	if err != nil {
		t.Fatal(err)
	}
	kv, err = acc.JetStream().KeyValue(ctx, "state")
	if err != nil {
		t.Fatalf("bucket after restart: %v", err)
	}
	got, err := kv.Get(ctx, "k")
	if err != nil || string(got.Value()) != marker {
		t.Fatalf("after restart: %v, %v", got, err)
	}
}

// The durability the running server reports is the configured one, read back from the
// server, not from Penstock's own configuration.
func TestDurabilityIsWhatTheServerRuns(t *testing.T) {
	for sync, want := range map[string]string{"always": "always", "1s": "1s"} {
		e := openEmbedded(t, t.TempDir(), storeKey(t), func(c *config.Engine) { c.SyncInterval = sync })
		if got := e.Durability(); got != want {
			t.Errorf("sync_interval %s: server runs %s", sync, got)
		}
		e.Close()
	}
}

func TestClosedEngineRefusesWork(t *testing.T) {
	e := openEmbedded(t, t.TempDir(), storeKey(t), nil)
	e.Close()
	ctx := context.Background()
	if _, err := e.Account(ctx, engine.PlatformAccount); !errors.Is(err, engine.ErrClosed) {
		t.Fatalf("Account after Close: %v", err)
	}
	if err := e.Ready(ctx); !errors.Is(err, engine.ErrClosed) {
		t.Fatalf("Ready after Close: %v", err)
	}
}

func TestEmbeddedWrongStoreKeyFails(t *testing.T) {
	dir := t.TempDir()
	e := openEmbedded(t, dir, storeKey(t), nil)
	ctx := context.Background()
	acc, _ := e.Account(ctx, engine.PlatformAccount)
	kv, err := acc.KeyValue(ctx, jetstream.KeyValueConfig{Bucket: "secrets"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	e.Close()

	// The engine must refuse to open (or at least to read) a store written with another key.
	cfg := config.Default().Engine
	e, err = engine.Open(ctx, engine.Options{DataDir: dir, Config: cfg, StoreKey: storeKey(t)})
	if err == nil {
		defer e.Close()
		acc, _ = e.Account(ctx, engine.PlatformAccount)
		if kv, err := acc.JetStream().KeyValue(ctx, "secrets"); err == nil {
			if v, err := kv.Get(ctx, "k"); err == nil {
				t.Fatalf("read %q with another store key", v.Value())
			}
		}
	}
}

// The client port is closed unless configured; when open, only the engine token binds a
// connection, and only to an account that exists.
func TestEmbeddedClientListen(t *testing.T) {
	dir := t.TempDir()
	closed := openEmbedded(t, dir, storeKey(t), nil)
	if u := closed.ClientURL(); u != "" {
		t.Fatalf("client URL %q without engine.client_listen", u)
	}
	closed.Close()

	dir = t.TempDir()
	e := openEmbedded(t, dir, storeKey(t), func(c *config.Engine) { c.ClientListen = "127.0.0.1:0" })
	defer e.Close()
	url := e.ClientURL()
	if !strings.HasPrefix(url, "nats://127.0.0.1:") {
		t.Fatalf("client URL = %q", url)
	}
	token, err := datadir.LoadOrCreateKey(filepath.Join(dir, engine.TokenFile))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Account(context.Background(), "tenant-a"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, user, pass string
		ok               bool
	}{
		{"no credentials", "", "", false},
		{"wrong token", "platform", strings.Repeat("0", 64), false},
		{"unknown account", "nobody", token.Reveal(), false},
		{"global account", "$G", token.Reveal(), false},
		{"system account", "$SYS", token.Reveal(), false},
		{"existing tenant account over the network", "tenant-a", token.Reveal(), false},
		{"platform", "platform", token.Reveal(), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := []nats.Option{nats.Timeout(2 * time.Second)}
			if tc.user != "" {
				opts = append(opts, nats.UserInfo(tc.user, tc.pass))
			}
			nc, err := nats.Connect(url, opts...)
			if tc.ok != (err == nil) {
				t.Fatalf("connect: %v, want ok=%v", err, tc.ok)
			}
			if nc != nil {
				defer nc.Close()
				js, _ := jetstream.New(nc)
				if _, err := js.KeyValue(context.Background(), "penstock_health"); err != nil {
					t.Fatalf("platform health bucket over the client port: %v", err)
				}
			}
		})
	}
}
