package cli

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
)

// find is the command at path in the tree.
func find(t *testing.T, path ...string) *cobra.Command {
	t.Helper()
	c, _, err := commands(nil).Find(path)
	if err != nil || c.Name() != path[len(path)-1] {
		t.Fatalf("no command %v: %v", path, err)
	}
	return c
}

type detail = struct {
	Location string `json:"location"`
	Message  string `json:"message"`
}

// The API's answers are said in the command line's terms: its flags and arguments for the
// API's fields, the naming rule in words for its pattern, and what to run next.
func TestAPIErrorsInTheCommandLinesTerms(t *testing.T) {
	const nameRule = "use 1 to 63 lower-case letters, digits and '-', starting with a letter or digit"
	for _, c := range []struct {
		cmd  []string
		err  apiError
		want string
	}{
		{[]string{"queue", "create"}, apiError{Code: "invalid_request", Message: "validation failed",
			Details: []detail{{"body.max_deliveries", "expected number <= 1000"}, {"body.name", "expected string to match pattern ^[a-z0-9][a-z0-9-]{0,62}$"}}},
			"--max-deliveries must be at most 1000; the queue NAME is not valid: " + nameRule},
		{[]string{"queue", "stats"}, apiError{Code: "invalid_request", Message: "validation failed",
			Details: []detail{{"path.queue", "expected length <= 63"}, {"path.tenant", "expected string to match pattern ^[a-z0-9][a-z0-9-]{0,62}$"}}},
			"the queue NAME must be at most 63 characters; the tenant in --app is not valid: " + nameRule},
		{[]string{"queue", "consume"}, apiError{Code: "invalid_request", Message: "validation failed",
			Details: []detail{{"body.wait_ms", "expected number <= 30000"}, {"body.max", "expected number >= 0"}}},
			"--wait must be at most 30s; --max must be at least 0"},
		{[]string{"queue", "ack"}, apiError{Code: "invalid_request", Message: "validation failed",
			Details: []detail{{"body.tokens", "expected array length <= 1000"}}},
			"at least one TOKEN takes at most 1000"},
		{[]string{"pipeline", "get"}, apiError{Code: "invalid_request", Message: "validation failed",
			Details: []detail{{"path.pipeline", "expected string to match pattern ^[a-z0-9][a-z0-9-]{0,57}$"}}},
			"the pipeline NAME is not valid: use 1 to 58 lower-case letters, digits and '-', starting with a letter or digit"},
		{[]string{"exchange", "create"}, apiError{Code: "invalid_request", Message: "validation failed",
			Details: []detail{{"body.type", `expected value to be one of "direct, fanout, topic"`}}},
			`--type must be one of direct, fanout, topic`},
		{[]string{"queue", "create"}, apiError{Code: "invalid_request", Message: "body.ack_wait: a positive duration such as 30s or 72h"},
			"--ack-wait: a positive duration such as 30s or 72h"},
		{[]string{"keys", "rotate"}, apiError{Code: "invalid_request", Message: `scope "Bad/Scope": each part must be 1-63 of a-z`,
			Details: []detail{{"body.scope", `scope "Bad/Scope": each part must be 1-63 of a-z`}}},
			`--scope: scope "Bad/Scope": each part must be 1-63 of a-z`},
		{[]string{"password"}, apiError{Code: "invalid_request", Message: "validation failed",
			Details: []detail{{"body.new", "expected length <= 1024"}}},
			"the new password (second line of standard input) must be at most 1024 characters"},
		{[]string{"queue", "stats"}, apiError{Code: "not_found", Message: `no such queue "orders" in acme/production/shop`},
			`not_found: no such queue "orders" in acme/production/shop; see what exists with penstock queue list --app acme/production/shop`},
		{[]string{"secrets", "delete"}, apiError{Code: "secret.not_found", Message: `no such secret "TOKEN" in acme/production/shop`},
			`secret.not_found: no such secret "TOKEN" in acme/production/shop; see what exists with penstock secrets list --app acme/production/shop`},
		{[]string{"queue", "dead-letters", "get"}, apiError{Code: "not_found", Message: `no such dead letter 7 of queue "orders" in acme/production/shop`},
			`not_found: no such dead letter 7 of queue "orders" in acme/production/shop; see what exists with penstock queue dead-letters list --app acme/production/shop orders`},
		{[]string{"exchange", "unbind"}, apiError{Code: "not_found", Message: `no such binding of queue "orders" with key "a" to exchange "events" in acme/production/shop`},
			`not_found: no such binding of queue "orders" with key "a" to exchange "events" in acme/production/shop; see what exists with penstock exchange get --app acme/production/shop events`},
		{[]string{"queue", "list"}, apiError{Code: "not_found", Message: "no such application acme/production/nope"},
			"not_found: no such application acme/production/nope; see what exists with penstock app list --env acme/production"},
		{[]string{"user", "disable"}, apiError{Code: "not_found", Message: `no such user "bob"`},
			`not_found: no such user "bob"; see what exists with penstock user list`},
		{[]string{"queue", "stats"}, apiError{Code: "not_found", Message: "no such resource"}, "not_found: no such resource"},
		{[]string{"tenant", "list"}, apiError{Code: "auth.password_change_required", Message: "change your password first (POST /v1/auth/password)"},
			"auth.password_change_required: change your password first: penstock password < current-then-new"},
		{[]string{"login"}, apiError{Code: "auth.invalid_credentials",
			Message: "invalid user name or password (attempts are limited: after 5 failures in a row, logins are refused for 1m, doubling up to 1h)"},
			"login failed: wrong user name or password; check --user and the password on standard input (attempts are limited: after 5 failures in a row, logins are refused for 1m, doubling up to 1h)"},
		{[]string{"login"}, apiError{Code: "auth.invalid_credentials", Message: "invalid user name or password"},
			"login failed: wrong user name or password; check --user and the password on standard input"},
		{[]string{"login"}, apiError{Code: "auth.mfa_required", Message: "a one-time code from your authenticator (or a recovery code) is required"},
			"login failed: a one-time code is required: add --code CODE, from your authenticator app (or a recovery code)"},
		{[]string{"login"}, apiError{Code: "auth.invalid_code", Message: "invalid or already used one-time code"},
			"login failed: the one-time code is wrong or already used: give a new one with --code"},
		{[]string{"mfa", "verify"}, apiError{Code: "invalid_request", Message: "validation failed",
			Details: []detail{{"body.code", "expected length >= 6"}}},
			"the CODE must be at least 6 characters"},
		{[]string{"queue", "create"}, apiError{Code: "conflict", Message: "multi\nline"}, "conflict: multi; line"},
	} {
		e := c.err
		if got := explain(find(t, c.cmd...), &e); got != c.want {
			t.Errorf("%v %+v:\n got %q\nwant %q", c.cmd, c.err, got, c.want)
		}
	}
}

// Every validator message phrasings translates is one huma still says: each format, filled in,
// comes out in words.
func TestPhrasingsMatchTheirFormats(t *testing.T) {
	cmd := find(t, "queue", "create")
	for _, p := range phrasings {
		msg := strings.NewReplacer("%v", "7", "%d", "7", "%s", "7").Replace(p.format)
		if got := phrase(cmd, "body.max_deliveries", msg); strings.Contains(got, "expected") || !strings.HasPrefix(got, "--max-deliveries ") {
			t.Errorf("%q: %q", p.format, got)
		}
	}
}

// testCA writes a CA certificate no server here uses, and returns its file.
func testCA(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// A server that cannot be reached, or is not the one the CA vouches for, is said in one line
// naming the address and what to do.
func TestUnreachableServer(t *testing.T) {
	ca := testCA(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "https://" + l.Addr().String()
	l.Close() // nothing listens there now: connection refused
	other := httptest.NewUnstartedServer(http.NotFoundHandler())
	other.Config.ErrorLog = log.New(io.Discard, "", 0) // its refused handshakes are expected
	other.StartTLS()
	defer other.Close()
	plain := httptest.NewServer(http.NotFoundHandler())
	defer plain.Close()
	dataDir := t.TempDir()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"status", "--server", closed, "--ca", ca},
			"penstock: cannot reach " + closed + " (connection refused): is penstock serve running? Start it with penstock serve, or point --server at it"},
		{[]string{"tenant", "list", "--server", closed, "--ca", ca},
			"penstock: cannot reach " + closed + " (connection refused): is penstock serve running? Start it with penstock serve, or point --server at it"},
		{[]string{"status", "--server", "https://no-such-host.invalid:8443", "--ca", ca},
			"penstock: cannot reach https://no-such-host.invalid:8443 (no such host no-such-host.invalid): check --server"},
		{[]string{"status", "--server", other.URL, "--ca", ca},
			"penstock: " + other.URL + " presents a certificate the CA in " + ca + " did not sign: pass the server's CA certificate with --ca, or its data directory with --data-dir"},
		{[]string{"status", "--server", strings.Replace(plain.URL, "http:", "https:", 1), "--ca", ca},
			"penstock: " + strings.Replace(plain.URL, "http:", "https:", 1) + " does not answer HTTPS: point --server at the https:// address penstock serve listens on"},
		{[]string{"status", "--server", closed, "--data-dir", dataDir},
			"penstock: no CA certificate at " + filepath.Join(dataDir, "tls", "ca.crt") + " to trust the server with: pass --ca with the server's tls/ca.crt, or --data-dir with its data directory"},
		{[]string{"status", "--server", closed, "--ca", filepath.Join(dataDir, "nope.crt")},
			"penstock: cannot read the CA certificate " + filepath.Join(dataDir, "nope.crt") + " given with --ca (no such file or directory): pass the server's tls/ca.crt"},
	} {
		code, _, errOut := run(t, []string{EnvAPIKey + "=psk_0123456789abcdef_x"}, c.args...)
		if code != 1 || errOut != c.want+"\n" {
			t.Errorf("penstock %s: exit %d\n got %q\nwant %q", strings.Join(c.args, " "), code, errOut, c.want+"\n")
		}
	}
}

// A request the server does not answer in time names the server, not the request's path.
func TestNoAnswerInTime(t *testing.T) {
	err := fmt.Errorf("list: %w", &url.Error{Op: "Get", URL: "https://10.0.0.1:8443/v1/tenants", Err: context.DeadlineExceeded})
	want := "no answer from https://10.0.0.1:8443 in time: is it overloaded, or is --server another service?"
	if got := explain(find(t, "tenant", "list"), err); got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}
