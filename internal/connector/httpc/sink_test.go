package httpc

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/penstock/penstock/internal/connector"
	"github.com/penstock/penstock/internal/connector/conformance"
	"github.com/penstock/penstock/internal/egress"
)

// endpoint is an HTTP server that can be restarted on the same address.
type endpoint struct {
	mu   sync.Mutex
	addr string
	srv  *http.Server
	ids  []int
	// status, if set, answers every request.
	status int
}

func (e *endpoint) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer good-token" {
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.status != 0 {
		w.Header().Set("Retry-After", "2")
		w.WriteHeader(e.status)
		return
	}
	var recs []map[string]any
	if err := json.NewDecoder(r.Body).Decode(&recs); err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	for _, rec := range recs {
		e.ids = append(e.ids, int(rec["id"].(float64)))
	}
}

func (e *endpoint) start(t *testing.T) {
	t.Helper()
	addr := e.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var ln net.Listener
	var err error
	for range 500 { // the old socket may linger a moment
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	e.addr = ln.Addr().String()
	e.srv = &http.Server{Handler: e}
	go e.srv.Serve(ln)
}

func (e *endpoint) close() {
	e.mu.Lock()
	srv := e.srv
	e.mu.Unlock()
	srv.Close()
}

func TestConformance(t *testing.T) {
	e := &endpoint{}
	e.start(t)
	defer func() { e.close() }()
	res := conformance.Resources(conformance.Secrets{"good": "good-token", "bad": "wrong"}, "")
	sink := func(token string) func(connector.Resources) connector.Sink {
		return func(res connector.Resources) connector.Sink {
			s, _, err := Plugin.Sink("sink", map[string]any{"url": "http://" + e.addr + "/in", "auth": map[string]any{"type": "bearer", "token": "${secret:" + token + "}"}}, res)
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
	}
	conformance.RunSink(t, conformance.Sink{
		New: sink("good"),
		Stored: func(*testing.T) []int {
			e.mu.Lock()
			defer e.mu.Unlock()
			return append([]int(nil), e.ids...)
		},
		Restart: func(t *testing.T) {
			e.close()
			e.start(t)
		},
		Bad:     sink("bad"),
		BadWant: "401 Unauthorized",
	}, res)
}

func TestRetryAfterAndPermanentErrors(t *testing.T) {
	e := &endpoint{status: http.StatusTooManyRequests}
	e.start(t)
	defer e.close()
	res := conformance.Resources(conformance.Secrets{"good": "good-token"}, "")
	s, _, err := Plugin.Sink("sink", map[string]any{"url": "http://" + e.addr + "/in?batch=abc", "auth": map[string]any{"type": "bearer", "token": "${secret:good}"}}, res)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := s.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	err = s.Write(ctx, []connector.Record{{"id": 1}})
	var retry *connector.RetryError
	if !errors.As(err, &retry) || retry.After != 2*time.Second || strings.Contains(err.Error(), "abc") {
		t.Fatalf("429: %v", err)
	}
	e.mu.Lock()
	e.status = http.StatusUnprocessableEntity
	e.mu.Unlock()
	err = s.Write(ctx, []connector.Record{{"id": 1}, {"id": 2}})
	var bad connector.RecordErrors
	if !errors.As(err, &bad) || len(bad) != 2 {
		t.Fatalf("422: %v", err)
	}
}

func TestSinkSettings(t *testing.T) {
	res := conformance.Resources(nil, "")
	for _, c := range []struct {
		cfg  map[string]any
		want string
	}{
		{map[string]any{"url": "ftp://x.example/"}, "sink.url: http or https"},
		{map[string]any{"url": "https://u:p@x.example/"}, "sink.url: a password in the URL"},
		{map[string]any{"url": "https://x.example/", "headers": map[string]any{"Authorization": "Bearer x"}}, "sink.headers.Authorization"},
		{map[string]any{"url": "https://x.example/", "auth": map[string]any{"type": "bearer", "token": "literal"}}, "sink.auth.token: a literal credential"},
		{map[string]any{"url": "https://x.example/", "auth": map[string]any{"type": "bearer"}}, "sink.auth.token: required"},
	} {
		if _, _, err := Plugin.Sink("sink", c.cfg, res); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want %q", c.cfg, err, c.want)
		}
	}
	// The dialer is the only way out: a private address is refused at connect.
	s, _, err := Plugin.Sink("sink", map[string]any{"url": "http://10.255.255.1/in"}, connector.Resources{Dialer: &egress.Dialer{Policy: egress.Policy{Tenant: "acme"}}})
	if err != nil {
		t.Fatal(err)
	}
	s.Connect(context.Background())
	if err := s.Write(context.Background(), []connector.Record{{"id": 1}}); !errors.Is(err, egress.ErrDenied) {
		t.Fatalf("private address: %v", err)
	}
}
