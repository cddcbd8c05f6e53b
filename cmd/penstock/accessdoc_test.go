package main

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"html"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/penstock/penstock/internal/testenv"
)

// docSection returns the ```yaml and ```sh blocks under one ## heading of a document.
func docSection(t *testing.T, path, heading string) (yamls, shs []string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var (
		in   bool
		lang string
		cur  *strings.Builder
	)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case cur != nil && line == "```":
			if lang == "yaml" {
				yamls = append(yamls, cur.String())
			} else {
				shs = append(shs, cur.String())
			}
			cur = nil
		case cur != nil:
			cur.WriteString(line + "\n")
		case strings.HasPrefix(line, "## "):
			in = line == "## "+heading
		case in && (line == "```sh" || line == "```yaml"):
			lang, cur = strings.TrimPrefix(line, "```"), &strings.Builder{}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return yamls, shs
}

// docs/access.md's directory set-up, run as written against a seeded OpenLDAP server: its
// configuration (with the server's address and CA file put in), the configuration check, serve,
// the administrator's mappings and `auth test`, and a directory user's login.
func TestAccessDocDirectory(t *testing.T) {
	needTool(t, "bash")
	s := testenv.StartSlapd(t)
	yamls, shs := docSection(t, "../../docs/access.md", "Directory users (LDAP)")
	if len(yamls) != 1 || len(shs) != 3 {
		t.Fatalf("docs/access.md's directory section has %d yaml and %d sh blocks, want 1 and 3", len(yamls), len(shs))
	}
	conf := strings.ReplaceAll(yamls[0], "ldaps://ldap.example.org:636", s.LDAPSURL)
	conf = strings.ReplaceAll(conf, "/etc/penstock/ldap-ca.pem", s.CAFile)
	if strings.Contains(conf, "ldap.example.org") || strings.Contains(conf, "/etc/penstock") {
		t.Fatalf("the configuration names a server or file the test does not replace:\n%s", conf)
	}
	work := t.TempDir()
	if err := os.WriteFile(filepath.Join(work, "penstock.yaml"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	const serveLine = "go run ./cmd/penstock serve --config penstock.yaml\n"
	if !strings.HasSuffix(shs[0], serveLine) {
		t.Fatalf("the first block does not end by serving with the file:\n%s", shs[0])
	}
	env := []string{"PENSTOCK_DIRECTORY_LDAP_BIND_PASSWORD=" + testenv.LDAPServicePass}
	// The block before serve (export, config check) as written; serve is started by the test,
	// with the same file and environment, on a free port.
	runDocBlock(t, work, "", strings.TrimSuffix(shs[0], serveLine), []string{"BIND_PASSWORD=" + testenv.LDAPServicePass})
	p := serveEnv(t, filepath.Join(work, "data"), env, "--config", filepath.Join(work, "penstock.yaml"))
	p.loginAsAdmin() // the break-glass administrator, as the section allows
	out := runDocBlock(t, work, p.api, shs[1], []string{"HOME=" + p.home, "XDG_CONFIG_HOME=" + p.home})
	for _, want := range []string{`"owner"`, "cn=acme-leads,ou=groups,dc=example,dc=org", "cn=acme-owners,ou=groups,dc=example,dc=org",
		`"mfa_required": true`, `"can_log_in": true`, "cn=ops,ou=groups,dc=example,dc=org"} {
		if !strings.Contains(out, want) {
			t.Errorf("the administrator's block printed no %s:\n%s", want, out)
		}
	}
	out = runDocBlock(t, work, p.api, shs[2], []string{"HOME=" + p.home, "XDG_CONFIG_HOME=" + p.home,
		"DIRECTORY_PASSWORD=bob" + testenv.LDAPPasswordTail})
	for _, want := range []string{"logged in as bob", `"developer"`, `"acme/production"`} {
		if !strings.Contains(out, want) {
			t.Errorf("bob's block printed no %s:\n%s", want, out)
		}
	}
	if strings.Contains(p.logs.String(), testenv.LDAPServicePass) || strings.Contains(p.logs.String(), testenv.LDAPPasswordTail) {
		t.Error("a directory password is in the server's log")
	}
}

// runDocBlock runs a ```sh block with bash -euo pipefail in dir; `go run ./cmd/penstock` is the
// built binary, pointed at server (when given) for the commands that talk to one.
func runDocBlock(t *testing.T, dir, server, block string, env []string) string {
	t.Helper()
	penstock := filepath.Join(t.TempDir(), "penstock")
	wrapper := fmt.Sprintf("#!/bin/sh\nexec %q \"$@\"\n", binary)
	if server != "" {
		wrapper = fmt.Sprintf(`#!/bin/sh
case "$1" in serve|doctor|config|version|help) exec %[1]q "$@";; esac
exec %[1]q "$@" --server %[2]q --ca %[3]q
`, binary, server, filepath.Join(dir, "data", "tls", "ca.crt"))
	}
	if err := os.WriteFile(penstock, []byte(wrapper), 0o700); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", strings.ReplaceAll(block, "go run ./cmd/penstock", penstock))
	cmd.Dir = dir
	for _, kv := range os.Environ() {
		if name, _, _ := strings.Cut(kv, "="); !strings.HasPrefix(name, "PENSTOCK_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("block failed: %v\n--- block\n%s--- output\n%s", err, block, out)
	}
	return string(out)
}

// docs/access.md's single sign-on set-up, run as written against a real OpenID provider: its
// configuration (with the provider's address put in, and its CA given in the environment),
// serve, and `penstock login --sso`, whose code is approved as a browser would (the code page,
// the provider's login), then `whoami`.
func TestAccessDocSingleSignOn(t *testing.T) {
	needTool(t, "bash")
	addr := testenv.FreeAddr(t)
	redirect := "https://" + addr + "/v1/auth/oidc/callback"
	op := testenv.StartOIDC(t, redirect, map[string]testenv.OIDCAccount{"olive": {Password: "olive-Passw0rd!", Groups: []string{"acme-devs"}}})
	yamls, shs := docSection(t, "../../docs/access.md", "Single sign-on (OpenID Connect)")
	if len(yamls) != 1 || len(shs) != 2 {
		t.Fatalf("docs/access.md's single sign-on section has %d yaml and %d sh blocks, want 1 and 2", len(yamls), len(shs))
	}
	conf := strings.ReplaceAll(yamls[0], "https://login.example.org", op.Issuer)
	conf = strings.ReplaceAll(conf, "https://penstock.example.org:8443/v1/auth/oidc/callback", redirect)
	if strings.Contains(conf, "example.org") {
		t.Fatalf("the configuration names a server the test does not replace:\n%s", conf)
	}
	work := t.TempDir()
	if err := os.WriteFile(filepath.Join(work, "penstock.yaml"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	const serveLine = "go run ./cmd/penstock serve --config penstock.yaml\n"
	if !strings.HasSuffix(shs[0], serveLine) || !strings.Contains(shs[0], "PENSTOCK_DIRECTORY_OIDC_CLIENT_SECRET") {
		t.Fatalf("the first block does not set the client secret and serve with the file:\n%s", shs[0])
	}
	env := []string{"PENSTOCK_DIRECTORY_OIDC_CLIENT_SECRET=" + op.ClientSecret, "PENSTOCK_DIRECTORY_OIDC_CA_FILE=" + op.CAFile}
	p := serveEnv(t, filepath.Join(work, "data"), env, "--config", filepath.Join(work, "penstock.yaml"), "--listen", addr)

	// The second block as written, in the background: login --sso waits for the approval.
	penstock := filepath.Join(t.TempDir(), "penstock")
	wrapper := fmt.Sprintf("#!/bin/sh\nexec %q \"$@\" --server %q --ca %q\n", binary, p.api, filepath.Join(work, "data", "tls", "ca.crt"))
	if err := os.WriteFile(penstock, []byte(wrapper), 0o700); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", strings.ReplaceAll(shs[1], "go run ./cmd/penstock", penstock))
	cmd.Dir = work
	cmd.Env = append(os.Environ(), "HOME="+p.home, "XDG_CONFIG_HOME="+p.home)
	out := &testenv.LogBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	var complete string
	waitUntil(t, time.Minute, "login --sso to print the address", func() bool {
		m := regexp.MustCompile(`or open (https://\S+)\)`).FindStringSubmatch(out.String())
		if m != nil {
			complete = m[1]
		}
		return complete != ""
	})
	approveDevice(t, op, complete, "olive", "olive-Passw0rd!")
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("the block failed: %v\n%s\n%s", err, out.String(), p.logs.String())
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("login --sso did not finish:\n%s", out.String())
	}
	for _, want := range []string{"logged in by single sign-on", `"name": "olive"`, `"developer"`, `"acme/production"`} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the block printed no %s:\n%s", want, out.String())
		}
	}
	if strings.Contains(p.logs.String(), op.ClientSecret) {
		t.Error("the client secret is in the server's log")
	}
}

// approveDevice does in a browser what a user does with a device code: opens the address
// (the code filled in), confirms, logs in at the provider.
func approveDevice(t *testing.T, op *testenv.OIDC, address, user, password string) {
	t.Helper()
	pem, err := os.ReadFile(op.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := c.Get(address)
	for step := 0; ; step++ {
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		body := string(b)
		if strings.Contains(body, "Sign-in Success") {
			return
		}
		if step == 6 || resp.StatusCode >= 400 {
			t.Fatalf("approving the code, step %d: %d %s", step, resp.StatusCode, body)
		}
		m := regexp.MustCompile(`<form[^>]*action="([^"]*)"`).FindStringSubmatch(body)
		if m == nil {
			t.Fatalf("no form at %s: %s", resp.Request.URL, body)
		}
		action, _ := resp.Request.URL.Parse(html.UnescapeString(m[1]))
		v := url.Values{}
		for _, in := range regexp.MustCompile(`<input[^>]*>`).FindAllString(body, -1) {
			n := regexp.MustCompile(`name="([^"]+)"`).FindStringSubmatch(in)
			if n == nil {
				continue
			}
			val := ""
			if vm := regexp.MustCompile(`value="([^"]*)"`).FindStringSubmatch(in); vm != nil {
				val = html.UnescapeString(vm[1])
			}
			v.Set(n[1], val)
		}
		if strings.Contains(body, `name="password"`) {
			v.Set("login", user)
			v.Set("password", password)
		}
		resp, err = c.PostForm(action.String(), v)
	}
}
