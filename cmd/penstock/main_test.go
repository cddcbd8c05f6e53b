package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/pquerna/otp/totp"

	"github.com/penstock/penstock/internal/testenv"
)

// binary is the penstock executable built once for the process tests.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "penstock-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "penstock")
	build := exec.Command("go", "build", "-race", "-o", binary, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build penstock:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a running `penstock serve` child process.
type proc struct {
	t       *testing.T
	cmd     *exec.Cmd
	logs    *testenv.LogBuffer
	stdout  *testenv.LogBuffer // what serve prints for people: the first administrator's password
	home    string             // configuration directory of the CLI runs against this server
	api     string             // https://host:port
	nats    string             // nats://host:port, when the client port is open
	dataDir string
	exited  chan error
}

// serve starts `penstock serve` on random ports and waits for its "serving" log line.
func serve(t *testing.T, dataDir string, extra ...string) *proc {
	t.Helper()
	return serveEnv(t, dataDir, nil, extra...)
}

// serveEnv is serve with extra environment variables.
func serveEnv(t *testing.T, dataDir string, env []string, extra ...string) *proc {
	t.Helper()
	p, serving := startServe(t, dataDir, env, extra...)
	p.waitServing(serving, 60*time.Second)
	return p
}

// startServe starts `penstock serve` without waiting for it to serve (nodes of a cluster
// serve only once a majority is up); waitServing waits.
func startServe(t *testing.T, dataDir string, env []string, extra ...string) (*proc, <-chan map[string]any) {
	t.Helper()
	args := append([]string{"serve", "--data-dir", dataDir, "--listen", "127.0.0.1:0"}, extra...)
	cmd := exec.Command(binary, args...)
	cmd.Env = append(append(os.Environ(), "PENSTOCK_API_SHUTDOWN_TIMEOUT=10s"), env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout := &testenv.LogBuffer{}
	cmd.Stdout = stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, cmd: cmd, logs: &testenv.LogBuffer{}, stdout: stdout, dataDir: dataDir, exited: make(chan error, 1),
		home: t.TempDir()}
	serving := make(chan map[string]any, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Bytes()
			p.logs.Write(append(append([]byte{}, line...), '\n'))
			var rec map[string]any
			if json.Unmarshal(line, &rec) == nil && rec["msg"] == "serving" {
				serving <- rec
			}
		}
		p.exited <- cmd.Wait()
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-p.exited
		}
	})
	return p, serving
}

func (p *proc) waitServing(serving <-chan map[string]any, d time.Duration) {
	p.t.Helper()
	select {
	case rec := <-serving:
		p.api, _ = rec["api"].(string)
		p.nats, _ = rec["nats"].(string)
	case err := <-p.exited:
		p.t.Fatalf("penstock exited before serving: %v\n%s", err, p.logs.String())
	case <-time.After(d):
		p.t.Fatalf("penstock not serving after %v:\n%s", d, p.logs.String())
	}
}

// waitUntil polls cond until it holds, failing the test after d.
func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %v", what, d)
		}
	}
}

// stop sends sig and waits for the process to exit.
func (p *proc) stop(sig syscall.Signal) error {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatal(err)
	}
	select {
	case err := <-p.exited:
		return err
	case <-time.After(60 * time.Second):
		p.t.Fatalf("penstock did not exit on %v:\n%s", sig, p.logs.String())
		return nil
	}
}

func (p *proc) client() *http.Client {
	pool := x509.NewCertPool()
	pem, err := os.ReadFile(filepath.Join(p.dataDir, "tls", "ca.crt"))
	if err != nil {
		p.t.Fatal(err)
	}
	pool.AppendCertsFromPEM(pem)
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

func (p *proc) get(path string) (int, string) {
	p.t.Helper()
	resp, err := p.client().Get(p.api + path)
	if err != nil {
		p.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// engineConn connects to the embedded engine's client port as the platform account.
func (p *proc) engineConn() (*nats.Conn, jetstream.JetStream) {
	p.t.Helper()
	token, err := os.ReadFile(filepath.Join(p.dataDir, "engine.token"))
	if err != nil {
		p.t.Fatal(err)
	}
	nc, err := nats.Connect(p.nats, nats.UserInfo("platform", strings.TrimSpace(string(token))))
	if err != nil {
		p.t.Fatalf("connect to %s: %v", p.nats, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		p.t.Fatal(err)
	}
	return nc, js
}

// kill -9 while writers are publishing: every write the engine acknowledged is there after a
// restart, byte for byte.
func TestKill9KeepsAcknowledgedWrites(t *testing.T) {
	dir := t.TempDir()
	p := serve(t, dir, "--nats-listen", "127.0.0.1:0")
	// The guarantee rests on the server fsyncing every write: a kill -9 alone keeps the page
	// cache, so the test also checks the running server's policy.
	if !strings.Contains(p.logs.String(), `"sync":"always"`) {
		t.Fatalf("default server does not sync every write:\n%s", p.logs.String())
	}
	nc, js := p.engineConn()
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "ACKED", Subjects: []string{"acked.>"}}); err != nil {
		t.Fatal(err)
	}

	var (
		mu    sync.Mutex
		acked = map[uint64]string{}
		wg    sync.WaitGroup
	)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				payload := fmt.Sprintf("writer-%d-msg-%d", w, i)
				ack, err := js.Publish(ctx, fmt.Sprintf("acked.%d", w), []byte(payload))
				if err != nil {
					return // the server is gone
				}
				mu.Lock()
				acked[ack.Sequence] = payload
				mu.Unlock()
			}
		}()
	}
	// Kill once the writers are well under way, however slow the machine.
	waitUntil(t, 120*time.Second, "200 acknowledged writes", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(acked) >= 200
	})
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-p.exited
	wg.Wait()
	nc.Close()

	p2 := serve(t, dir, "--nats-listen", "127.0.0.1:0")
	nc2, js2 := p2.engineConn()
	defer nc2.Close()
	s, err := js2.Stream(ctx, "ACKED")
	if err != nil {
		t.Fatalf("stream after kill -9: %v", err)
	}
	for seq, want := range acked {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("acknowledged message %d lost: %v", seq, err)
		}
		if string(m.Data) != want {
			t.Fatalf("message %d = %q, want %q", seq, m.Data, want)
		}
	}
	t.Logf("%d acknowledged writes, all present after kill -9 and restart", len(acked))
	if status, body := p2.get("/readyz"); status != 200 {
		t.Fatalf("readyz after restart = %d %s", status, body)
	}
}

// SIGTERM drains and exits 0; a restart finds the data, the same CA and certificate.
func TestGracefulRestart(t *testing.T) {
	dir := t.TempDir()
	p := serve(t, dir, "--nats-listen", "127.0.0.1:0")
	nc, js := p.engineConn()
	ctx := context.Background()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "restart"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "k", []byte("survives")); err != nil {
		t.Fatal(err)
	}
	nc.Close()
	if status, _ := p.get("/readyz"); status != 200 {
		t.Fatalf("readyz = %d", status)
	}
	ca1, _ := os.ReadFile(filepath.Join(dir, "tls", "ca.crt"))
	crt1, _ := os.ReadFile(filepath.Join(dir, "tls", "server.crt"))
	if err := p.stop(syscall.SIGTERM); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, p.logs.String())
	}
	if !strings.Contains(p.logs.String(), `"msg":"stopped"`) {
		t.Fatalf("no clean stop logged:\n%s", p.logs.String())
	}

	p2 := serve(t, dir, "--nats-listen", "127.0.0.1:0")
	nc2, js2 := p2.engineConn()
	defer nc2.Close()
	kv2, err := js2.KeyValue(ctx, "restart")
	if err != nil {
		t.Fatal(err)
	}
	if e, err := kv2.Get(ctx, "k"); err != nil || string(e.Value()) != "survives" {
		t.Fatalf("after restart: %v, %v", e, err)
	}
	ca2, _ := os.ReadFile(filepath.Join(dir, "tls", "ca.crt"))
	crt2, _ := os.ReadFile(filepath.Join(dir, "tls", "server.crt"))
	if !bytes.Equal(ca1, ca2) || !bytes.Equal(crt1, crt2) {
		t.Fatal("restart replaced the CA or the server certificate")
	}
	if err := p2.stop(syscall.SIGINT); err != nil {
		t.Fatalf("exit after SIGINT: %v", err)
	}
}

// SIGTERM while a request is in flight: the request completes before the process exits.
func TestShutdownDrainsInFlightRequests(t *testing.T) {
	p := serveEnv(t, t.TempDir(), []string{"PENSTOCK_METRICS_LISTEN=127.0.0.1:0"})
	c := p.client()
	// A request whose body is still being sent is in flight when the signal arrives.
	pr, pw := io.Pipe()
	req, _ := http.NewRequest(http.MethodPost, p.api+"/healthz", pr)
	req.ContentLength = -1
	result := make(chan int, 1)
	go func() {
		resp, err := c.Do(req)
		if err != nil {
			result <- -1
			return
		}
		resp.Body.Close()
		result <- resp.StatusCode
	}()
	pw.Write([]byte("partial"))
	// The signal comes once the server has accepted the request's connection (the edge counts
	// it open): from then on Shutdown waits for it.
	metrics := between(p.logs.String(), `"metrics":"`, `"`)
	for deadline := time.Now().Add(30 * time.Second); ; {
		resp, err := http.Get("http://" + metrics + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if regexp.MustCompile(`(?m)^penstock_edge_open_connections [1-9]`).Match(b) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the server never counted the request's connection open")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 60*time.Second, "shutdown log", func() bool { return strings.Contains(p.logs.String(), `"msg":"shutting down"`) })
	select {
	case err := <-p.exited:
		t.Fatalf("exited with a request in flight: %v", err)
	default:
	}
	pw.Close()
	if status := <-result; status != http.StatusMethodNotAllowed {
		t.Fatalf("in-flight request got %d, want its normal answer (405)", status)
	}
	if err := <-p.exited; err != nil {
		t.Fatalf("exit: %v", err)
	}
}

func TestSIGHUPReloadsOperatorCertificate(t *testing.T) {
	dir := t.TempDir()
	cp, kp := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	first := testenv.WriteCert(t, cp, kp, "first").Subject.CommonName
	p := serve(t, dir, "--tls-cert", cp, "--tls-key", kp)
	addr := strings.TrimPrefix(p.api, "https://")
	served := func() string {
		c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true}) // the test checks the certificate itself
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].Subject.CommonName
	}
	if got := served(); got != first {
		t.Fatalf("serving %q, want %q", got, first)
	}
	second := testenv.WriteCert(t, cp, kp, "second").Subject.CommonName
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for served() != second {
		if time.Now().After(deadline) {
			t.Fatalf("certificate not reloaded on SIGHUP:\n%s", p.logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := p.stop(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
}

func TestExternalEngineMode(t *testing.T) {
	testenv.RequireNATS(t)
	dir := t.TempDir()
	p := serveEnv(t, dir, []string{"PENSTOCK_KEYRING_MASTER_KEY=" + testenv.NATSMasterKey}, "--nats-url", testenv.NATSURL)
	if !strings.Contains(p.logs.String(), `"engine":"external"`) {
		t.Fatalf("not in external mode:\n%s", p.logs.String())
	}
	if _, err := os.Stat(filepath.Join(dir, "jetstream")); !os.IsNotExist(err) {
		t.Fatal("external mode created an embedded store")
	}
	out, err := exec.Command(binary, "status", "--server", p.api, "--data-dir", dir).CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"status":"ready"`) {
		t.Fatalf("penstock status: %v\n%s", err, out)
	}
	if err := p.stop(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
}

func TestStartupRefusesBadConfigAndUnsafeKeys(t *testing.T) {
	out, err := exec.Command(binary, "serve", "--listen", "nope", "--sync-interval", "sometimes").CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
		t.Fatalf("bad flags: %v\n%s", err, out)
	}
	for _, want := range []string{"api.listen: must be host:port", "engine.sync_interval:"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	dir := t.TempDir()
	p := serve(t, dir)
	if err := p.stop(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Join(dir, "master.key"), 0o644)
	out, err = exec.Command(binary, "serve", "--data-dir", dir, "--listen", "127.0.0.1:0").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "readable by group or others") {
		t.Fatalf("started with a world-readable key file: %v\n%s", err, out)
	}
}

// Secrets stay out of everything a real serve prints or answers: a wrong password refused by
// the engine, then the right one, the start-up configuration line, every request's log line and
// every response.
func TestSecretsNeverLeave(t *testing.T) {
	engineDir := t.TempDir()
	eng := serve(t, engineDir, "--nats-listen", "127.0.0.1:0")
	tokenBytes, err := os.ReadFile(filepath.Join(engineDir, "engine.token"))
	if err != nil {
		t.Fatal(err)
	}
	token := strings.TrimSpace(string(tokenBytes))
	masterKey, _ := os.ReadFile(filepath.Join(engineDir, "master.key"))
	const wrong = "planted-wrong-password-31f7"

	clientDir := t.TempDir()
	cmd := exec.Command(binary, "serve", "--data-dir", clientDir, "--listen", "127.0.0.1:0",
		"--nats-url", eng.nats, "--nats-user", "platform")
	cmd.Env = append(os.Environ(), "PENSTOCK_ENGINE_NATS_PASSWORD="+wrong)
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("started with a wrong engine password:\n%s", out)
	}
	if !strings.Contains(string(out), "Authorization Violation") {
		t.Fatalf("refusal does not say why:\n%s", out)
	}
	if strings.Contains(string(out), wrong) {
		t.Fatalf("the wrong password appears in the output:\n%s", out)
	}

	// A second node of the same platform: same engine, same master key.
	p := serveEnv(t, t.TempDir(), []string{"PENSTOCK_ENGINE_NATS_PASSWORD=" + token, "PENSTOCK_KEYRING_MASTER_KEY=" + strings.TrimSpace(string(masterKey))},
		"--nats-url", eng.nats, "--nats-user", "platform")
	var responses strings.Builder
	for _, path := range []string{"/healthz", "/readyz", "/openapi.json", "/missing?password=" + token, "/readyz"} {
		status, body := p.get(path)
		fmt.Fprintf(&responses, "%d %s\n", status, body)
	}
	if err := p.stop(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	logs := p.logs.String() + eng.logs.String()
	if !strings.Contains(p.logs.String(), `"engine.nats_password":"[redacted]"`) {
		t.Fatalf("start-up configuration line missing or unredacted:\n%s", p.logs.String())
	}
	for name, secret := range map[string]string{
		"engine token": token, "master key": strings.TrimSpace(string(masterKey)), "bootstrap password": eng.bootstrapPassword(),
	} {
		if strings.Contains(logs, secret) {
			t.Errorf("the %s appears in the logs", name)
		}
		if strings.Contains(responses.String(), secret) {
			t.Errorf("the %s appears in a response", name)
		}
	}
}

// cli runs the penstock binary as a client of p, with stdin, and returns its exit code and output.
func (p *proc) cli(stdin string, args ...string) (int, string) {
	p.t.Helper()
	cmd := exec.Command(binary, append(args, "--server", p.api, "--data-dir", p.dataDir)...)
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Env = append(os.Environ(), "HOME="+p.home, "XDG_CONFIG_HOME="+p.home)
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		p.t.Fatal(err)
	}
	return code, string(out)
}

// The keys and secrets commands against a running server, across a master key rotation and
// restarts: every secret stays readable, the store opens with its new key, and a destroyed
// scope answers "deleted".
func TestKeysAndSecretsCommands(t *testing.T) {
	dir := t.TempDir()
	p := serve(t, dir)
	p.loginAsAdmin()
	const value = "cli-secret-value-0c4d"
	app := "acme/production/billing"
	for _, s := range [][]string{{"tenant", "create", "acme"}, {"app", "create", "--env", "acme/production", "billing"},
		{"tenant", "create", "globex"}, {"app", "create", "--env", "globex/test", "etl"}} {
		if code, out := p.cli("", s...); code != 0 {
			t.Fatalf("penstock %s: %d %s", strings.Join(s, " "), code, out)
		}
	}
	for _, step := range []struct {
		stdin string
		args  []string
		code  int
		want  string
	}{
		{value + "\n", []string{"secrets", "put", "--app", app, "db-password"}, 0, "db-password stored"},
		{"other\n", []string{"secrets", "put", "--app", "globex/test/etl", "token"}, 0, "token stored"},
		{"", []string{"secrets", "list", "--app", app}, 0, "db-password"},
		{"", []string{"keys", "rotate", "--scope", app, "-o", "table"}, 0, "version 2"},
		{"", []string{"keys", "rotate-master", "-o", "table"}, 0, "master key is now local:"},
		{"", []string{"keys", "status", "-o", "table"}, 0, "acme/production/billing  2"},
		{"", []string{"keys", "rotate", "--scope", "Bad/Scope"}, 1, "--scope"},
		{"", []string{"secrets", "put", "--app", "acme/production", "x"}, 1, "tenant/environment/application"},
		// Revisions are per secret: other secrets do not move them.
		{"va", []string{"secrets", "put", "--app", "globex/test/etl", "a"}, 0, "a stored (revision 1)"},
		{"vb", []string{"secrets", "put", "--app", "globex/test/etl", "b"}, 0, "b stored (revision 1)"},
		{"vb2", []string{"secrets", "put", "--app", "globex/test/etl", "b"}, 0, "b stored (revision 2)"},
		{"vc", []string{"secrets", "put", "--app", "globex/test/etl", "c"}, 0, "c stored (revision 1)"},
		{"\n", []string{"secrets", "put", "--app", "globex/test/etl", "d"}, 1, "no secret value on standard input"},
	} {
		code, out := p.cli(step.stdin, step.args...)
		if code != step.code || !strings.Contains(out, step.want) {
			t.Fatalf("penstock %s: exit %d, want %d with %q:\n%s", strings.Join(step.args, " "), code, step.code, step.want, out)
		}
		if strings.Contains(out, value) {
			t.Fatalf("penstock %s printed the secret value", strings.Join(step.args, " "))
		}
	}
	code, out := p.cli("", "secrets", "list", "--app", "globex/test/etl", "-o", "table")
	var revs []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n")[1:] {
		f := strings.Fields(line)
		revs = append(revs, f[0]+":"+f[1])
	}
	if code != 0 || strings.Join(revs, " ") != "a:1 b:2 c:1 token:1" {
		t.Fatalf("secrets list: revisions %v, exit %d\n%s", revs, code, out)
	}
	if err := p.stop(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}

	// Restart twice: the store key, re-sealed under the new master key, opens the store each time.
	home, addr := p.home, strings.TrimPrefix(p.api, "https://")
	for i := range 2 {
		p = serve(t, dir, "--listen", addr) // the saved session names this server
		p.home = home                       // the saved session outlives restarts: sessions live in the engine
		code, out := p.cli("", "secrets", "list", "--app", app, "-o", "table")
		if code != 0 || !strings.Contains(out, "db-password") || !strings.Contains(out, "  2\n") {
			t.Fatalf("restart %d: list: %d\n%s\n%s", i, code, out, p.logs.String())
		}
		if i == 0 {
			if err := p.stop(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
		}
	}
	if code, out := p.cli("", "keys", "destroy", "--scope", "acme", "--confirm", "acme"); code != 0 {
		t.Fatalf("destroy: %d %s", code, out)
	}
	code, out = p.cli("", "secrets", "list", "--app", app)
	if code != 1 || !strings.Contains(out, "scope.deleted") {
		t.Fatalf("list after destroy: %d %s", code, out)
	}
	if code, out := p.cli("", "secrets", "list", "--app", "globex/test/etl", "-o", "table"); code != 0 || !strings.Contains(out, "token") {
		t.Fatalf("other tenant after destroy: %d %s", code, out)
	}
	if strings.Contains(p.logs.String(), value) {
		t.Fatal("the secret value appears in the server log")
	}

	// An API key, sent as a bearer key or used to sign requests (PENSTOCK_API_KEY, --sign).
	p.cli("", "tenant", "create", "initech")
	code, out = p.cli("", "apikey", "create", "--role", "developer", "--scope", "initech/production")
	var created struct {
		Key string `json:"key"`
	}
	if err := firstJSON(out, &created); code != 0 || err != nil || !strings.HasPrefix(created.Key, "psk_") {
		t.Fatalf("apikey create: %d %v\n%s", code, err, out)
	}
	for _, extra := range [][]string{nil, {"--sign"}} {
		args := append([]string{"app", "create", "--env", "initech/production", "svc" + strconv.Itoa(len(extra))}, extra...)
		cmd := exec.Command(binary, append(args, "--server", p.api, "--data-dir", p.dataDir)...)
		cmd.Env = append(os.Environ(), "HOME="+t.TempDir(), "XDG_CONFIG_HOME="+t.TempDir(), "PENSTOCK_API_KEY="+created.Key)
		if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), `"name": "svc`) {
			t.Fatalf("penstock %v with an API key: %v\n%s", args, err, out)
		}
	}
	if strings.Contains(p.logs.String(), created.Key[20:]) {
		t.Fatal("the API key's secret appears in the server log")
	}
	if code, out := p.cli("", "audit", "verify"); code != 0 || !strings.HasPrefix(out, "ok: ") {
		t.Fatalf("audit verify: %d\n%s", code, out)
	}
	if code, out := p.cli("", "audit", "list", "--action", "secret.write", "--result", "ok"); code != 0 || !strings.Contains(out, `"secret-put"`) {
		t.Fatalf("audit list: %d\n%s", code, out)
	}
	code, out = p.cli("", "audit", "export", "--format", "ndjson")
	exportFile := filepath.Join(t.TempDir(), "audit.ndjson")
	if code != 0 || os.WriteFile(exportFile, []byte(out), 0o600) != nil {
		t.Fatalf("audit export: %d\n%s", code, out)
	}
	code, pubKey := p.cli("", "audit", "key")
	pubKey = strings.TrimSpace(pubKey)
	if code != 0 || len(pubKey) != 44 {
		t.Fatalf("audit key: %d %q", code, pubKey)
	}
	if code, out := p.cli("", "audit", "verify", "--file", exportFile, "--key", pubKey); code != 0 || !strings.HasPrefix(out, "ok: ") {
		t.Fatalf("audit verify --file: %d\n%s", code, out)
	}
	os.WriteFile(exportFile, []byte(strings.Replace(out, `"result":"ok"`, `"result":"denied"`, 1)), 0o600)
	if code, out := p.cli("", "audit", "verify", "--file", exportFile, "--key", pubKey); code != 1 || !strings.Contains(out, "BROKEN: modified") {
		t.Fatalf("audit verify of an edited export: %d\n%s", code, out)
	}
}

// bootstrapPassword reads the one-time password serve printed on its first start.
func (p *proc) bootstrapPassword() string {
	p.t.Helper()
	// Standard output is copied from the child by its own goroutine, which may lag behind the
	// log line on standard error that said the server is up.
	deadline := time.Now().Add(10 * time.Second)
	for {
		out := p.stdout.String()
		if _, after, ok := strings.Cut(out, "one-time password:"); ok && len(strings.Fields(after)) > 0 {
			return strings.Fields(after)[0]
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("serve printed no bootstrap password:\n%s", out)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// loginAsAdmin does a first login with the CLI as a new administrator must: log in with the
// one-time password, change it, enrol a second factor and confirm it with a code.
func (p *proc) loginAsAdmin() {
	p.t.Helper()
	pw := p.bootstrapPassword()
	if strings.Contains(p.logs.String(), pw) {
		p.t.Fatal("the bootstrap password is in the log")
	}
	steps := []struct {
		stdin string
		args  []string
		want  string
	}{
		{pw + "\n", []string{"login", "--user", "admin"}, "must change your password"},
		{"", []string{"tenant", "list"}, "auth.password_change_required"},
		{pw + "\nFresh-Platform-Pw-9\n", []string{"password"}, "password changed"},
	}
	for _, s := range steps {
		_, out := p.cli(s.stdin, s.args...)
		if !strings.Contains(out, s.want) {
			p.t.Fatalf("penstock %s: want %q:\n%s\nserver log:\n%s", strings.Join(s.args, " "), s.want, out, p.logs.String())
		}
	}
	code, out := p.cli("", "mfa", "enrol")
	_, after, ok := strings.Cut(out, "type the secret: ")
	if code != 0 || !ok {
		p.t.Fatalf("mfa enrol: %d\n%s", code, out)
	}
	secret := strings.Fields(after)[0]
	totpCode, err := totp.GenerateCode(secret, time.Now())
	if err != nil {
		p.t.Fatal(err)
	}
	if code, out := p.cli("", "mfa", "verify", totpCode); code != 0 {
		p.t.Fatalf("mfa verify: %d\n%s", code, out)
	}
	if code, out := p.cli("", "whoami"); code != 0 || !strings.Contains(out, "platform-admin") {
		p.t.Fatalf("whoami: %d\n%s", code, out)
	}
}
