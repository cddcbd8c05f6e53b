package engine_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/engine"
	"github.com/penstock/penstock/internal/testenv"
)

// nativeEngine opens an embedded engine with all three native listeners and returns it with
// the roots that verify its certificate.
func nativeEngine(t *testing.T, wait time.Duration) (*engine.Engine, *x509.CertPool) {
	t.Helper()
	dir := t.TempDir()
	tc, roots := testenv.ServerTLS(t, filepath.Join(dir, "tls"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e, err := engine.Open(ctx, engine.Options{DataDir: filepath.Join(dir, "data"), Config: config.Default().Engine,
		StoreKey: storeKey(t), Native: engine.Native{NATSListen: "127.0.0.1:0", MQTTListen: "127.0.0.1:0",
			WebSocketListen: "127.0.0.1:0", TLS: tc, AuthWait: wait}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	if _, err := e.Account(ctx, "tenant-a"); err != nil {
		t.Fatal(err)
	}
	return e, roots
}

// login is one native login attempt over a protocol: "nats", "websocket" or "mqtt".
func login(e *engine.Engine, roots *x509.CertPool, proto string) error {
	tc := &tls.Config{RootCAs: roots, ServerName: "localhost", MinVersion: tls.VersionTLS12}
	addrs := e.NativeAddrs()
	if proto == "mqtt" {
		switch rc, err := testenv.MQTTConnack(addrs.MQTT, tc, "c1", "tenant-a", "good", time.Minute); {
		case err != nil:
			return err
		case rc != 0:
			return fmt.Errorf("mqtt CONNACK %d: not authorized", rc)
		}
		return nil
	}
	url := "tls://" + addrs.NATS
	if proto == "websocket" {
		url = "wss://" + addrs.WebSocket
	}
	nc, err := nats.Connect(url, nats.UserInfo("tenant-a", "good"), nats.Secure(tc), nats.Timeout(time.Minute),
		nats.MaxReconnects(0))
	if err == nil {
		nc.Close()
	}
	return err
}

// refusedAsUnauthorized reports whether a login error is the answer clients take for a bad
// or revoked key (nats.go stops reconnecting after the second).
func refusedAsUnauthorized(err error) bool {
	return errors.Is(err, nats.ErrAuthorization) || strings.Contains(strings.ToLower(err.Error()), "not authori")
}

func grantAll(engine.NativeClient) (engine.NativeGrant, bool) {
	return engine.NativeGrant{Account: "n__client", DataAccount: "tenant-a", Username: "test",
		Imports: []engine.NativeImport{{Local: "orders.q.*", Remote: "orders.q.*"}},
		Publish: []string{"orders.q.*"}, Subscribe: []string{"_INBOX.>"}}, true
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", d, what)
		}
	}
}

// The native listeners open with the engine, before the fabric installs its decision, and
// stay open after it withdraws it. Logins in those windows wait for the decision and are let
// in once it comes; if the engine stops instead, their connections close without the answer
// "not authorized", which clients take for a revoked key.
func TestNativeLoginsWaitForTheDecision(t *testing.T) {
	protos := []string{"nats", "websocket", "mqtt"}
	e, roots := nativeEngine(t, time.Minute)
	errs := make([]error, len(protos))
	var wg sync.WaitGroup
	for i, p := range protos {
		wg.Go(func() { errs[i] = login(e, roots, p) })
	}
	waitFor(t, "three logins waiting for the decision", time.Minute, func() bool { return e.NativeLoginsWaiting() == 3 })
	e.SetNativeAuth(grantAll)
	wg.Wait()
	for i, p := range protos {
		if errs[i] != nil {
			t.Errorf("%s login while the decision was missing: %v", p, errs[i])
		}
	}

	// Shutdown: the decision is withdrawn, then the engine stops under waiting logins.
	e.SetNativeAuth(nil)
	for i, p := range protos {
		wg.Go(func() { errs[i] = login(e, roots, p) })
	}
	waitFor(t, "three logins waiting after the decision was withdrawn", time.Minute, func() bool { return e.NativeLoginsWaiting() == 3 })
	e.Close()
	wg.Wait()
	for i, p := range protos {
		switch {
		case errs[i] == nil:
			t.Errorf("%s login succeeded on a stopping engine", p)
		case refusedAsUnauthorized(errs[i]):
			t.Errorf("%s login on a stopping engine was refused as unauthorized: %v", p, errs[i])
		default:
			t.Logf("%s: %v", p, errs[i])
		}
	}
}

// The wait is bounded: with no decision by then, the connection closes unanswered.
func TestNativeLoginWaitIsBounded(t *testing.T) {
	e, roots := nativeEngine(t, 100*time.Millisecond)
	for _, p := range []string{"nats", "websocket", "mqtt"} {
		err := login(e, roots, p)
		if err == nil || refusedAsUnauthorized(err) {
			t.Errorf("%s login with no decision installed: %v, want a closed connection", p, err)
		}
	}
	e.SetNativeAuth(grantAll)
	if err := login(e, roots, "nats"); err != nil {
		t.Fatalf("login once the decision is installed: %v", err)
	}
}

// Listing and closing network connections runs while MQTT clients log in: the listing must
// never read a connection whose login the server is still parsing (the race detector fails
// this test if it does), must show the native clients, and must leave Penstock's own
// in-process connections alone.
func TestConnectionListingWhileClientsLogIn(t *testing.T) {
	e, roots := nativeEngine(t, time.Minute)
	e.SetNativeAuth(grantAll)
	tc := &tls.Config{RootCAs: roots, ServerName: "localhost", MinVersion: tls.VersionTLS12}
	held, err := nats.Connect("tls://"+e.NativeAddrs().NATS, nats.UserInfo("tenant-a", "good"), nats.Secure(tc),
		nats.Timeout(time.Minute), nats.MaxReconnects(0))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	heldID, err := held.GetClientID()
	if err != nil {
		t.Fatal(err)
	}

	// Two clients log in over MQTT again and again while the connections are listed, then
	// closed. A login that fails before the closing starts fails the test.
	var (
		stop, closing = make(chan struct{}), make(chan struct{})
		logins        atomic.Int64
		wg            sync.WaitGroup
		loginErr      = make(chan error, 2)
	)
	for g := range 2 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				rc, err := testenv.MQTTConnack(e.NativeAddrs().MQTT, tc, fmt.Sprintf("g%d-%d", g, i), "tenant-a", "good", time.Minute)
				select {
				case <-closing:
					continue
				default:
				}
				if err != nil || rc != 0 {
					loginErr <- fmt.Errorf("mqtt login %d: CONNACK %d, %v", i, rc, err)
					return
				}
				logins.Add(1)
			}
		})
	}
	deadline := time.Now().Add(2 * time.Minute)
	for lists := 0; lists < 100 || logins.Load() < 20; lists++ {
		if time.Now().After(deadline) {
			t.Fatalf("after 2m: %d MQTT logins, %d listings", logins.Load(), lists)
		}
		select {
		case err := <-loginErr:
			t.Fatal(err)
		default:
		}
		conns, err := e.Connections()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(conns, func(c engine.ConnStat) bool { return c.ID == heldID }) {
			t.Fatalf("the native client %d is missing from %d listed connections", heldID, len(conns))
		}
	}
	close(closing)
	if err := e.DisconnectNetwork(); err != nil {
		t.Fatal(err)
	}
	close(stop)
	wg.Wait()
	waitFor(t, "the native client closed by DisconnectNetwork", time.Minute, held.IsClosed)

	// Penstock's own connection to the tenant account stays open and answers.
	acc, err := e.Account(context.Background(), "tenant-a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := acc.JetStream().AccountInfo(context.Background()); err != nil || !acc.Conn().IsConnected() {
		t.Fatalf("in-process connection after DisconnectNetwork: connected %v, %v", acc.Conn().IsConnected(), err)
	}
}
