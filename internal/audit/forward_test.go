package audit

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/penstock/penstock/internal/redact"
	"github.com/penstock/penstock/internal/testenv"
)

type received struct {
	mu   sync.Mutex
	seqs map[uint64]int
}

func (r *received) add(seq uint64) {
	r.mu.Lock()
	r.seqs[seq]++
	r.mu.Unlock()
}

func (r *received) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.seqs)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Events reach a webhook receiver, signed, in order, through failures and across a restart of
// the forwarder, with none lost.
func TestWebhookForwardingAcrossRestart(t *testing.T) {
	l, st := openLog(t)
	secret := "hook-secret-42"
	got := &received{seqs: map[uint64]int{}}
	var failures int
	var mu sync.Mutex
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		m := hmac.New(sha256.New, []byte(secret))
		m.Write(body)
		if r.Header.Get("X-Penstock-Signature") != hex.EncodeToString(m.Sum(nil)) {
			t.Errorf("bad signature")
			w.WriteHeader(400)
			return
		}
		mu.Lock()
		fail := failures < 3
		failures++
		mu.Unlock()
		if fail {
			w.WriteHeader(503) // the receiver is down for a moment
			return
		}
		var e Event
		json.Unmarshal(body, &e)
		got.add(e.Seq)
	}))
	defer srv.Close()
	hook := &Webhook{URL: srv.URL, Secret: redact.NewSecret(secret), Client: srv.Client()}

	appendN(t, l, 10)
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { l.Forward(ctx, hook); close(done) }()
	waitFor(t, "the first 10 events", func() bool { return got.count() == 10 })
	stop()
	<-done

	appendN(t, l, 5) // while nothing forwards
	l2, err := Open(context.Background(), Options{Platform: st.Platform, Keyring: st.Keyring})
	if err != nil {
		t.Fatal(err)
	}
	ctx2, stop2 := context.WithCancel(context.Background())
	done2 := make(chan struct{})
	go func() { l2.Forward(ctx2, hook); close(done2) }()
	waitFor(t, "the 5 written while stopped", func() bool { return got.count() == 15 })
	stop2()
	<-done2
}

// Events reach a syslog-over-TLS listener as RFC 5424 messages with octet-counted framing.
func TestSyslogForwarding(t *testing.T) {
	l, _ := openLog(t)
	dir := t.TempDir()
	cert := testenv.WriteCert(t, filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem"), "syslog")
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem"))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var msgs []string
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					lenStr, err := r.ReadString(' ')
					if err != nil {
						return
					}
					n, _ := strconv.Atoi(strings.TrimSpace(lenStr))
					buf := make([]byte, n)
					if _, err := io.ReadFull(r, buf); err != nil {
						return
					}
					mu.Lock()
					msgs = append(msgs, string(buf))
					mu.Unlock()
				}
			}(c)
		}
	}()
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	sink := &Syslog{Addr: ln.Addr().String(), TLS: &tls.Config{RootCAs: pool, ServerName: "localhost"}}
	defer sink.Close()
	appendN(t, l, 6)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go l.Forward(ctx, sink)
	waitFor(t, "6 syslog messages", func() bool { mu.Lock(); defer mu.Unlock(); return len(msgs) >= 6 })
	mu.Lock()
	defer mu.Unlock()
	for _, m := range msgs {
		if !strings.HasPrefix(m, "<85>1 ") || !strings.Contains(m, " penstock - secret.write [penstock@32473 seq=\"") || !strings.Contains(m, `"action":"secret.write"`) {
			t.Fatalf("not an RFC 5424 audit message: %q", m)
		}
	}
}
