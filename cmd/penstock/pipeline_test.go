package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/penstock/penstock/internal/testenv"
)

// The pipeline commands, then kill -9 in the middle of a CSV -> PostgreSQL upsert run: after a
// restart the run is marked interrupted, the next run resumes from the last checkpoint, and
// every row is in the table exactly once with the right values.
func TestPipelineKill9ResumesWithEveryRowOnce(t *testing.T) {
	ctx := context.Background()
	pg := testenv.PostgreSQL(t)
	tbl := testenv.Table(t, pg, "kill9", "id bigint PRIMARY KEY, name text, cents bigint")

	dir := t.TempDir()
	p := serveEnv(t, dir, fabricEnv)
	p.loginAsAdmin()
	for _, s := range [][]string{
		{"tenant", "create", "acme"},
		{"app", "create", "--env", "acme/production", "shop"},
		{"egress", "set", "--tenant", "acme", "127.0.0.1:5432"},
	} {
		if code, out := p.cli("", s...); code != 0 {
			t.Fatalf("penstock %s: %d\n%s", strings.Join(s, " "), code, out)
		}
	}
	code, out := p.cli("", "apikey", "create", "--role", "developer", "--scope", "acme/production/shop")
	var created struct {
		Key string `json:"key"`
	}
	if err := firstJSON(out, &created); code != 0 || err != nil {
		t.Fatalf("apikey create: %d %v\n%s", code, err, out)
	}
	key := created.Key
	const rows = 200000
	var csv strings.Builder
	csv.WriteString("id,name,amount\n")
	for i := 1; i <= rows; i++ {
		fmt.Fprintf(&csv, "%d,row %d,%d.%02d\n", i, i, i/100, i%100)
	}
	files := filepath.Join(dir, "files", "acme")
	if err := os.MkdirAll(files, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(files, "big.csv"), []byte(csv.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	spec := filepath.Join(t.TempDir(), "big.yaml")
	os.WriteFile(spec, []byte(fmt.Sprintf(`
name: big
source: {type: file, path: big.csv}
transforms:
  - map: '{id: int(id), name: name, cents: int(float(amount) * 100 + 0.5)}'
sink: {type: postgres, host: 127.0.0.1, database: test, user: postgres, sslmode: disable, table: %s, mode: upsert, key: [id]}
batch: {size: 500}
`, tbl)), 0o600)
	app := "acme/production/shop"
	// validate works offline: no server, no credentials.
	if out, err := exec.Command(binary, "pipeline", "validate", "-f", spec).CombinedOutput(); err != nil || !strings.Contains(string(out), "valid (pipeline big") {
		t.Fatalf("validate: %v %s", err, out)
	}
	if code, out := p.cli("", "pipeline", "apply", "--app", app, "-f", spec); code != 0 || !strings.Contains(out, `"version": 1`) {
		t.Fatalf("apply: %d %s", code, out)
	}
	if code, out := p.cli("", "pipeline", "run-now", "--app", app, "big"); code != 0 {
		t.Fatalf("run-now: %d %s", code, out)
	}
	count := func() int {
		var n int
		if err := pg.QueryRow(ctx, "SELECT count(*) FROM "+tbl).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	deadline := time.Now().Add(60 * time.Second)
	for count() < rows/10 {
		if time.Now().After(deadline) {
			t.Fatalf("the run did not get going: %d rows\n%s", count(), p.logs.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	p.stop(syscall.SIGKILL)
	atKill := count()
	if atKill >= rows {
		t.Fatalf("the run finished before the kill (%d rows); make the input larger", atKill)
	}
	t.Logf("killed with %d of %d rows in the table", atKill, rows)

	p = serveEnv(t, dir, fabricEnv)
	// The saved session names the old address; a developer key of the application goes on.
	t.Setenv("PENSTOCK_API_KEY", key)
	_, out = p.cli("", "pipeline", "runs", "--app", app, "big")
	if !strings.Contains(out, `"status": "interrupted"`) {
		t.Fatalf("runs after the restart:\n%s", out)
	}
	if code, out := p.cli("", "pipeline", "run-now", "--app", app, "big"); code != 0 {
		t.Fatalf("run-now after restart: %d %s", code, out)
	}
	// Generous: the server under test is built with -race and CI runs packages side by side.
	// Each poll starts a CLI process, so poll once a second.
	deadline = time.Now().Add(600 * time.Second)
	for {
		_, out = p.cli("", "pipeline", "runs", "--app", app, "big")
		if strings.Contains(out, `"status": "succeeded"`) {
			break
		}
		if strings.Contains(out, `"status": "failed"`) || time.Now().After(deadline) {
			t.Fatalf("resumed run:\n%s\n%s", out, p.logs.String())
		}
		time.Sleep(time.Second)
	}
	var n, distinct int
	var sum int64
	if err := pg.QueryRow(ctx, "SELECT count(*), count(DISTINCT id), sum(cents) FROM "+tbl).Scan(&n, &distinct, &sum); err != nil {
		t.Fatal(err)
	}
	var want int64
	for i := int64(1); i <= rows; i++ {
		want += i
	}
	if n != rows || distinct != rows || sum != want {
		t.Fatalf("after resume: %d rows, %d distinct, cents sum %d; want %d, %d, %d", n, distinct, sum, rows, rows, want)
	}
	// The resumed run started at the checkpoint, not at the top: it read fewer rows than all,
	// and at least those the killed run had not committed.
	var runs struct {
		Runs []struct {
			Status string `json:"status"`
			In     int    `json:"records_in"`
		} `json:"runs"`
	}
	if err := json.Unmarshal([]byte(out), &runs); err != nil || len(runs.Runs) != 2 {
		t.Fatalf("runs: %v %s", err, out)
	}
	if in := runs.Runs[0].In; in >= rows || in < rows-atKill {
		t.Fatalf("the resumed run read %d rows; the killed one had committed %d of %d", in, atKill, rows)
	}
	if code, out := p.cli("", "pipeline", "logs", "--app", app, "big"); code != 0 || !strings.Contains(out, "run ended") {
		t.Fatalf("logs: %d %s", code, out)
	}
	if code, out := p.cli("", "pipeline", "delete", "--app", app, "big"); code != 0 {
		t.Fatalf("delete: %d %s", code, out)
	}
	if _, out := p.cli("", "pipeline", "list", "--app", app); !strings.Contains(out, `"pipelines": []`) {
		t.Fatalf("list after delete: %s", out)
	}
}
