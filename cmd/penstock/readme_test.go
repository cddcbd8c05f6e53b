package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/penstock/penstock/internal/testenv"
)

// The README's placeholders, filled as a user would. Every $UPPER_CASE name a block uses must
// be one of these (or CODE), so the README cannot grow a placeholder the test leaves empty.
//
//   - ONE_TIME_PASSWORD: what serve printed on its first start
//   - NEW_PASSWORD: one that meets the password rules the README states
//   - CODE: the authenticator's code for the secret the last `mfa enrol` printed, computed
//     just before the block that uses it
//   - DB_PASSWORD: PostgreSQL's password for postgres (the machine's trusts loopback)
var readmeFixed = map[string]string{
	"NEW_PASSWORD": "Fresh-Readme-Pw-7",
	"DB_PASSWORD":  "ignored-under-trust-auth",
}

// readmeTable is the table the README's pipeline loads, in the postgres database.
const readmeTable = "shop_orders"

// readmeSections must each have run at least one block: a README whose blocks vanish or stop
// being ```sh fails here rather than passing by running nothing.
var readmeSections = []string{"Two commands", "Queues in one minute", "Pipelines in one minute", "Access", "Keys and secrets"}

type readmeBlock struct {
	section string // the ## heading it is under
	line    int    // of its opening fence in README.md
	text    string
}

// readmeBlocks returns README.md's ```sh blocks in order.
func readmeBlocks(t *testing.T) []readmeBlock {
	t.Helper()
	f, err := os.Open("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var (
		blocks  []readmeBlock
		section string
		cur     *readmeBlock
	)
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case cur != nil && line == "```":
			blocks = append(blocks, *cur)
			cur = nil
		case cur != nil:
			cur.text += line + "\n"
		case line == "```sh":
			cur = &readmeBlock{section: section, line: n}
		case strings.HasPrefix(line, "## "):
			section = strings.TrimPrefix(line, "## ")
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if cur != nil {
		t.Fatalf("README.md:%d: the ```sh block is never closed", cur.line)
	}
	return blocks
}

// needTool skips without a command the README uses, or fails under CI, which has them all.
func needTool(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is not installed: the README uses it", name)
		}
		t.Skipf("%s is not installed: the README uses it", name)
	}
}

var placeholder = regexp.MustCompile(`\$\{?([A-Z][A-Z0-9_]*)`)

// The README, run as a new user pastes it: every ```sh block in order, against one fresh
// server, each with bash -euo pipefail in the directory serve runs in. The only changes are
// `go run ./cmd/penstock`, which becomes the built binary pointed at the test's server (a
// random port, not 8443), 8443 in URLs, and the placeholders, which the test fills.
func TestReadme(t *testing.T) {
	for _, tool := range []string{"bash", "curl", "psql"} {
		needTool(t, tool)
	}
	testenv.PostgreSQL(t) // skips without PostgreSQL, fails under CI
	ctx := context.Background()
	pg, err := pgx.Connect(ctx, strings.Replace(testenv.PostgreSQLDSN, "dbname=test", "dbname=postgres", 1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Close(ctx) })
	// The rows checked below must be this run's, not a previous one's.
	dropTable := func() {
		if _, err := pg.Exec(ctx, "DROP TABLE IF EXISTS "+readmeTable); err != nil {
			t.Error(err)
		}
	}
	dropTable()
	t.Cleanup(dropTable)

	blocks := readmeBlocks(t)
	if len(blocks) == 0 || blocks[0].text != "go run ./cmd/penstock serve\n" {
		t.Fatal("README.md's first ```sh block is not `go run ./cmd/penstock serve`")
	}
	work := t.TempDir()
	// The data directory serve makes by default in the directory it runs in; serve picks a free
	// port.
	p := serve(t, filepath.Join(work, "penstock-data"))
	u, err := url.Parse(p.api)
	if err != nil {
		t.Fatal(err)
	}
	port := u.Port()
	penstock := filepath.Join(t.TempDir(), "penstock")
	// Client commands default to https://127.0.0.1:8443; the test's server is elsewhere, so
	// they get --server. The commands without a server take none.
	wrapper := fmt.Sprintf(`#!/bin/sh
case "$1" in serve|doctor|config|version|help) exec %[1]q "$@";; esac
case "$1 $2" in "pipeline validate") exec %[1]q "$@";; esac
exec %[1]q "$@" --server %[2]q
`, binary, p.api)
	if err := os.WriteFile(penstock, []byte(wrapper), 0o700); err != nil {
		t.Fatal(err)
	}

	env := []string{"HOME=" + p.home, "XDG_CONFIG_HOME=" + p.home}
	for _, kv := range os.Environ() {
		if name, _, _ := strings.Cut(kv, "="); !strings.HasPrefix(name, "PENSTOCK_") && !strings.HasPrefix(name, "PG") {
			env = append(env, kv)
		}
	}
	fill := map[string]string{"ONE_TIME_PASSWORD": p.bootstrapPassword()}
	for k, v := range readmeFixed {
		fill[k] = v
	}

	ran := map[string]int{}
	var outputs []string
	for _, b := range blocks[1:] {
		if strings.HasPrefix(b.text, "go test ") {
			continue // the test suite this test is part of
		}
		for _, m := range placeholder.FindAllStringSubmatch(b.text, -1) {
			if m[1] == "CODE" {
				fill["CODE"] = mfaCode(t, outputs, b)
				continue
			}
			if _, ok := fill[m[1]]; !ok {
				t.Fatalf("README.md:%d uses $%s, which TestReadme does not fill:\n%s", b.line, m[1], b.text)
			}
		}
		script := strings.ReplaceAll(b.text, "go run ./cmd/penstock", penstock)
		script = strings.ReplaceAll(script, "127.0.0.1:8443", "127.0.0.1:"+port)
		script = strings.ReplaceAll(script, "localhost:8443", "localhost:"+port)
		blockEnv := env
		for k, v := range fill {
			blockEnv = append(blockEnv, k+"="+v)
		}
		bctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
		cmd := exec.CommandContext(bctx, "bash", "-euo", "pipefail", "-c", script)
		cmd.Dir, cmd.Env = work, blockEnv
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("README.md:%d (%s) failed: %v\n--- block\n%s--- output\n%s\n--- server log\n%s",
				b.line, b.section, err, b.text, out, p.logs.String())
		}
		t.Logf("README.md:%d (%s): ok", b.line, b.section)
		outputs = append(outputs, string(out))
		ran[b.section]++
		switch b.section {
		case "Queues in one minute":
			checkReadmeQueue(t, b, string(out))
		case "Pipelines in one minute":
			checkReadmePipeline(t, p, pg, b)
		}
	}
	for _, s := range readmeSections {
		if ran[s] == 0 {
			t.Errorf("no ```sh block of the README's section %q ran", s)
		}
	}
}

// mfaCode is the code an authenticator shows for the secret the last `mfa enrol` printed.
func mfaCode(t *testing.T, outputs []string, b readmeBlock) string {
	t.Helper()
	for i := len(outputs) - 1; i >= 0; i-- {
		if _, after, ok := strings.Cut(outputs[i], "type the secret: "); ok {
			return testenv.TOTPCode(t, strings.Fields(after)[0], time.Now())
		}
	}
	t.Fatalf("README.md:%d uses $CODE, but no block before it printed an MFA secret (mfa enrol)", b.line)
	return ""
}

// checkReadmeQueue checks that the queue block consumed the message it published.
func checkReadmeQueue(t *testing.T, b readmeBlock, out string) {
	t.Helper()
	m := regexp.MustCompile(`queue publish .*--id (\S+) --data '([^']*)'`).FindStringSubmatch(b.text)
	if m == nil {
		t.Fatalf("README.md:%d publishes no message with --id and --data for the test to follow:\n%s", b.line, b.text)
	}
	data, _ := json.Marshal(m[2]) // piped, consume prints the payload as a JSON string
	for _, want := range []string{`"id": "` + m[1] + `"`, `"data": ` + string(data)} {
		if !strings.Contains(out, want) {
			t.Fatalf("README.md:%d did not consume the message it published (no %s):\n%s", b.line, want, out)
		}
	}
}

// checkReadmePipeline checks that the pipeline block's run succeeded and loaded the CSV's
// rows that are not void, as the README says.
func checkReadmePipeline(t *testing.T, p *proc, pg *pgx.Conn, b readmeBlock) {
	t.Helper()
	if code, out := p.cli("", "pipeline", "runs", "--app", "acme/production/shop", "orders-in"); code != 0 || !strings.Contains(out, `"status": "succeeded"`) {
		t.Fatalf("README.md:%d: no succeeded run: %d\n%s\n%s", b.line, code, out, p.logs.String())
	}
	rows, err := pg.Query(context.Background(), "SELECT id, customer, cents FROM "+readmeTable+" ORDER BY id")
	if err != nil {
		t.Fatalf("README.md:%d: %v", b.line, err)
	}
	var got []string
	for rows.Next() {
		var id, cents int64
		var customer string
		if err := rows.Scan(&id, &customer, &cents); err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%d %s %d", id, customer, cents))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if want := "1 ALICE 4200, 3 CAROL 735"; strings.Join(got, ", ") != want {
		t.Fatalf("README.md:%d: %s holds %q, want %q (the README's CSV without the void order)", b.line, readmeTable, got, want)
	}
}
