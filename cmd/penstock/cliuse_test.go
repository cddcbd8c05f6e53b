package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// What a person sees of the CLI: payloads as they were sent, consume --ack, a run followed to
// its end with its totals or its error (and the exit status to match), a re-encryption waited
// for, and a password change without a terminal told how to give the passwords.
func TestCLIShowsWorkAsItHappens(t *testing.T) {
	dir := t.TempDir()
	p := serve(t, dir)
	p.loginAsAdmin()
	app := "acme/production/shop"
	cli := func(stdin string, want int, args ...string) string {
		t.Helper()
		code, out := p.cli(stdin, args...)
		if code != want {
			t.Fatalf("penstock %s: exit %d, want %d:\n%s", strings.Join(args, " "), code, want, out)
		}
		return out
	}
	cli("", 0, "tenant", "create", "acme")
	cli("", 0, "app", "create", "--env", "acme/production", "shop")
	cli("", 0, "queue", "create", "--app", app, "orders")
	cli("", 0, "queue", "publish", "--app", app, "orders", "--id", "order-1", "--data", `{"total":42}`)
	cli("line one\nline two\n", 0, "queue", "publish", "--app", app, "orders")

	out := cli("", 0, "queue", "consume", "--app", app, "orders", "--max", "10", "--wait", "5s", "--ack", "-o", "table")
	for _, want := range []string{"id=order-1", "\n{\"total\":42}\n", "\nline one\nline two\n", "acknowledged 2 message(s)"} {
		if !strings.Contains(out, want) {
			t.Fatalf("consume --ack: no %q in:\n%s", want, out)
		}
	}
	// Piped, the answer is JSON; the acks of --ack took effect before it exited.
	if out := cli("", 0, "queue", "stats", "--app", app, "orders"); !strings.Contains(out, `"depth": 0`) || !strings.Contains(out, `"acked": 2`) {
		t.Fatalf("after consume --ack:\n%s", out)
	}

	files := filepath.Join(dir, "files", "acme")
	if err := os.MkdirAll(files, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(files, "in.csv"), []byte("id,name\n1,ada\n2,bob\nx,bad\n3,cy\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	spec := filepath.Join(t.TempDir(), "copy.yaml")
	os.WriteFile(spec, []byte("name: copy\nsource: {type: file, path: in.csv}\ntransforms:\n  - map: '{id: int(id), name: upper(name)}'\nsink: {type: file, path: out/copy.jsonl}\nschedule: every 1h\n"), 0o600)
	cli("", 0, "pipeline", "apply", "--app", app, "-f", spec)
	out = cli("", 0, "pipeline", "run-now", "--app", app, "copy", "--wait", "-o", "table")
	if !strings.Contains(out, "succeeded: 4 read, 3 written, 0 filtered, 1 dead-lettered") || !strings.Contains(out, "copy-dlq") {
		t.Fatalf("run-now --wait:\n%s", out)
	}
	// Without --wait and piped: the run's id, as runs lists it.
	out = cli("", 0, "pipeline", "run-now", "--app", app, "copy")
	id := between(out, `"run": "`, `"`)
	if id == "" {
		t.Fatalf("run-now without --wait:\n%s", out)
	}
	waitUntil(t, time.Minute, "the run started without --wait ends", func() bool {
		_, runs := p.cli("", "pipeline", "runs", "--app", app, "copy")
		return strings.Contains(runs, `"id": "`+id+`"`) && !strings.Contains(runs, `"status": "running"`)
	})
	// A run that fails is an error, with the run's own.
	if err := os.Remove(filepath.Join(files, "in.csv")); err != nil {
		t.Fatal(err)
	}
	out = cli("", 1, "pipeline", "run-now", "--app", app, "copy", "--wait")
	if !strings.Contains(out, "failed: source: open in.csv") || !strings.Contains(out, "no such file or directory") {
		t.Fatalf("a failed run:\n%s", out)
	}

	cli("s3cret\n", 0, "secrets", "put", "--app", app, "token")
	out = cli("", 0, "keys", "rotate", "--scope", app, "--wait", "-o", "table")
	if !strings.Contains(out, "primary key is now version 2;") || !strings.Contains(out, "re-encrypted") {
		t.Fatalf("keys rotate --wait:\n%s", out)
	}

	out = cli("Fresh-Platform-Pw-9\n", 1, "password")
	if !strings.Contains(out, "two lines of standard input") || strings.Contains(out, "Fresh-Platform-Pw-9") {
		t.Fatalf("password with one line:\n%s", out)
	}
	out = cli("Fresh-Platform-Pw-9\nshort\n", 1, "password")
	if !strings.Contains(out, "at least 12 characters with an upper-case letter") {
		t.Fatalf("a weak password does not say the rules:\n%s", out)
	}
}
