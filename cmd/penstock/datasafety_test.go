package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

const populatedApp = "acme/production/shop"

// populate gives a data directory one of everything that lives in the engine: a tenant, an
// application, a queue with a delivered (unacknowledged) message and a stored one, an exchange
// bound to it, a secret and the audit events of all of it.
func populate(t *testing.T, p *proc) {
	t.Helper()
	p.loginAsAdmin()
	app := populatedApp
	for _, s := range []struct {
		stdin string
		args  []string
	}{
		{"", []string{"tenant", "create", "acme"}},
		{"", []string{"app", "create", "--env", "acme/production", "shop"}},
		{"", []string{"queue", "create", "--app", app, "orders", "--max-deliveries", "5", "--ack-wait", "1h"}},
		{"", []string{"exchange", "create", "--app", app, "events", "--type", "topic"}},
		{"", []string{"exchange", "bind", "--app", app, "events", "--queue", "orders", "--key", "order.*"}},
		{"", []string{"queue", "publish", "--app", app, "orders", "--id", "m-1", "--data", "first"}},
		{"", []string{"queue", "consume", "--app", app, "orders", "--max", "1", "--wait", "5s"}},
		{"", []string{"queue", "publish", "--app", app, "orders", "--id", "m-2", "--data", "second"}},
		{"s3cr3t-value\n", []string{"secrets", "put", "--app", app, "db-password"}},
	} {
		if code, out := p.cli(s.stdin, s.args...); code != 0 {
			t.Fatalf("penstock %s: %d\n%s", strings.Join(s.args, " "), code, out)
		}
	}
}

// checkPopulated asserts that everything populate made is there and readable.
func checkPopulated(t *testing.T, p *proc) {
	t.Helper()
	app := populatedApp
	for _, s := range []struct {
		args []string
		want []string
	}{
		{[]string{"queue", "list", "--app", app}, []string{`"orders"`}},
		{[]string{"queue", "stats", "--app", app, "orders"}, []string{`"depth": 2`}},
		{[]string{"exchange", "list", "--app", app}, []string{`"events"`, `"order.*"`}},
		{[]string{"secrets", "list", "--app", app}, []string{"db-password"}},
		{[]string{"audit", "verify"}, []string{"ok: "}},
		{[]string{"audit", "list", "--action", "secret.write"}, []string{"db-password"}},
	} {
		code, out := p.cli("", s.args...)
		for _, w := range s.want {
			if code != 0 || !strings.Contains(out, w) {
				t.Fatalf("penstock %s: exit %d, want %q:\n%s\nserver log:\n%s", strings.Join(s.args, " "), code, w, out, p.logs.String())
			}
		}
	}
}

// populated is a stopped data directory made by populate, with the CLI home that holds its
// administrator's session and the address that session names; copies of it are cheap.
type populated struct{ dir, home, addr string }

func newPopulated(t *testing.T) populated {
	t.Helper()
	dir := t.TempDir()
	p := serve(t, dir)
	populate(t, p)
	if err := p.stop(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	return populated{dir: dir, home: p.home, addr: strings.TrimPrefix(p.api, "https://")}
}

// copyTo makes a copy of the stopped data directory.
func (pd populated) copy(t *testing.T) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "data")
	if out, err := exec.Command("cp", "-a", pd.dir, dst).CombinedOutput(); err != nil {
		t.Fatalf("copy data directory: %v %s", err, out)
	}
	return dst
}

// serve starts a server on dir with the session of the populated directory.
func (pd populated) serve(t *testing.T, dir string, env ...string) *proc {
	t.Helper()
	p := serveEnv(t, dir, env, "--listen", pd.addr)
	p.home = pd.home
	return p
}

// waitExit waits for a server that is to die by itself (a crash point).
func (p *proc) waitExit() {
	p.t.Helper()
	select {
	case <-p.exited:
	case <-time.After(60 * time.Second):
		p.t.Fatalf("penstock did not die at its crash point:\n%s", p.logs.String())
	}
}

// Master key rotation, a clean stop, then starts: everything is still there, the store key is
// the same, and the old master key is gone.
func TestRotateMasterThenRestartKeepsEverything(t *testing.T) {
	pd := newPopulated(t)
	p := pd.serve(t, pd.dir)
	oldMaster, _ := os.ReadFile(filepath.Join(pd.dir, "master.key"))
	if code, out := p.cli("", "keys", "rotate-master"); code != 0 {
		t.Fatalf("rotate-master: %d %s", code, out)
	}
	checkPopulated(t, p)
	for range 2 {
		if err := p.stop(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		p = pd.serve(t, pd.dir)
		checkPopulated(t, p)
	}
	newMaster, _ := os.ReadFile(filepath.Join(pd.dir, "master.key"))
	if string(newMaster) == string(oldMaster) {
		t.Fatal("master.key unchanged by rotate-master")
	}
	if _, err := os.Stat(filepath.Join(pd.dir, "master.key.next")); err == nil {
		t.Fatal("master.key.next left behind")
	}
}

// A kill -9 at each step of a master rotation and of a data-key rotation, then a start:
// everything is readable, and the rotation finishes (at the start, or when asked again).
func TestRotationKilledAtEachStepLosesNothing(t *testing.T) {
	pd := newPopulated(t)
	for _, c := range []struct {
		point string
		args  []string
	}{
		{"rotate-master/next-written", []string{"keys", "rotate-master"}},
		{"rotate-master/scope-rewrapped", []string{"keys", "rotate-master"}},
		{"rotate-master/scope-rewrapped#2", []string{"keys", "rotate-master"}},
		{"rotate-master/verified", []string{"keys", "rotate-master"}},
		{"rotate-master/store-key-sealed", []string{"keys", "rotate-master"}},
		{"rotate-master/installed", []string{"keys", "rotate-master"}},
		{"rotate/job-recorded", []string{"keys", "rotate", "--scope", populatedApp}},
		{"rotate/keyset-written", []string{"keys", "rotate", "--scope", populatedApp}},
		{"reencrypt/record", []string{"keys", "rotate", "--scope", populatedApp}},
	} {
		t.Run(strings.ReplaceAll(c.point, "/", "-"), func(t *testing.T) {
			dir := pd.copy(t)
			oldMaster, _ := os.ReadFile(filepath.Join(dir, "master.key"))
			p := pd.serve(t, dir, "PENSTOCK_CRASHPOINT="+c.point)
			p.cli("", c.args...) // the server dies under it
			p.waitExit()
			p = pd.serve(t, dir)
			checkPopulated(t, p)
			if code, out := p.cli("", c.args...); code != 0 {
				t.Fatalf("penstock %s after the crash: %d %s", strings.Join(c.args, " "), code, out)
			}
			checkPopulated(t, p)
			code, out := p.cli("", "keys", "status", "-o", "table")
			if code != 0 || strings.Contains(out, "previous master key") {
				t.Fatalf("keys status: %d\n%s", code, out)
			}
			newMaster, _ := os.ReadFile(filepath.Join(dir, "master.key"))
			if c.args[1] == "rotate-master" && string(newMaster) == string(oldMaster) {
				t.Fatal("the master key was not rotated")
			}
		})
	}
}

// serveFails runs serve on dir and returns its exit code and output; it must exit by itself.
func serveFails(t *testing.T, dir string) (int, string) {
	t.Helper()
	cmd := exec.Command(binary, "serve", "--data-dir", dir, "--listen", "127.0.0.1:0")
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("serve did not refuse to start:\n%s", out)
	}
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	}
	return code, string(out)
}

// listing is every file of dir with its size and contents' hash, to prove a refusal wrote
// nothing.
func listing(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		out[rel] = string(b)
		return nil
	})
	return out
}

// A missing or damaged key file next to existing data is a refusal that names the file; ten
// retries write nothing, and putting the file back starts the same platform.
func TestMissingKeyFilesAreRefusedNotReplaced(t *testing.T) {
	pd := newPopulated(t)
	for _, c := range []struct {
		file, damage, want string
	}{
		{"master.key", "remove", "master.key is missing"},
		{"jetstream.keys", "remove", "jetstream.keys is missing"},
		{"engine.token", "remove", "engine.token is missing"},
		{"tls/ca.key", "remove", "tls/ca.key is missing"},
		{"tls/ca.crt", "remove", "tls/ca.crt is missing"},
		{"master.key", "garbage", "must hold 64 hex characters"},
		{"jetstream.keys", "garbage", "jetstream.keys is damaged"},
		{"master.key", "other", "which is not configured"},
		// A marker that says the first start never finished (edited, or an interrupted first
		// start next to data): what is sealed or written already still protects the file.
		{"master.key", "remove+initializing", "master.key is missing"},
		{"jetstream.keys", "remove+initializing", "jetstream.keys is missing"},
		{"tls/ca.key", "remove+initializing", "tls/ca.key is missing"},
	} {
		t.Run(strings.ReplaceAll(c.file, "/", "-")+"-"+c.damage, func(t *testing.T) {
			dir := pd.copy(t)
			path := filepath.Join(dir, c.file)
			orig, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			switch c.damage {
			case "remove+initializing":
				os.WriteFile(filepath.Join(dir, "penstock-init.json"), []byte(`{"state":"initializing"}`+"\n"), 0o600)
				fallthrough
			case "remove":
				os.Remove(path)
			case "garbage":
				os.WriteFile(path, []byte("{not a key\n"), 0o600)
			case "other":
				os.WriteFile(path, []byte(strings.Repeat("ab", 32)+"\n"), 0o600)
			}
			before := listing(t, dir)
			for i := range 10 {
				code, out := serveFails(t, dir)
				if code == 0 || !strings.Contains(out, c.want) {
					t.Fatalf("try %d: exit %d, want a refusal with %q:\n%s", i, code, c.want, out)
				}
				if strings.Contains(out, "one-time password") {
					t.Fatalf("try %d: a refused start printed a first-start password:\n%s", i, out)
				}
				if strings.Count(strings.TrimSpace(lastLine(out)), "\n") != 0 || strings.Contains(out, "goroutine ") {
					t.Fatalf("try %d: the refusal is not one line:\n%s", i, out)
				}
				after := listing(t, dir)
				delete(after, "LOCK")
				delete(before, "LOCK")
				for f, b := range after {
					if before[f] != b {
						t.Fatalf("try %d: the refused start wrote %s", i, f)
					}
				}
				if len(after) != len(before) {
					t.Fatalf("try %d: the refused start removed files: %d before, %d after", i, len(before), len(after))
				}
			}
			if err := os.WriteFile(path, orig, 0o600); err != nil {
				t.Fatal(err)
			}
			p := pd.serve(t, dir)
			checkPopulated(t, p)
		})
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// A cut or a flipped byte in a block of a queue, a KV bucket or the audit stream is named,
// with the numbers, by doctor on the stopped directory and by the server after it starts
// (readiness, the audit log); the undamaged rest is served.
func TestDamagedStreamsAreNamed(t *testing.T) {
	dir := t.TempDir()
	p := serve(t, dir)
	populate(t, p)
	code, out := p.cli("", "apikey", "create", "--role", "developer", "--scope", populatedApp)
	key := between(out, `"key": "`, `"`)
	if code != 0 || key == "" {
		t.Fatalf("apikey create: %d %s", code, out)
	}
	c := p.client()
	base := "/v1/tenants/acme/environments/production/applications/shop/queues/orders"
	for b := range 30 {
		var msgs []map[string]string
		for i := range 100 {
			id := fmt.Sprintf("bulk-%d-%d", b, i)
			msgs = append(msgs, map[string]string{"id": id, "data": id + strings.Repeat(".", 200)})
		}
		if st, body, err := p.post(c, key, base+"/messages", map[string]any{"messages": msgs}); err != nil || st != 200 {
			t.Fatalf("publish: %d %v %s", st, err, body)
		}
	}
	if err := p.stop(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	pd := populated{dir: dir, home: p.home, addr: strings.TrimPrefix(p.api, "https://")}

	// Healthy: doctor says so.
	healthy := pd.copy(t)
	if code, out := doctor(t, healthy); code != 0 || !strings.Contains(out, "ok: no damage found") {
		t.Fatalf("doctor on a healthy directory: %d\n%s", code, out)
	}

	for _, c := range []struct {
		account, stream, damage string
	}{
		{"acme_production", "Q_shop_orders", "cut"},
		{"acme_production", "Q_shop_orders", "flip"},
		{"platform", "KV_penstock_secrets", "cut"},
		{"platform", "KV_penstock_secrets", "flip"},
		{"platform", "PENSTOCK_AUDIT", "cut"},
		{"platform", "PENSTOCK_AUDIT", "flip"},
	} {
		t.Run(c.stream+"-"+c.damage, func(t *testing.T) {
			d := pd.copy(t)
			blocks, _ := filepath.Glob(filepath.Join(d, "jetstream", c.account, "streams", c.stream, "msgs", "*.blk"))
			if len(blocks) == 0 {
				t.Fatalf("no blocks for %s", c.stream)
			}
			blk := blocks[len(blocks)-1]
			b, err := os.ReadFile(blk)
			if err != nil {
				t.Fatal(err)
			}
			switch c.damage {
			case "cut":
				b = b[:len(b)*6/10]
			case "flip": // inside the newest record, which is live in each of these streams
				b[len(b)-12] ^= 0x5a
			}
			if err := os.WriteFile(blk, b, 0o600); err != nil {
				t.Fatal(err)
			}
			name := c.account + " > " + c.stream
			record, _ := os.ReadFile(filepath.Join(d, "integrity.sealed"))
			code, out := doctor(t, d)
			if code != 1 || !strings.Contains(out, "DAMAGED") || !strings.Contains(out, name) {
				t.Fatalf("doctor: exit %d, want 1 naming %s:\n%s", code, name, out)
			}
			if after, _ := os.ReadFile(filepath.Join(d, "integrity.sealed")); string(after) != string(record) {
				t.Fatal("doctor without --accept changed the record")
			}
			p := pd.serve(t, d, "PENSTOCK_METRICS_LISTEN=127.0.0.1:0")
			var ready string
			for deadline := time.Now().Add(60 * time.Second); ; {
				st, body := p.get("/readyz")
				ready = body
				if st == 200 && strings.Contains(body, `"degraded"`) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("readiness never reported the damage: %d %s\n%s", st, body, p.logs.String())
				}
				time.Sleep(200 * time.Millisecond)
			}
			if c.account == "platform" && !strings.Contains(ready, name) {
				t.Fatalf("readiness does not name %s: %s", name, ready)
			}
			if c.account != "platform" && (strings.Contains(ready, c.account) || !strings.Contains(ready, `"damaged_tenant_streams":1`)) {
				t.Fatalf("readiness must count, not name, a tenant's stream: %s", ready)
			}
			metrics := between(p.logs.String(), `"metrics":"`, `"`)
			resp, err := http.Get("http://" + metrics + "/metrics")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if !strings.Contains(string(body), "\npenstock_streams_damaged 1\n") {
				t.Fatalf("metric penstock_streams_damaged is not 1:\n%s", grepLines(string(body), "penstock_streams"))
			}
			for deadline := time.Now().Add(30 * time.Second); ; { // audited just after it is shown
				code, out = p.cli("", "audit", "list", "--action", "platform.stream_damaged")
				if code == 0 && strings.Contains(out, c.stream) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("audit list: %d\n%s", code, out)
				}
				time.Sleep(100 * time.Millisecond)
			}
			// The rest is served.
			if code, out := p.cli("", "secrets", "list", "--app", populatedApp); c.stream != "KV_penstock_secrets" && (code != 0 || !strings.Contains(out, "db-password")) {
				t.Fatalf("secrets after damage elsewhere: %d %s", code, out)
			}
			if err := p.stop(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			// The finding stays until accepted.
			if code, out := doctor(t, d, "--quick"); code != 1 || !strings.Contains(out, name) {
				t.Fatalf("doctor after a restart: %d\n%s", code, out)
			}
			if code, out := doctor(t, d, "--accept"); code != 0 || !strings.Contains(out, "accepted") {
				t.Fatalf("doctor --accept: %d\n%s", code, out)
			}
		})
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func doctor(t *testing.T, dir string, extra ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(binary, append([]string{"doctor", "--data-dir", dir}, extra...)...)
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, string(out)
}

// A first start killed after it made the administrator (before or after giving it its role),
// before it printed the password or served: the next start finishes it with a new one-time
// password and the role, and a start after that is an ordinary one.
func TestInterruptedFirstStartFinishes(t *testing.T) {
	for _, point := range []string{"first-start/admin-created", "first-start/bootstrapped"} {
		t.Run(strings.ReplaceAll(point, "/", "-"), func(t *testing.T) { interruptedFirstStart(t, point) })
	}
}

func interruptedFirstStart(t *testing.T, point string) {
	dir := t.TempDir()
	cmd := exec.Command(binary, "serve", "--data-dir", dir, "--listen", "127.0.0.1:0")
	cmd.Env = append(os.Environ(), "PENSTOCK_CRASHPOINT="+point)
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("serve did not die at its crash point: %v\n%s", err, out)
	}
	if strings.Contains(string(out), "one-time password") {
		t.Fatalf("the crash point is after the password was printed:\n%s", out)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "penstock-init.json"))
	if !strings.Contains(string(b), `"initializing"`) {
		t.Fatalf("penstock-init.json after an interrupted first start: %s", b)
	}
	p := serve(t, dir)
	p.loginAsAdmin() // with the password this start printed
	if code, out := p.cli("", "tenant", "create", "acme"); code != 0 {
		t.Fatalf("tenant create: %d %s", code, out)
	}
	if err := p.stop(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(filepath.Join(dir, "penstock-init.json"))
	if !strings.Contains(string(b), `"complete"`) {
		t.Fatalf("penstock-init.json after a served start: %s", b)
	}
	home, addr := p.home, strings.TrimPrefix(p.api, "https://")
	p = serve(t, dir, "--listen", addr)
	p.home = home
	if strings.Contains(p.stdout.String(), "one-time password") {
		t.Fatal("a later start printed a first-start password")
	}
	if code, out := p.cli("", "tenant", "list"); code != 0 || !strings.Contains(out, "acme") {
		t.Fatalf("tenant list: %d %s", code, out)
	}
}

// What an ordinary life does to streams is not damage: messages that expire while the server
// is stopped, a queue deleted and made again under its name, and a clean stop while a native
// consumer acknowledges as fast as it can.
func TestOrdinaryRestartsAreNotDamage(t *testing.T) {
	dir := t.TempDir()
	p := serveEnv(t, dir, fabricEnv)
	key := setupQueue(t, p)
	app := "acme/production/shop"
	for _, s := range [][]string{
		{"queue", "create", "--app", app, "short", "--max-age", "2s", "--duplicate-window", "1s"},
		{"queue", "publish", "--app", app, "short", "--data", "expires"},
		{"queue", "create", "--app", app, "again"},
		{"queue", "publish", "--app", app, "again", "--data", "one"},
		{"queue", "publish", "--app", app, "again", "--data", "two"},
		{"queue", "delete", "--app", app, "again"},
		{"queue", "create", "--app", app, "again"},
	} {
		if code, out := p.cli("", s...); code != 0 {
			t.Fatalf("penstock %s: %d %s", strings.Join(s, " "), code, out)
		}
	}
	expiresAt := time.Now().Add(2 * time.Second)
	c := p.client()
	base := "/v1/tenants/acme/environments/production/applications/shop/queues/orders"
	for b := range 40 {
		var msgs []map[string]string
		for i := range 100 {
			msgs = append(msgs, map[string]string{"id": fmt.Sprintf("o-%d-%d", b, i), "data": "x"})
		}
		if st, body, err := p.post(c, key, base+"/messages", map[string]any{"messages": msgs}); err != nil || st != 200 {
			t.Fatalf("publish: %d %v %s", st, err, body)
		}
	}
	nc, err := nats.Connect(p.nats, nats.UserInfo("acme/production", key),
		nats.Secure(&tls.Config{RootCAs: p.caPool(), ServerName: "localhost"}), nats.MaxReconnects(0))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.NewWithAPIPrefix(nc, "penstock.js")
	cons, err := js.Consumer(t.Context(), "Q_shop_orders", "shop")
	if err != nil {
		t.Fatal(err)
	}
	var acked atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for !nc.IsClosed() {
			batch, err := cons.Fetch(50, jetstream.FetchMaxWait(time.Second))
			if err != nil {
				return
			}
			for m := range batch.Messages() {
				if m.Ack() == nil {
					acked.Add(1)
				}
			}
		}
	}()
	for deadline := time.Now().Add(60 * time.Second); acked.Load() < 500; {
		if time.Now().After(deadline) {
			t.Fatalf("the native consumer acknowledged %d messages in 60s", acked.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := p.stop(syscall.SIGTERM); err != nil { // while it acknowledges
		t.Fatal(err)
	}
	nc.Close()
	<-done
	// The condition is the clock itself: the short queue's message must pass its max age while
	// the server is stopped, so the start finds it expired rather than the running server.
	time.Sleep(time.Until(expiresAt))

	home, addr := p.home, strings.TrimPrefix(p.api, "https://")
	p = serveEnv(t, dir, fabricEnv, "--listen", addr)
	p.home = home
	if st, body := p.get("/readyz"); st != 200 || !strings.Contains(body, `"ready"`) {
		t.Fatalf("readiness after ordinary restarts: %d %s\n%s", st, body, grepLines(p.logs.String(), "stream damaged"))
	}
	for deadline := time.Now().Add(30 * time.Second); ; {
		code, out := p.cli("", "queue", "stats", "--app", app, "short")
		if code == 0 && strings.Contains(out, `"depth": 0`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the short queue's message did not expire: %s", out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := p.stop(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code, out := doctor(t, dir); code != 0 || !strings.Contains(out, "ok: no damage found") {
		t.Fatalf("doctor: %d\n%s", code, out)
	}
	p = serveEnv(t, dir, fabricEnv, "--listen", addr)
	p.home = home
	if code, out := p.cli("", "audit", "list", "--action", "platform.stream_damaged"); code != 0 || strings.Contains(out, "stream_damaged") {
		t.Fatalf("damage was audited: %d\n%s", code, out)
	}
}
