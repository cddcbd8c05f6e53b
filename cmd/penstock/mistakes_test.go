package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// runSplit runs the penstock binary with args (as a client of p when p is not nil) and returns its
// exit code, standard output and standard error apart.
func runSplit(t *testing.T, p *proc, stdin string, args ...string) (int, string, string) {
	t.Helper()
	home := t.TempDir()
	if p != nil {
		args = append(args, "--server", p.api, "--data-dir", p.dataDir)
		home = p.home
	}
	cmd := exec.Command(binary, args...)
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Env = append(os.Environ(), "HOME="+home, "XDG_CONFIG_HOME="+home)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, out.String(), errOut.String()
}

// The five mistakes of issue 15 (a wrong password, an unknown flag, bad YAML, a bad name, a
// missing queue) each fail with one line on standard error that names what is wrong and what
// to do, and nothing else: no usage dump, no Go error chain.
func TestFiveMistakes(t *testing.T) {
	p := serve(t, t.TempDir())
	p.loginAsAdmin()
	for _, s := range [][]string{{"tenant", "create", "acme"}, {"app", "create", "--env", "acme/production", "shop"}} {
		if code, out := p.cli("", s...); code != 0 {
			t.Fatalf("penstock %s: %d %s", strings.Join(s, " "), code, out)
		}
	}
	app := "acme/production/shop"
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("name: copy\nsource: {type: http\nsink:\n  type: files\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	const nameRule = "use 1 to 63 lower-case letters, digits and '-', starting with a letter or digit"
	for _, c := range []struct {
		mistake string
		server  bool
		stdin   string
		args    []string
		want    []string // the line holds each
	}{
		{"wrong password", true, "not-the-password\n", []string{"login", "--user", "admin"}, []string{
			"penstock: login failed: wrong user name or password; check --user and the password on standard input " +
				"(attempts are limited: after 5 failures in a row, logins are refused for 1m, doubling up to 1h)"}},
		{"unknown flag", true, "", []string{"queue", "create", "--app", app, "orders", "--colour", "blue"}, []string{
			"penstock: queue create: unknown flag --colour; run penstock queue create --help"}},
		// An unclosed { on line 2: the file, its true line and column, and what closes it.
		{"bad YAML", false, "", []string{"pipeline", "validate", "-f", bad}, []string{
			"penstock: " + bad + `:2:9: "{" is not closed: expected "," or "}" by line 3, column 5`}},
		{"bad name", true, "", []string{"queue", "create", "--app", app, "Bad_Name"}, []string{
			`penstock: queue name "Bad_Name" is not valid: ` + nameRule}},
		{"missing queue", true, "", []string{"queue", "stats", "--app", app, "nope"}, []string{
			`penstock: not_found: no such queue "nope" in acme/production/shop; see what exists with penstock queue list --app acme/production/shop`}},
	} {
		q := p
		if !c.server {
			q = nil
		}
		code, out, errOut := runSplit(t, q, c.stdin, c.args...)
		if code == 0 || out != "" || strings.Count(errOut, "\n") != 1 || !strings.HasSuffix(errOut, "\n") {
			t.Errorf("%s: exit %d, stdout %q, stderr %q: want a failure with one line on stderr", c.mistake, code, out, errOut)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(errOut, w) {
				t.Errorf("%s: %q lacks %q", c.mistake, errOut, w)
			}
		}
		for _, noise := range []string{"goroutine ", "strconv.", "Post \"", "Get \"", "HTTP 4", "body.", "path."} {
			if strings.Contains(errOut, noise) {
				t.Errorf("%s: %q has %q in it", c.mistake, errOut, noise)
			}
		}
	}

	// A user that does not exist gets the very same line as a wrong password.
	_, _, known := runSplit(t, p, "not-the-password\n", "login", "--user", "admin")
	_, _, unknown := runSplit(t, p, "not-the-password\n", "login", "--user", "nobody")
	if unknown != known {
		t.Errorf("an unknown user is told apart: %q, %q", unknown, known)
	}

	// An API key is printed once, with a warning on standard error; standard output stays the
	// JSON answer alone.
	code, out, errOut := runSplit(t, p, "", "apikey", "create", "--role", "developer", "--scope", app)
	var created struct {
		Key string `json:"key"`
	}
	if err := json.Unmarshal([]byte(out), &created); code != 0 || err != nil || !strings.HasPrefix(created.Key, "psk_") {
		t.Fatalf("apikey create: %d %v\n%s", code, err, out)
	}
	if errOut != "the key is shown once: store it now (it cannot be read back)\n" {
		t.Fatalf("apikey create: stderr %q", errOut)
	}
}
