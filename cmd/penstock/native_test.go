package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/penstock/penstock/internal/testenv"
)

// freePort returns a loopback address no one listens on: the native listeners must keep their
// ports across restarts for clients to find them again.
func freePort(t *testing.T) string {
	t.Helper()
	return testenv.FreeAddr(t)
}

// prober logs in over one native protocol again and again, as a client whose server
// restarts would, and counts the outcomes.
type prober struct {
	proto        string
	try          func() error
	ok           atomic.Int64
	mu           sync.Mutex
	unauthorized []string // "not authorized" answers: a client takes them for a revoked key
	other        map[string]int
}

func (pr *prober) run(stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		default:
		}
		err := pr.try()
		pr.mu.Lock()
		switch {
		case err == nil:
			pr.ok.Add(1)
		case errors.Is(err, nats.ErrAuthorization) || strings.Contains(err.Error(), "not authorized"):
			pr.unauthorized = append(pr.unauthorized, err.Error())
		default:
			pr.other[err.Error()]++
		}
		pr.mu.Unlock()
		// Pacing, not waiting for anything: a refused port answers at once, and every login
		// that succeeds is audited.
		if err == nil {
			time.Sleep(50 * time.Millisecond)
		} else {
			time.Sleep(2 * time.Millisecond)
		}
	}
}

// A client with a valid key that keeps logging in over NATS, WebSocket or MQTT while the
// server stops and starts again never reads "not authorized": not while the engine's listeners
// are open before the fabric decides logins, nor while they are still open after it stopped
// deciding them. A nats.go client that reconnects through the restarts is never given up.
func TestNativeLoginsAcrossRestarts(t *testing.T) {
	natsAddr, mqttAddr, wsAddr := freePort(t), freePort(t), freePort(t)
	env := append(append([]string{}, fabricEnv...), "PENSTOCK_FABRIC_NATS_LISTEN="+natsAddr,
		"PENSTOCK_FABRIC_MQTT_LISTEN="+mqttAddr, "PENSTOCK_FABRIC_WEBSOCKET_LISTEN="+wsAddr)
	dir := t.TempDir()
	p := serveEnv(t, dir, env)
	key := setupQueue(t, p)
	tc := &tls.Config{RootCAs: p.caPool(), ServerName: "localhost", MinVersion: tls.VersionTLS12}
	user := "acme/production"

	natsLogin := func(url string) func() error {
		return func() error {
			nc, err := nats.Connect(url, nats.UserInfo(user, key), nats.Secure(tc), nats.Timeout(5*time.Second),
				nats.MaxReconnects(0))
			if err == nil {
				nc.Close()
			}
			return err
		}
	}
	probers := []*prober{
		{proto: "nats", try: natsLogin("tls://" + natsAddr)},
		{proto: "websocket", try: natsLogin("wss://" + wsAddr)},
		{proto: "mqtt", try: func() error {
			switch rc, err := testenv.MQTTConnack(mqttAddr, tc, "probe", user, key, 5*time.Second); {
			case err != nil:
				return err
			case rc != 0:
				return fmt.Errorf("mqtt CONNACK %d: not authorized", rc)
			}
			return nil
		}},
	}

	// One long-lived client that reconnects as fast as it can.
	var reconnects atomic.Int64
	gaveUp := make(chan error, 1)
	var asyncMu sync.Mutex
	var asyncErrs []string
	nc, err := nats.Connect("tls://"+natsAddr, nats.UserInfo(user, key), nats.Secure(tc),
		nats.MaxReconnects(-1), nats.ReconnectWait(10*time.Millisecond), nats.ReconnectJitter(0, 0),
		nats.ReconnectHandler(func(*nats.Conn) { reconnects.Add(1) }),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			asyncMu.Lock()
			asyncErrs = append(asyncErrs, err.Error())
			asyncMu.Unlock()
		}),
		nats.ClosedHandler(func(c *nats.Conn) { gaveUp <- c.LastError() }))
	if err != nil {
		t.Fatalf("native connect: %v", err)
	}
	defer nc.Close()

	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, pr := range probers {
		pr.other = map[string]int{}
		wg.Go(func() { pr.run(stop) })
	}
	const restarts = 3
	for i := range restarts {
		before := make([]int64, len(probers))
		for j, pr := range probers {
			before[j] = pr.ok.Load()
		}
		r0 := reconnects.Load()
		if err := p.stop(syscall.SIGTERM); err != nil {
			t.Fatalf("stop %d: %v\n%s", i, err, p.logs.String())
		}
		p = serveEnv(t, dir, env)
		// Positive barrier: every protocol logged in again and the long-lived client is back.
		deadline := time.Now().Add(60 * time.Second)
		for {
			back := nc.IsClosed() || reconnects.Load() > r0 && nc.IsConnected()
			for j, pr := range probers {
				back = back && pr.ok.Load() > before[j]
			}
			if back {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("restart %d: not every client logged in again within 60s\n%s", i, p.logs.String())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	close(stop)
	wg.Wait()
	for _, pr := range probers {
		pr.mu.Lock()
		if len(pr.unauthorized) > 0 {
			t.Errorf("%s: %d logins with a valid key refused as unauthorized across %d restarts, e.g. %s",
				pr.proto, len(pr.unauthorized), restarts, pr.unauthorized[0])
		}
		failed := 0
		for _, n := range pr.other {
			failed += n
		}
		t.Logf("%s: %d logins let in, %d failed as the server was away (refused, closed unanswered or timed out)", pr.proto, pr.ok.Load(), failed)
		pr.mu.Unlock()
	}
	asyncMu.Lock()
	for _, e := range asyncErrs {
		if strings.Contains(strings.ToLower(e), "authori") {
			t.Errorf("reconnecting client was told: %s", e)
		}
	}
	asyncMu.Unlock()
	select {
	case err := <-gaveUp:
		t.Errorf("the reconnecting client gave up: %v", err)
	default:
		if !nc.IsConnected() {
			t.Errorf("reconnecting client not connected at the end: %v", nc.Status())
		}
	}
}
