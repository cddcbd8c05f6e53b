package testenv

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// OIDCProviderVersion is the npm package oidc-provider (a certified OpenID Connect provider)
// that .ci/services installs into OIDCProviderDir.
const OIDCProviderVersion = "9.13.3"

//go:embed oidc/provider.mjs
var providerScript []byte

// OIDCProviderDir is where .ci/services installs oidc-provider (PENSTOCK_OIDC_PROVIDER_DIR
// names another).
func OIDCProviderDir() string {
	if d := os.Getenv("PENSTOCK_OIDC_PROVIDER_DIR"); d != "" {
		return d
	}
	return filepath.Join(filepath.Dir(ToolsDir()), "oidc-provider")
}

// OIDCAccount is a user of the test provider.
type OIDCAccount struct {
	Password string   `json:"password"`
	Groups   []string `json:"groups"`
	AMR      []string `json:"amr,omitempty"`
}

// OIDC is an OpenID provider of a test's own on a loopback port, over HTTPS with a certificate
// for localhost (CAFile), with one confidential client (ClientID, ClientSecret) allowed the
// authorization code (PKCE), refresh token and device grants. Restart rotates its signing key.
type OIDC struct {
	Issuer, CAFile         string
	ClientID, ClientSecret string
	dir, conf              string
	port                   int
	log                    *LogBuffer
	mu                     sync.Mutex
	cfg                    map[string]any
	cmd                    *exec.Cmd
	exited                 chan error
}

// StartOIDC starts the provider for a client whose callback is redirectURL. Without node or
// oidc-provider the test skips, saying how to install them; under CI it fails.
func StartOIDC(t testing.TB, redirectURL string, accounts map[string]OIDCAccount) *OIDC {
	t.Helper()
	dir := OIDCProviderDir()
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "oidc-provider", "package.json")); err != nil {
		msg := "oidc-provider is not installed in " + dir + " (bash .ci/services installs it, or: npm install --prefix " + dir + " oidc-provider@" + OIDCProviderVersion + ")"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	// The script runs from the install directory, where node finds the package.
	script := filepath.Join(dir, "penstock-provider.mjs")
	tmp := fmt.Sprintf("%s.%d.tmp", script, os.Getpid())
	if err := os.WriteFile(tmp, providerScript, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, script); err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	o := &OIDC{dir: dir, conf: filepath.Join(work, "provider.json"), CAFile: filepath.Join(work, "cert.pem"), log: &LogBuffer{},
		ClientID: "penstock", ClientSecret: "client-Secret-" + strconv.FormatInt(time.Now().UnixNano(), 36), port: FreePort(t)}
	WriteCert(t, o.CAFile, filepath.Join(work, "key.pem"), "localhost")
	o.Issuer = "https://localhost:" + strconv.Itoa(o.port)
	o.cfg = map[string]any{
		"issuer": o.Issuer, "port": o.port, "key_file": filepath.Join(work, "key.pem"), "cert_file": o.CAFile,
		"cookie_keys": []string{"cookie-" + o.ClientSecret},
		"clients": []map[string]any{{
			"client_id": o.ClientID, "client_secret": o.ClientSecret, "redirect_uris": []string{redirectURL},
			"grant_types":    []string{"authorization_code", "refresh_token", "urn:ietf:params:oauth:grant-type:device_code"},
			"response_types": []string{"code"}, "token_endpoint_auth_method": "client_secret_post",
		}},
		"accounts": accounts,
	}
	o.write(t)
	t.Cleanup(o.kill)
	o.Start(t)
	return o
}

func (o *OIDC) write(t testing.TB) {
	t.Helper()
	b, err := json.Marshal(o.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(o.conf+".tmp", b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(o.conf+".tmp", o.conf); err != nil {
		t.Fatal(err)
	}
}

// SetAccounts replaces the users (their passwords and groups): the provider reads them at
// each use.
func (o *OIDC) SetAccounts(t testing.TB, accounts map[string]OIDCAccount) {
	t.Helper()
	o.mu.Lock()
	defer o.mu.Unlock()
	o.cfg["accounts"] = accounts
	o.write(t)
}

// Start starts the provider (with a new signing key) and waits until it answers.
func (o *OIDC) Start(t testing.TB) {
	t.Helper()
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.cmd != nil {
		return
	}
	cmd := exec.Command("node", filepath.Join(o.dir, "penstock-provider.mjs"), o.conf)
	cmd.Dir = o.dir
	cmd.Stdout, cmd.Stderr = o.log, o.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("node: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	o.cmd, o.exited = cmd, exited
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		if c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(o.port), time.Second); err == nil {
			c.Close()
			return
		}
		select {
		case err := <-exited:
			o.cmd = nil
			t.Fatalf("the OpenID provider exited: %v\n%s", err, o.log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the OpenID provider did not listen within a minute\n%s", o.log.String())
		}
	}
}

// Restart stops the provider and starts it again: its sessions and grants are gone (its store
// is in memory) and it signs with a new key.
func (o *OIDC) Restart(t testing.TB) {
	t.Helper()
	o.kill()
	o.Start(t)
}

// Log is what the provider printed.
func (o *OIDC) Log() string { return o.log.String() }

func (o *OIDC) kill() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.cmd == nil {
		return
	}
	_ = o.cmd.Process.Kill()
	<-o.exited
	o.cmd = nil
}
