// Package proc runs `penstock serve` and other servers as child processes for the benchmarks,
// so that a server's figures never include the benchmark's own Go runtime, and reads what
// Linux says of a process (resident memory, threads, open files, CPU time).
package proc

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pquerna/otp/totp"
)

// Build compiles ./cmd/penstock into a temporary directory; cleanup removes it.
func Build() (bin string, cleanup func(), err error) {
	tmp, err := os.MkdirTemp("", "bench-penstock-bin")
	if err != nil {
		return "", nil, err
	}
	bin = filepath.Join(tmp, "penstock")
	if out, err := exec.Command("go", "build", "-o", bin, "./cmd/penstock").CombinedOutput(); err != nil {
		os.RemoveAll(tmp)
		return "", nil, fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, func() { os.RemoveAll(tmp) }, nil
}

// Child is a server process whose standard error is scanned for the line saying it serves.
type Child struct {
	Cmd    *exec.Cmd
	mu     sync.Mutex
	stdout bytes.Buffer
	ready  chan map[string]any
	exited chan error
}

// Start starts cmd (killed if this process dies); ready recognises the line that says it serves
// and returns what the line says.
func Start(cmd *exec.Cmd, ready func(line []byte) (map[string]any, bool)) (*Child, error) {
	c := &Child{Cmd: cmd, ready: make(chan map[string]any, 1), exited: make(chan error, 1)}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, 4096)
		for {
			k, err := stdout.Read(buf)
			c.mu.Lock()
			c.stdout.Write(buf[:k])
			c.mu.Unlock()
			if err != nil {
				return
			}
		}
	})
	wg.Go(func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			if rec, ok := ready(sc.Bytes()); ok {
				select {
				case c.ready <- rec:
				default:
				}
			}
		}
	})
	go func() { wg.Wait(); c.exited <- cmd.Wait() }()
	return c, nil
}

// Stdout is what the process printed so far.
func (c *Child) Stdout() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stdout.String()
}

// WaitReady waits up to d for the ready line.
func (c *Child) WaitReady(d time.Duration) (map[string]any, error) {
	select {
	case rec := <-c.ready:
		return rec, nil
	case err := <-c.exited:
		return nil, fmt.Errorf("%s exited before serving: %v", c.Cmd.Path, err)
	case <-time.After(d):
		return nil, fmt.Errorf("%s not serving after %v", c.Cmd.Path, d)
	}
}

// Stop sends SIGTERM and waits for the exit (kills after two minutes).
func (c *Child) Stop() {
	_ = c.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
	case <-time.After(2 * time.Minute):
		_ = c.Cmd.Process.Kill()
		<-c.exited
	}
}

// Pid is the process id.
func (c *Child) Pid() int { return c.Cmd.Process.Pid }

// Stats is what Linux says of a process.
type Stats struct {
	RSS          int64
	Threads, FDs int
	CPU          time.Duration // user and system time so far
}

// StatsOf reads /proc for pid.
func StatsOf(pid int) Stats {
	var s Stats
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			s.RSS = kb << 10
		}
		if len(f) >= 2 && f[0] == "Threads:" {
			s.Threads, _ = strconv.Atoi(f[1])
		}
	}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	s.FDs = len(fds)
	b, _ = os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if i := bytes.LastIndexByte(b, ')'); i > 0 {
		f := strings.Fields(string(b[i+1:]))
		// utime and stime are fields 14 and 15 of stat, 12 and 13 after the command name.
		if len(f) > 12 {
			ut, _ := strconv.ParseInt(f[11], 10, 64)
			st, _ := strconv.ParseInt(f[12], 10, 64)
			s.CPU = time.Duration(ut+st) * 10 * time.Millisecond // USER_HZ is 100 on Linux
		}
	}
	return s
}

// Penstock is a `penstock serve` process on its own data directory, and an administrator's
// session on it once Login has run.
type Penstock struct {
	Bin, Dir string
	Env      []string // added to this process's environment
	Args     []string // serve flags besides --data-dir and --listen
	Child    *Child
	API      string // https://host:port
	NATS     string // the native NATS listener, host:port, when configured
	Metrics  string // host:port, when configured
	Token    string // the administrator's session (Login)
	home     string
	client   *http.Client
}

// Start starts the server and waits up to d until it serves; it returns how long that took.
func (p *Penstock) Start(d time.Duration) (time.Duration, error) {
	t0 := time.Now()
	cmd := exec.Command(p.Bin, append([]string{"serve", "--data-dir", p.Dir, "--listen", "127.0.0.1:0"}, p.Args...)...)
	cmd.Env = append(os.Environ(), p.Env...)
	c, err := Start(cmd, func(line []byte) (map[string]any, bool) {
		var rec map[string]any
		return rec, json.Unmarshal(line, &rec) == nil && rec["msg"] == "serving"
	})
	if err != nil {
		return 0, err
	}
	rec, err := c.WaitReady(d)
	if err != nil {
		return 0, err
	}
	took := time.Since(t0)
	p.Child = c
	p.API, _ = rec["api"].(string)
	p.NATS, _ = rec["nats"].(string)
	p.Metrics, _ = rec["metrics"].(string)
	return took, nil
}

// TLS trusts the data directory's CA (the API's and native listeners' certificates).
func (p *Penstock) TLS() (*tls.Config, error) {
	pem, err := os.ReadFile(filepath.Join(p.Dir, "tls", "ca.crt"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// Client is an HTTPS client for the API.
func (p *Penstock) Client() *http.Client {
	if p.client == nil {
		tc, err := p.TLS()
		if err != nil {
			tc = &tls.Config{}
		}
		p.client = &http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{TLSClientConfig: tc, MaxIdleConnsPerHost: 64}}
	}
	return p.client
}

// CLI runs a penstock command against the server as the session's user.
func (p *Penstock) CLI(stdin string, args ...string) (string, error) {
	if p.home == "" {
		h, err := os.MkdirTemp("", "bench-penstock-home")
		if err != nil {
			return "", err
		}
		p.home = h
	}
	cmd := exec.Command(p.Bin, append(args, "--server", p.API, "--data-dir", p.Dir)...)
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Env = append(os.Environ(), "HOME="+p.home, "XDG_CONFIG_HOME="+p.home)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("penstock %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// Login does the first administrator's login as docs/access.md says (the one-time password
// the server printed, a new password, a second factor) and keeps the session's token.
func (p *Penstock) Login() error {
	var pw string
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, after, ok := strings.Cut(p.Child.Stdout(), "one-time password:"); ok && len(strings.Fields(after)) > 0 {
			pw = strings.Fields(after)[0]
			break
		}
		if time.Now().After(deadline) {
			return errors.New("the server printed no one-time password")
		}
	}
	_, _ = p.CLI(pw+"\n", "login", "--user", "admin") // succeeds, and says the password must change
	if _, err := p.CLI(pw+"\nBench-Operator-Pw-9\n", "password"); err != nil {
		return err
	}
	out, err := p.CLI("", "mfa", "enrol")
	if err != nil {
		return err
	}
	_, after, _ := strings.Cut(out, "type the secret: ")
	if len(strings.Fields(after)) == 0 {
		return fmt.Errorf("mfa enrol: %s", out)
	}
	code, err := totp.GenerateCode(strings.Fields(after)[0], time.Now())
	if err != nil {
		return err
	}
	if _, err := p.CLI("", "mfa", "verify", code); err != nil {
		return err
	}
	b, err := os.ReadFile(filepath.Join(p.home, "penstock", "session.json"))
	if err != nil {
		return err
	}
	var s struct{ Token string }
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	p.Token = s.Token
	return nil
}

// Post sends a JSON POST with a bearer token (a session or an API key), retrying while the
// server answers 429.
func (p *Penstock) Post(bearer, path string, body any) ([]byte, error) {
	b, _ := json.Marshal(body)
	for try := 0; ; try++ {
		req, _ := http.NewRequest("POST", p.API+path, bytes.NewReader(b))
		req.Header.Set("Authorization", "Bearer "+bearer)
		req.Header.Set("Content-Type", "application/json")
		resp, err := p.Client().Do(req)
		if err != nil {
			return nil, err
		}
		out, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == 429 && try < 50 {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		if resp.StatusCode >= 300 {
			return nil, fmt.Errorf("POST %s: %d %s", path, resp.StatusCode, out)
		}
		return out, nil
	}
}

// Queue creates tenant/production/app with queue q and a developer key for the application,
// and returns the key.
func (p *Penstock) Queue(tenant, app, q string) (string, error) {
	base := "/v1/tenants/" + tenant + "/environments/production/applications"
	if _, err := p.Post(p.Token, "/v1/tenants", map[string]string{"name": tenant}); err != nil {
		return "", err
	}
	if _, err := p.Post(p.Token, base, map[string]string{"name": app}); err != nil {
		return "", err
	}
	if _, err := p.Post(p.Token, base+"/"+app+"/queues", map[string]string{"name": q}); err != nil {
		return "", err
	}
	out, err := p.Post(p.Token, "/v1/apikeys", map[string]string{"role": "developer", "scope": tenant + "/production/" + app, "name": "bench"})
	if err != nil {
		return "", err
	}
	var k struct{ Key string }
	return k.Key, json.Unmarshal(out, &k)
}

// Scrape reads the server's metrics (needs metrics.listen), by series.
func (p *Penstock) Scrape() map[string]float64 {
	out := map[string]float64{}
	if p.Metrics == "" {
		return out
	}
	resp, err := http.Get("http://" + p.Metrics + "/metrics")
	if err != nil {
		return out
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && !strings.HasPrefix(f[0], "#") {
			v, _ := strconv.ParseFloat(f[1], 64)
			out[f[0]] = v
		}
	}
	return out
}

// Close removes the CLI's home.
func (p *Penstock) Close() {
	if p.home != "" {
		os.RemoveAll(p.home)
	}
}
