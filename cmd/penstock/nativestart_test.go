package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// freePort returns a loopback address no one listens on now.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// A native client with a valid key never hears "authorization violation" from a server that
// is starting or stopping: while the fabric cannot answer yet (or no longer), its login waits
// or its connection is closed, so nats.go keeps reconnecting instead of giving the key up.
func TestNativeLoginsDuringStartAndStop(t *testing.T) {
	dir := t.TempDir()
	addr := freePort(t)
	env := append(append([]string{}, fabricEnv...), "PENSTOCK_FABRIC_NATS_LISTEN="+addr)
	p := serveEnv(t, dir, env)
	key := setupQueue(t, p)
	pool := p.caPool()
	if err := p.stop(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	var authErrs []string
	var connected int
	stop := make(chan struct{})
	var wg sync.WaitGroup
	// New logins from before the server starts until after it serves, and across a stop.
	for w := range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				nc, err := nats.Connect("tls://"+addr, nats.UserInfo("acme/production", key),
					nats.Secure(&tls.Config{RootCAs: pool, ServerName: "localhost"}), nats.MaxReconnects(0),
					nats.Timeout(10*time.Second), nats.Name(fmt.Sprint("probe-", w)))
				mu.Lock()
				switch {
				case errors.Is(err, nats.ErrAuthorization):
					authErrs = append(authErrs, err.Error())
				case err == nil:
					connected++
				}
				mu.Unlock()
				if nc != nil {
					nc.Close()
				}
				time.Sleep(5 * time.Millisecond) // a client's pace; the server is not waited on here
			}
		})
	}
	waitConnected := func(n int) {
		deadline := time.Now().Add(60 * time.Second)
		for {
			mu.Lock()
			c := connected
			mu.Unlock()
			if c >= n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("only %d logins succeeded", c)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	for range 3 {
		p = serveEnv(t, dir, env)
		mu.Lock()
		base := connected
		mu.Unlock()
		waitConnected(base + 20)
		if err := p.stop(syscall.SIGTERM); err != nil {
			t.Fatalf("stop: %v", err)
		}
	}
	close(stop)
	wg.Wait()
	if len(authErrs) > 0 {
		t.Fatalf("%d logins with a valid key were refused as unauthorized during start or stop, e.g. %s", len(authErrs), authErrs[0])
	}
}
