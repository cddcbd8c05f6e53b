package main

import (
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
)

// The backup commands as docs/operations.md gives them: create, list and verify against a
// running server; then, with the server stopped, a restore into a new directory holding only
// the master key, and serve --restore-from on another; both serve what was backed up.
func TestBackupCommands(t *testing.T) {
	dir, target := t.TempDir(), t.TempDir()
	env := []string{"PENSTOCK_BACKUP_TARGET=file://" + target, "PENSTOCK_BACKUP_SCHEDULE=0"}
	p := serveEnv(t, dir, env)
	p.loginAsAdmin()
	cli := func(p *proc, want int, args ...string) string {
		t.Helper()
		code, out := p.cli("", args...)
		if code != want {
			t.Fatalf("penstock %s: exit %d, want %d:\n%s", strings.Join(args, " "), code, want, out)
		}
		return out
	}
	app := "acme/production/shop"
	cli(p, 0, "tenant", "create", "acme")
	cli(p, 0, "app", "create", "--env", "acme/production", "shop")
	cli(p, 0, "queue", "create", "--app", app, "orders")
	for _, id := range []string{"o-1", "o-2", "o-3"} {
		cli(p, 0, "queue", "publish", "--app", app, "orders", "--id", id, "--data", "order "+id)
	}
	code, out := p.cli("", "apikey", "create", "--role", "developer", "--scope", app)
	var created struct {
		Key string `json:"key"`
	}
	if err := firstJSON(out, &created); code != 0 || err != nil {
		t.Fatalf("apikey create: %d %v\n%s", code, err, out)
	}
	out = cli(p, 0, "backup", "create", "--wait", "-o", "table")
	id := regexp.MustCompile(`backup (\d{8}T\d{6}Z-[0-9a-f]{6}): \d+ parts`).FindStringSubmatch(out)
	if id == nil {
		t.Fatalf("backup create:\n%s", out)
	}
	if out := cli(p, 0, "backup", "list", "-o", "table"); !strings.Contains(out, id[1]) {
		t.Fatalf("backup list:\n%s", out)
	}
	if out := cli(p, 0, "backup", "verify", id[1], "--wait", "-o", "table"); !strings.Contains(out, "verifies: signature good") {
		t.Fatalf("backup verify:\n%s", out)
	}
	if out := cli(p, 1, "backup", "verify", "../etc", "--wait"); !strings.Contains(out, `backup id "../etc"`) {
		t.Fatalf("a malformed id:\n%s", out)
	}
	if err := p.stop(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	keyOnly := func() string {
		d := t.TempDir()
		key, err := os.ReadFile(filepath.Join(dir, "master.key"))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "master.key"), key, 0o600); err != nil {
			t.Fatal(err)
		}
		return d
	}

	// As docs/operations.md says: the master key, and the CA clients trust.
	restored := keyOnly()
	if err := os.MkdirAll(filepath.Join(restored, "tls"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"ca.crt", "ca.key"} {
		b, err := os.ReadFile(filepath.Join(dir, "tls", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(restored, "tls", f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	b, err := exec.Command(binary, "backup", "restore", "--to-data-dir", restored, "--from", "file://"+target, "-o", "table").CombinedOutput()
	if err != nil || !strings.Contains(string(b), "backup "+id[1]+" restored into "+restored) {
		t.Fatalf("backup restore --to-data-dir: %v\n%s", err, b)
	}
	if a, b := mustReadFile(t, filepath.Join(dir, "tls", "ca.crt")), mustReadFile(t, filepath.Join(restored, "tls", "ca.crt")); string(a) != string(b) {
		t.Fatal("the restored directory has a new CA")
	}
	b, err = exec.Command(binary, "backup", "restore", "--to-data-dir", restored, "--from", "file://"+target).CombinedOutput()
	if err == nil || !strings.Contains(string(b), "already holds a platform") {
		t.Fatalf("a second restore into the same directory: %v\n%s", err, b)
	}
	for _, q := range []*proc{
		serve(t, restored),
		serve(t, keyOnly(), "--restore-from", "file://"+target),
	} {
		// The API key is part of what was restored.
		req, _ := http.NewRequest("GET", q.api+"/v1/tenants/acme/environments/production/applications/shop/queues/orders", nil)
		req.Header.Set("Authorization", "Bearer "+created.Key)
		resp, err := q.client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(body), `"depth":3`) {
			t.Fatalf("restored queue: %d %s\n%s", resp.StatusCode, body, q.logs.String())
		}
		if err := q.stop(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
	}
}

func mustReadFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
