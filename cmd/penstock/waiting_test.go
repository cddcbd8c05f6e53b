package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/penstock/penstock/internal/testenv"
)

// slowPipeline sets up, in acme/production/shop of p, a pipeline "slow" that copies a CSV of
// rows records into a queue: a run that lasts seconds. It returns the CLI helper.
func slowPipeline(t *testing.T, p *proc, rows int) func(stdin string, want int, args ...string) string {
	t.Helper()
	cli := func(stdin string, want int, args ...string) string {
		t.Helper()
		code, out := p.cli(stdin, args...)
		if code != want {
			t.Fatalf("penstock %s: exit %d, want %d:\n%s", strings.Join(args, " "), code, want, out)
		}
		return out
	}
	app := "acme/production/shop"
	cli("", 0, "tenant", "create", "acme")
	cli("", 0, "app", "create", "--env", "acme/production", "shop")
	cli("", 0, "queue", "create", "--app", app, "out")
	files := filepath.Join(p.dataDir, "files", "acme")
	if err := os.MkdirAll(files, 0o700); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	b.WriteString("id,v\n")
	for i := range rows {
		fmt.Fprintf(&b, "%d,%s\n", i, strings.Repeat("x", 40))
	}
	if err := os.WriteFile(filepath.Join(files, "big.csv"), []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	spec := filepath.Join(t.TempDir(), "slow.yaml")
	if err := os.WriteFile(spec, []byte("name: slow\nsource: {type: file, path: big.csv}\nsink: {type: queue, queue: out}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cli("", 0, "pipeline", "apply", "--app", app, "-f", spec)
	return cli
}

// run-now --wait follows a run of any length over one connection: it polled with a new HTTP
// client (and connection pool) per call, each connection held open until the server's idle
// timeout, so after max_conns_per_ip polls (64 by default: half a minute) the server refused
// the next connection and the command failed with `Get "...": EOF` while the run went on (and
// every other client from that address was refused too).
func TestWaitKeepsToOneConnection(t *testing.T) {
	dir := t.TempDir()
	p := serveEnv(t, dir, []string{"PENSTOCK_API_LIMITS_MAX_CONNS_PER_IP=3"})
	p.loginAsAdmin()
	cli := slowPipeline(t, p, 20000)
	out := cli("", 0, "pipeline", "run-now", "--app", "acme/production/shop", "slow", "--wait", "-o", "table")
	if !strings.Contains(out, "succeeded: 20,000 read, 20,000 written") {
		t.Fatalf("run-now --wait:\n%s", out)
	}
	if strings.Count(p.logs.String(), `"path":"/v1/tenants/acme/environments/production/applications/shop/pipelines/slow/runs"`) < 3 {
		t.Fatalf("the run was too quick to need 3 polls; the test proves nothing:\n%s", out)
	}
}

// run-now answers 202 with a run's id while another run is in progress: the run waits for it.
// If the pipeline is paused (or changed, or the server restarts) before it starts, it never
// runs; run-now --wait then said "waiting for the run before it to end" for ever. It must end
// with an error that says the run did not start.
func TestWaitForARunThatWillNeverStart(t *testing.T) {
	dir := t.TempDir()
	p := serve(t, dir)
	p.loginAsAdmin()
	app := "acme/production/shop"
	cli := slowPipeline(t, p, 100000)
	first := between(cli("", 0, "pipeline", "run-now", "--app", app, "slow"), `"run": "`, `"`)
	waitUntil(t, time.Minute, "the first run running", func() bool {
		return strings.Contains(cli("", 0, "pipeline", "runs", "--app", app, "slow"), `"id": "`+first+`",`)
	})

	cmd := exec.Command(binary, "pipeline", "run-now", "--app", app, "slow", "--wait", "--server", p.api, "--data-dir", p.dataDir)
	cmd.Env = append(os.Environ(), "HOME="+p.home, "XDG_CONFIG_HOME="+p.home)
	out := &testenv.LogBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-exited
		}
	})
	waitUntil(t, time.Minute, "the second run waiting for the first", func() bool {
		return strings.Contains(out.String(), "waiting for the run before it to end")
	})
	if runs := cli("", 0, "pipeline", "runs", "--app", app, "slow"); !strings.Contains(runs, `"status": "queued"`) ||
		!strings.Contains(runs, `"id": "`+first+`",`) {
		t.Errorf("runs does not show the second run queued behind the first:\n%s", runs)
	}
	cli("", 0, "pipeline", "pause", "--app", app, "slow")
	cli("", 0, "pipeline", "resume", "--app", app, "slow")

	select {
	case err := <-exited:
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != 1 || !strings.Contains(out.String(), "did not start and will not") {
			t.Fatalf("run-now --wait of a run dropped before it began: %v\n%s", err, out.String())
		}
	case <-time.After(time.Minute):
		t.Fatalf("run-now --wait still waiting a minute after its run was dropped:\n%s", out.String())
	}
	if runs := cli("", 0, "pipeline", "runs", "--app", app, "slow"); strings.Contains(runs, `"status": "queued"`) {
		t.Fatalf("a dropped run is still shown queued:\n%s", runs)
	}
}
