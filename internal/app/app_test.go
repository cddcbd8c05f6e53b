package app

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/penstock/penstock/internal/certs"
	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/keyring"
	"github.com/penstock/penstock/internal/redact"
	"github.com/penstock/penstock/internal/testenv"
)

type testApp struct {
	*App
	admin, adminPassword, adminTOTP string // the administrator's session, once set up
	done                            chan error
	cancel                          context.CancelFunc
	logs                            *testenv.LogBuffer
	pool                            *x509.CertPool
	stop                            func()
}

// startApp runs a real App on random loopback ports with a fresh data directory.
func startApp(t testing.TB, mutate func(*config.Config)) *testApp {
	t.Helper()
	return startAppWith(t, mutate, nil)
}

// startAppWith also lets the test put its own routes in front of the API's, inside the
// handler tracking that shutdown waits for.
func startAppWith(t testing.TB, mutate func(*config.Config), routes func(api http.Handler) http.Handler) *testApp {
	t.Helper()
	return startAppOpts(t, mutate, routes)
}

// startAppOpts is startAppWith with options for New.
func startAppOpts(t testing.TB, mutate func(*config.Config), routes func(api http.Handler) http.Handler, opts ...Option) *testApp {
	t.Helper()
	cfg := config.Default()
	cfg.DataDir = t.TempDir()
	cfg.API.Listen = "127.0.0.1:0"
	cfg.Metrics.Listen = "127.0.0.1:0"
	cfg.API.ShutdownTimeout = 5 * time.Second
	cfg.Identity.Argon2MemoryKiB, cfg.Identity.Argon2Time, cfg.Identity.Argon2Threads = 19<<10, 1, 1 // the cheapest allowed: tests log in often
	if mutate != nil {
		mutate(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("test config: %v", err)
	}
	logs := &testenv.LogBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithCancel(context.Background())
	a, err := New(ctx, cfg, log, "test", opts...)
	if err != nil {
		cancel()
		t.Fatalf("new app: %v", err)
	}
	if routes != nil {
		a.apiSrv.Handler = a.track(routes(a.apiSrv.Handler))
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var once sync.Once
	ta := &testApp{App: a, logs: logs, done: done, cancel: cancel}
	ta.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("run: %v", err)
			}
		})
	}
	t.Cleanup(ta.stop)
	if a.certs.Internal() {
		pem, err := os.ReadFile(filepath.Join(cfg.DataDir, certs.CACertFile))
		if err != nil {
			t.Fatal(err)
		}
		ta.pool = x509.NewCertPool()
		ta.pool.AppendCertsFromPEM(pem)
	}
	return ta
}

// client returns an HTTPS client trusting the app's CA that dials from the loopback address src.
func (ta *testApp) client(src string, tc *tls.Config) *http.Client {
	if tc == nil {
		tc = &tls.Config{}
	}
	tc.RootCAs = ta.pool
	d := &net.Dialer{Timeout: 5 * time.Second}
	if src != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
	}
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			DialContext:       d.DialContext,
			TLSClientConfig:   tc,
			DisableKeepAlives: true,
			ForceAttemptHTTP2: true,
		},
	}
}

func (ta *testApp) url(path string) string { return "https://" + ta.APIAddr() + path }

type apiError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func do(t testing.TB, c *http.Client, req *http.Request) (int, []byte) {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func get(t *testing.T, c *http.Client, url string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	return do(t, c, req)
}

func metrics(t *testing.T, ta *testApp) string {
	t.Helper()
	resp, err := http.Get("http://" + ta.MetricsAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// metricValue reads one series' value from a Prometheus text exposition.
func metricValue(t *testing.T, exposition, series string) float64 {
	t.Helper()
	for _, line := range strings.Split(exposition, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	t.Fatalf("series %s not exported", series)
	return 0
}

func TestHealthReadyAndMetrics(t *testing.T) {
	ta := startApp(t, nil)
	c := ta.client("", nil)

	for path, want := range map[string]string{"/healthz": "ok", "/readyz": "ready"} {
		status, body := get(t, c, ta.url(path))
		var out struct{ Status string }
		if err := json.Unmarshal(body, &out); status != 200 || err != nil || out.Status != want {
			t.Errorf("%s = %d %s, want 200 %q", path, status, body, want)
		}
	}
	status, body := get(t, c, ta.url("/no/such/route"))
	var e apiError
	if json.Unmarshal(body, &e); status != 404 || e.Code != "not_found" {
		t.Errorf("unknown route = %d %s", status, body)
	}
	req, _ := http.NewRequest(http.MethodDelete, ta.url("/healthz"), nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if json.Unmarshal(body, &e); resp.StatusCode != 405 || e.Code != "method_not_allowed" || !strings.Contains(resp.Header.Get("Allow"), "GET") {
		t.Errorf("DELETE /healthz = %d %s (Allow %q)", resp.StatusCode, body, resp.Header.Get("Allow"))
	}
	if status, _ := get(t, c, ta.url("/metrics")); status != 404 {
		t.Errorf("/metrics on the API listener = %d, want 404", status)
	}
	m := metrics(t, ta)
	for _, want := range []string{
		`penstock_http_requests_total{code="200",route="GET /healthz"} 1`,
		`penstock_http_requests_total{code="200",route="GET /readyz"} 1`,
		`penstock_http_requests_total{code="404",route="unmatched"} 2`,
		`penstock_http_requests_total{code="405",route="unmatched"} 1`,
		`penstock_edge_rejected_total{reason="conn_rate"} 0`,
		"go_goroutines",
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q", want)
		}
	}

	// Readiness reflects the engine: with it closed, /readyz is 503 with a stable code.
	ta.eng.Close()
	status, body = get(t, c, ta.url("/readyz"))
	if json.Unmarshal(body, &e); status != 503 || e.Code != "engine.unavailable" {
		t.Errorf("readyz with the engine closed = %d %s", status, body)
	}
	if status, _ := get(t, c, ta.url("/healthz")); status != 200 {
		t.Errorf("healthz with the engine closed = %d, want 200", status)
	}
}

// Profiles are served on the metrics listener only when metrics.pprof asks for them.
func TestProfilesOnlyWhenAsked(t *testing.T) {
	for _, on := range []bool{false, true} {
		ta := startApp(t, func(c *config.Config) { c.Metrics.Pprof = on })
		resp, err := http.Get("http://" + ta.MetricsAddr() + "/debug/pprof/heap?debug=1")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		served := resp.StatusCode == 200 && strings.Contains(string(b), "heap profile")
		if served != on {
			t.Errorf("metrics.pprof %v: /debug/pprof/heap = %d (profile served: %v)", on, resp.StatusCode, served)
		}
		if status, _ := get(t, ta.client("", nil), ta.url("/debug/pprof/heap")); status != 404 {
			t.Errorf("profiles on the API listener = %d, want 404", status)
		}
	}
}

func TestMetricsOffByDefault(t *testing.T) {
	ta := startApp(t, func(c *config.Config) { c.Metrics.Listen = "" })
	if ta.MetricsAddr() != "" {
		t.Fatalf("metrics listener %q without metrics.listen", ta.MetricsAddr())
	}
}

func TestTLSVersionsAndSuites(t *testing.T) {
	ta := startApp(t, nil)
	cases := []struct {
		name    string
		tc      *tls.Config
		wantErr bool
		version uint16
	}{
		{"TLS 1.1 refused", &tls.Config{MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}, true, 0},
		{"TLS 1.3 negotiated by default", &tls.Config{}, false, tls.VersionTLS13},
		{"TLS 1.2 with AEAD", &tls.Config{MaxVersion: tls.VersionTLS12}, false, tls.VersionTLS12},
		{"TLS 1.2 with CBC only refused", &tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA,
			tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA,
		}}, true, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.tc.RootCAs = ta.pool
			tc.tc.ServerName = "localhost"
			conn, err := tls.Dial("tcp", ta.APIAddr(), tc.tc)
			if tc.wantErr {
				if err == nil {
					conn.Close()
					t.Fatalf("handshake succeeded with version %x", conn.ConnectionState().Version)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			st := conn.ConnectionState()
			if st.Version != tc.version {
				t.Fatalf("version = %x, want %x", st.Version, tc.version)
			}
		})
	}
	// No plain-HTTP API: a plain request on the API port gets no HTTP answer.
	resp, err := http.Get("http://" + ta.APIAddr() + "/healthz")
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Fatalf("plain HTTP request answered 200")
		}
	}
}

// A connection flood from one address is throttled while another address is still served.
func TestConnectionFloodFromOneIP(t *testing.T) {
	ta := startApp(t, func(c *config.Config) {
		c.API.Limits.ConnRate = 0.5 // slow refill: the count below holds even on a loaded machine
		c.API.Limits.ConnBurst = 5
	})
	flooder := ta.client("127.0.0.2", nil)
	refused := 0
	for range 40 {
		resp, err := flooder.Get(ta.url("/healthz"))
		if err != nil {
			refused++
			continue
		}
		resp.Body.Close()
	}
	if refused < 20 {
		t.Fatalf("only %d of 40 rapid connections from 127.0.0.2 were refused", refused)
	}
	if status, _ := get(t, ta.client("127.0.0.3", nil), ta.url("/healthz")); status != 200 {
		t.Fatalf("127.0.0.3 during the flood = %d, want 200", status)
	}
	if n := metricValue(t, metrics(t, ta), `penstock_edge_rejected_total{reason="conn_rate"}`); n < float64(refused) {
		t.Fatalf("conn_rate refusals counted %v, want at least %d", n, refused)
	}
}

// One address cannot hold more than max_conns_per_ip connections; others still connect.
func TestConcurrentConnectionCap(t *testing.T) {
	ta := startApp(t, func(c *config.Config) { c.API.Limits.MaxConnsPerIP = 4 })
	dial := func(src string) (*tls.Conn, error) {
		d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		return tls.DialWithDialer(d, "tcp", ta.APIAddr(), &tls.Config{RootCAs: ta.pool, ServerName: "localhost"})
	}
	var held []*tls.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for i := range 4 {
		c, err := dial("127.0.0.2")
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		held = append(held, c)
	}
	if c, err := dial("127.0.0.2"); err == nil {
		c.Close()
		t.Fatal("fifth concurrent connection from 127.0.0.2 accepted")
	}
	c, err := dial("127.0.0.3")
	if err != nil {
		t.Fatalf("127.0.0.3 while 127.0.0.2 is at its cap: %v", err)
	}
	c.Close()
	// Closing one frees a slot.
	held[0].Close()
	held = held[1:]
	var freed error
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); { // the server notices the close asynchronously
		var c *tls.Conn
		if c, freed = dial("127.0.0.2"); freed == nil {
			held = append(held, c)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if freed != nil {
		t.Fatalf("slot not freed after close: %v", freed)
	}
	if n := metricValue(t, metrics(t, ta), `penstock_edge_rejected_total{reason="conns_per_ip"}`); n < 1 {
		t.Fatal("conns_per_ip refusal not counted")
	}
}

func TestRequestRateAndSizeLimits(t *testing.T) {
	ta := startApp(t, func(c *config.Config) {
		c.API.Limits.RequestRate = 0.1 // slow refill: the count below holds even on a loaded machine
		c.API.Limits.RequestBurst = 3
		c.API.Limits.MaxBodyBytes = 1024
		c.API.Limits.MaxHeaderBytes = 4096
	})
	c := ta.client("127.0.0.2", nil)
	var limited int
	for range 10 {
		status, body := get(t, c, ta.url("/healthz"))
		if status == 429 {
			var e apiError
			if json.Unmarshal(body, &e); e.Code != "rate_limited" {
				t.Fatalf("429 body %s", body)
			}
			limited++
		}
	}
	if limited < 6 {
		t.Fatalf("%d of 10 requests limited, want at least 6", limited)
	}
	other := ta.client("127.0.0.3", nil)
	if status, _ := get(t, other, ta.url("/healthz")); status != 200 {
		t.Fatalf("other address = %d", status)
	}

	req, _ := http.NewRequest(http.MethodPost, ta.url("/healthz"), strings.NewReader(strings.Repeat("x", 2048)))
	status, body := do(t, ta.client("127.0.0.4", nil), req)
	var e apiError
	if json.Unmarshal(body, &e); status != 413 || e.Code != "body_too_large" {
		t.Fatalf("oversized body = %d %s", status, body)
	}

	req, _ = http.NewRequest(http.MethodGet, ta.url("/healthz"), nil)
	req.Header.Set("X-Big", strings.Repeat("y", 16<<10))
	h1 := ta.client("127.0.0.5", nil)
	h1.Transport.(*http.Transport).ForceAttemptHTTP2 = false
	if status, _ := do(t, h1, req); status != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("oversized header = %d, want 431", status)
	}
	for deadline := time.Now().Add(30 * time.Second); metricValue(t, metrics(t, ta), "penstock_edge_conns_without_request_total") < 1; {
		if time.Now().After(deadline) {
			t.Fatal("connection cut for an oversized header not counted")
		}
		time.Sleep(20 * time.Millisecond)
	}
	m := metrics(t, ta)
	if n := metricValue(t, m, `penstock_edge_rejected_total{reason="request_rate"}`); n != float64(limited) {
		t.Errorf("request_rate refusals counted %v, want %d", n, limited)
	}
	if n := metricValue(t, m, `penstock_edge_rejected_total{reason="body_too_large"}`); n != 1 {
		t.Errorf("body_too_large refusals counted %v, want 1", n)
	}
}

// A client that sends its headers slowly is disconnected after read_header_timeout.
func TestSlowHeadersAreCut(t *testing.T) {
	ta := startApp(t, func(c *config.Config) { c.API.Limits.ReadHeaderTimeout = 300 * time.Millisecond })
	conn, err := tls.Dial("tcp", ta.APIAddr(), &tls.Config{RootCAs: ta.pool, ServerName: "localhost", NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("GET /healthz HTTP/1.1\r\nHost: localhost\r\n")); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(conn)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("server kept the slow connection open for 10s")
	}
	if strings.Contains(string(b), "200 OK") {
		t.Fatalf("incomplete request answered: %q", b)
	}
	// The server closes the socket before it runs its connection-state hook.
	for deadline := time.Now().Add(30 * time.Second); metricValue(t, metrics(t, ta), "penstock_edge_conns_without_request_total") < 1; {
		if time.Now().After(deadline) {
			t.Fatal("cut connection not counted")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Shutdown waits for a handler in progress, then closes the engine; the request gets its
// answer. Past api.shutdown_timeout the connection is closed and the handler released.
func TestShutdownDrainsHandlers(t *testing.T) {
	started, release := make(chan struct{}), make(chan struct{})
	slow := func(api http.Handler) http.Handler {
		mux := http.NewServeMux()
		mux.HandleFunc("GET /test/slow", func(w http.ResponseWriter, r *http.Request) {
			close(started)
			select {
			case <-release:
				w.Write([]byte("done"))
			case <-r.Context().Done():
			}
		})
		mux.Handle("/", api)
		return mux
	}
	ta := startAppWith(t, nil, slow)
	result := make(chan string, 1)
	go func() {
		resp, err := ta.client("", nil).Get(ta.url("/test/slow"))
		if err != nil {
			result <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		result <- string(b)
	}()
	<-started
	ta.cancel()
	// Once the shutdown is under way, Run must still be waiting for the handler.
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(ta.logs.String(), `"msg":"shutting down"`); {
		if time.Now().After(deadline) {
			t.Fatalf("no shutdown logged:\n%s", ta.logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case err := <-ta.done:
		t.Fatalf("Run returned with a handler in progress: %v", err)
	default:
	}
	if err := ta.eng.Ready(context.Background()); err != nil {
		t.Fatalf("engine closed under a running handler: %v", err)
	}
	close(release)
	if got := <-result; got != "done" {
		t.Fatalf("in-flight request got %q", got)
	}
	if err := <-ta.done; err != nil {
		t.Fatalf("run: %v", err)
	}
	ta.done <- nil // for the cleanup's stop
}

func TestShutdownTimeoutClosesStuckRequests(t *testing.T) {
	started := make(chan struct{})
	stuck := func(api http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			close(started)
			<-r.Context().Done() // never answers
		})
	}
	ta := startAppWith(t, func(c *config.Config) { c.API.ShutdownTimeout = 300 * time.Millisecond }, stuck)
	go func() {
		if resp, err := ta.client("", nil).Get(ta.url("/anything")); err == nil {
			resp.Body.Close()
		}
	}()
	<-started
	ta.cancel()
	select {
	case <-ta.done:
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after the shutdown timeout")
	}
	ta.done <- nil
	if !strings.Contains(ta.logs.String(), "drain timed out") {
		t.Fatalf("no forced close logged:\n%s", ta.logs.String())
	}
	if _, err := ta.eng.Account(context.Background(), "platform"); err == nil {
		t.Fatal("engine still open after Run returned")
	}
}

// A second process on the same data directory is refused before it touches the store.
func TestDataDirectoryIsExclusive(t *testing.T) {
	ta := startApp(t, nil)
	cfg := ta.cfg
	cfg.API.Listen, cfg.Metrics.Listen = "127.0.0.1:0", ""
	_, err := New(context.Background(), cfg, slog.New(slog.DiscardHandler), "test")
	if err == nil || !strings.Contains(err.Error(), "in use by another penstock process") {
		t.Fatalf("second app on the same data directory: %v", err)
	}
	if status, _ := get(t, ta.client("", nil), ta.url("/readyz")); status != 200 {
		t.Fatalf("first app after the refused second one: readyz %d", status)
	}
}

// Secrets planted in the configuration and the data directory appear in no log line and no
// response, across successful and failing requests.
func TestSecretsStayOutOfLogsAndResponses(t *testing.T) {
	testenv.RequireNATS(t)
	const planted = "planted-secret-7d3e9a"
	ta := startApp(t, func(c *config.Config) {
		c.Engine.NATSURL = testenv.NATSURL
		c.Keyring.MasterKey = redact.NewSecret(testenv.NATSMasterKey) // this server has no auth; the credentials are ignored by it
		c.Engine.NATSUser = "svc"
		c.Engine.NATSPassword = redact.NewSecret(planted)
		c.API.Limits.RequestBurst = 5
		c.API.Limits.RequestRate = 1
	})
	embedded := startApp(t, nil)
	secrets := []string{planted}
	for _, f := range []string{keyring.MasterKeyFile, "engine.token"} {
		b, err := os.ReadFile(filepath.Join(embedded.cfg.DataDir, f))
		if err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, strings.TrimSpace(string(b)))
	}
	var responses strings.Builder
	for _, app := range []*testApp{ta, embedded} {
		app.log.Info("config at start", "config", app.cfg)
		c := app.client("127.0.0.2", nil)
		for _, path := range []string{"/healthz", "/readyz", "/openapi.json", "/missing?token=" + planted, "/healthz", "/readyz", "/healthz"} {
			req, _ := http.NewRequest(http.MethodGet, app.url(path), nil)
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			responses.Write(b)
			for k, v := range resp.Header {
				responses.WriteString(k + ": " + strings.Join(v, ",") + "\n")
			}
		}
		responses.WriteString(metrics(t, app))
		app.stop()
	}
	logs := ta.logs.String() + embedded.logs.String()
	if !strings.Contains(logs, `"engine.nats_password":"[redacted]"`) {
		t.Fatalf("config log line missing or unredacted:\n%s", logs)
	}
	for i, s := range secrets {
		if strings.Contains(logs, s) {
			t.Errorf("secret %d appears in the logs", i)
		}
		if strings.Contains(responses.String(), s) {
			t.Errorf("secret %d appears in a response", i)
		}
	}
}
