package app

import (
	"crypto/tls"
	"encoding/json"
	"html"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/penstock/penstock/internal/audit"
	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/redact"
	"github.com/penstock/penstock/internal/testenv"
)

// browser is an HTTP client with cookies that trusts Penstock's CA and the provider's
// certificate, and follows redirects: a user's browser, without the JavaScript.
type browser struct {
	t *testing.T
	c *http.Client
}

func newBrowser(t *testing.T, ta *testApp, op *testenv.OIDC) *browser {
	t.Helper()
	pool := ta.pool.Clone()
	pem, err := os.ReadFile(op.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool.AppendCertsFromPEM(pem)
	jar, _ := cookiejar.New(nil)
	return &browser{t: t, c: &http.Client{Jar: jar, Timeout: 30 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, DisableKeepAlives: true}}}
}

var (
	formAction = regexp.MustCompile(`<form[^>]*action="([^"]*)"`)
	formInput  = regexp.MustCompile(`<input[^>]*>`)
	inputName  = regexp.MustCompile(`name="([^"]+)"`)
	inputValue = regexp.MustCompile(`value="([^"]*)"`)
)

// submit posts the first form of a page, with its inputs' values and the fields given.
func (b *browser) submit(page *http.Response, body string, fields map[string]string) (*http.Response, string) {
	b.t.Helper()
	m := formAction.FindStringSubmatch(body)
	if m == nil {
		b.t.Fatalf("no form at %s:\n%s", page.Request.URL, body)
	}
	action, err := page.Request.URL.Parse(html.UnescapeString(m[1]))
	if err != nil {
		b.t.Fatal(err)
	}
	v := url.Values{}
	for _, in := range formInput.FindAllString(body, -1) {
		n := inputName.FindStringSubmatch(in)
		if n == nil {
			continue
		}
		val := ""
		if m := inputValue.FindStringSubmatch(in); m != nil {
			val = html.UnescapeString(m[1])
		}
		v.Set(n[1], val)
	}
	for k, x := range fields {
		v.Set(k, x)
	}
	resp, err := b.c.PostForm(action.String(), v)
	if err != nil {
		b.t.Fatal(err)
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(out)
}

func (b *browser) get(u string) (*http.Response, string) {
	b.t.Helper()
	resp, err := b.c.Get(u)
	if err != nil {
		b.t.Fatal(err)
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(out)
}

// ssoLogin logs in through the browser flow and returns the final page (whoami) and the
// session cookie.
func (b *browser) ssoLogin(ta *testApp, user, password string) (int, string, string) {
	b.t.Helper()
	page, body := b.get(ta.url("/v1/auth/oidc/login?return_to=/v1/auth/whoami"))
	if page.StatusCode != 200 || !strings.Contains(body, `name="password"`) {
		b.t.Fatalf("the provider's login page: %d %s\n%s", page.StatusCode, page.Request.URL, body)
	}
	resp, out := b.submit(page, body, map[string]string{"login": user, "password": password})
	// The callback's page moves on by itself (a meta refresh), as a browser does.
	if m := regexp.MustCompile(`http-equiv="refresh" content="0;url=([^"]+)"`).FindStringSubmatch(out); m != nil && resp.StatusCode == 200 {
		to, err := resp.Request.URL.Parse(html.UnescapeString(m[1]))
		if err != nil {
			b.t.Fatal(err)
		}
		if to.Host != resp.Request.URL.Host {
			b.t.Fatalf("the landing page goes elsewhere: %s", to)
		}
		resp, out = b.get(to.String())
	}
	session := ""
	for _, c := range b.c.Jar.Cookies(resp.Request.URL) {
		if c.Name == "penstock_session" {
			session = c.Value
		}
	}
	return resp.StatusCode, out, session
}

// Single sign-on against a real OpenID provider (oidc-provider from npm): the browser logs in
// with the authorization code flow and PKCE and lands on Penstock with a session whose roles
// come from the groups claim through the mappings; the CLI's device flow logs in the same
// user; a group taken away at the provider is taken away at the re-check (refresh token); the
// provider's new signing key after a restart is fetched; and refusals are clear.
func TestSingleSignOn(t *testing.T) {
	addr := testenv.FreeAddr(t)
	redirect := "https://" + addr + "/v1/auth/oidc/callback"
	accounts := map[string]testenv.OIDCAccount{
		"olive": {Password: "olive-Passw0rd!", Groups: []string{"acme-devs"}},
		"oscar": {Password: "oscar-Passw0rd!", Groups: []string{"ops"}, AMR: []string{"pwd", "otp"}},
		// One factor (a passwordless code) is not two, and a group named like an LDAP
		// group's DN is not that group.
		"otto":     {Password: "otto-Passw0rd!", Groups: []string{"ops"}, AMR: []string{"otp"}},
		"mallory":  {Password: "mallory-Passw0rd!", Groups: []string{"CN=ops, OU=groups, DC=example, DC=org"}, AMR: []string{"pwd", "otp"}},
		"bad.name": {Password: "bad-Passw0rd!", Groups: []string{"ops"}},
	}
	op := testenv.StartOIDC(t, redirect, accounts)
	ta := startApp(t, func(c *config.Config) {
		c.API.Listen = addr
		o := &c.Directory.OIDC
		o.Issuer, o.ClientID, o.ClientSecret = op.Issuer, op.ClientID, redact.NewSecret(op.ClientSecret)
		o.RedirectURL, o.CAFile, o.TrustAMR = redirect, op.CAFile, true
		c.Directory.Mappings = []string{"platform-admin@platform=oidc:ops", "platform-admin@platform=cn=ops,ou=groups,dc=example,dc=org"}
		c.Directory.BreakGlassUsers = []string{"admin"}
		c.Directory.RecheckEvery, c.Directory.RolesValidFor = time.Second, 4*time.Second
		c.API.Limits.ConnRate, c.API.Limits.ConnBurst = 1e6, 1e6
		c.API.Limits.RequestRate, c.API.Limits.RequestBurst = 1e6, 1e6
	})
	admin := ta.adminSession(t) // break-glass
	ta.must(t, "POST", "/v1/tenants", map[string]string{"name": "acme"}, 201)
	ta.must(t, "POST", "/v1/directory/mappings", map[string]string{"group": "oidc:acme-devs", "role": "admin", "scope": "acme/production"}, 201)

	// The browser: olive lands on whoami, admin of acme/production through acme-devs.
	st, who, olive := newBrowser(t, ta, op).ssoLogin(ta, "olive", "olive-Passw0rd!")
	if st != 200 || !strings.Contains(who, `"name":"olive"`) || !strings.Contains(who, `"role":"admin"`) || strings.Contains(who, "restricted") || olive == "" {
		t.Fatalf("olive's single sign-on: %d %s", st, who)
	}
	if st, _, raw := ta.call(t, "POST", "/v1/tenants/acme/environments/production/applications", olive, map[string]string{"name": "shop"}); st != 201 {
		t.Fatalf("olive creates an application: %d %s", st, raw)
	}
	// oscar: platform-admin through ops; the provider says a second factor was used (amr otp)
	// and trust_amr is on, so no TOTP is asked.
	st, who, oscar := newBrowser(t, ta, op).ssoLogin(ta, "oscar", "oscar-Passw0rd!")
	if st != 200 || !strings.Contains(who, `"role":"platform-admin"`) || strings.Contains(who, "restricted") {
		t.Fatalf("oscar's single sign-on: %d %s", st, who)
	}
	if st, _, raw := ta.call(t, "GET", "/v1/directory", oscar, nil); st != 200 || !strings.Contains(raw, op.Issuer) {
		t.Fatalf("oscar reads the directory status: %d %s", st, raw)
	}
	if st, who, _ := newBrowser(t, ta, op).ssoLogin(ta, "otto", "otto-Passw0rd!"); st != 200 || !strings.Contains(who, `"restricted":"mfa"`) {
		t.Fatalf("otto, one factor: %d %s", st, who)
	}
	if st, who, _ := newBrowser(t, ta, op).ssoLogin(ta, "mallory", "mallory-Passw0rd!"); st != 200 || strings.Contains(who, "platform-admin") {
		t.Fatalf("mallory, a group named like an LDAP DN: %d %s", st, who)
	}
	// Refusals: a wrong password stays at the provider; a username claim Penstock cannot hold
	// is refused at the callback; a callback this server did not start is refused; return_to
	// must be a path here.
	b := newBrowser(t, ta, op)
	page, body := b.get(ta.url("/v1/auth/oidc/login"))
	if resp, out := b.submit(page, body, map[string]string{"login": "olive", "password": "wrong"}); resp.StatusCode != 401 || !strings.Contains(out, "Wrong user name") {
		t.Fatalf("wrong password at the provider: %d %s", resp.StatusCode, out)
	}
	if st, out, _ := newBrowser(t, ta, op).ssoLogin(ta, "bad.name", "bad-Passw0rd!"); st != 401 || !strings.Contains(out, "auth.invalid_credentials") {
		t.Fatalf("a username claim that is no Penstock name: %d %s", st, out)
	}
	if resp, out := newBrowser(t, ta, op).get(ta.url("/v1/auth/oidc/callback?code=x&state=y")); resp.StatusCode != 400 || !strings.Contains(out, "auth.oidc_state") {
		t.Fatalf("a callback not started here: %d %s", resp.StatusCode, out)
	}
	for _, to := range []string{"//evil.example/x", "/%09/evil.example/x", "/%5Cevil.example", "https://evil.example/", "/%0a/evil.example", "/ /evil.example"} {
		if st, _, raw := ta.call(t, "GET", "/v1/auth/oidc/login?return_to="+to, "-", nil); st != 400 || !strings.Contains(raw, "query.return_to") {
			t.Fatalf("return_to %s: %d %s", to, st, raw)
		}
	}
	// Local users other than break-glass ones no longer log in with a password.
	ta.must(t, "POST", "/v1/users", map[string]string{"name": "localonly", "password": "Local-Passw0rd!x"}, 201)
	if st, _, _ := ta.call(t, "POST", "/v1/auth/login", "-", map[string]string{"user": "localonly", "password": "Local-Passw0rd!x"}); st != 401 {
		t.Fatalf("a local user with single sign-on configured: %d", st)
	}

	// The provider takes acme-devs away from olive: the re-check (with olive's refresh token)
	// takes her role away from her session.
	accounts["olive"] = testenv.OIDCAccount{Password: "olive-Passw0rd!", Groups: []string{}}
	op.SetAccounts(t, accounts)
	apps := "/v1/tenants/acme/environments/production/applications"
	waitUntil(t, "olive to lose acme at the re-check", func() bool {
		st, _, _ := ta.call(t, "GET", apps, olive, nil)
		return st == 404
	})
	accounts["olive"] = testenv.OIDCAccount{Password: "olive-Passw0rd!", Groups: []string{"acme-devs"}}
	op.SetAccounts(t, accounts)
	waitUntil(t, "olive to get acme back", func() bool {
		st, _, _ := ta.call(t, "GET", apps, olive, nil)
		return st == 200
	})

	// The CLI's way: a device login, approved in a browser, finished by polling.
	st, dev, raw := ta.call(t, "POST", "/v1/auth/oidc/device", "-", nil)
	if st != 200 || dev["user_code"] == "" {
		t.Fatalf("device login: %d %s\n%s", st, raw, grepLines(ta.logs.String(), "device"))
	}
	type result struct {
		st  int
		raw string
	}
	done := make(chan result, 1)
	go func() { // the CLI's polling, on its own connections
		c := ta.client("", nil)
		c.Timeout = 30 * time.Second
		for {
			b, _ := json.Marshal(map[string]string{"handle": dev["handle"].(string)})
			resp, err := c.Post(ta.url("/v1/auth/oidc/device/token"), "application/json", strings.NewReader(string(b)))
			if err != nil {
				done <- result{0, err.Error()}
				return
			}
			out, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 428 {
				done <- result{resp.StatusCode, string(out)}
				return
			}
		}
	}()
	// In the browser: the code (prefilled by the complete address), its confirmation, the
	// provider's login, its consent.
	db := newBrowser(t, ta, op)
	page, body = db.get(dev["verification_uri_complete"].(string))
	for step := 0; !strings.Contains(body, "Sign-in Success"); step++ {
		if step == 6 || page.StatusCode >= 400 {
			t.Fatalf("device approval, step %d: %d %s", step, page.StatusCode, body)
		}
		fields := map[string]string{}
		if strings.Contains(body, `name="password"`) {
			fields = map[string]string{"login": "olive", "password": "olive-Passw0rd!"}
		}
		page, body = db.submit(page, body, fields)
	}
	var r result
	select {
	case r = <-done:
	case <-time.After(time.Minute):
		t.Fatal("the device login did not finish")
	}
	var login struct{ Token string }
	if r.st != 200 || json.Unmarshal([]byte(r.raw), &login) != nil || login.Token == "" {
		t.Fatalf("device token: %d %s", r.st, r.raw)
	}
	if st, _, raw := ta.call(t, "GET", apps, login.Token, nil); st != 200 {
		t.Fatalf("olive's device session: %d %s", st, raw)
	}

	// The provider restarts with a new signing key (and, its store being in memory, without
	// the grants it gave): the re-check's refresh is refused, so olive's sessions end and what
	// she holds is withheld; her next login's ID token is checked with the key fetched anew.
	op.Restart(t)
	waitUntil(t, "olive's session to end once the provider refuses her refresh token", func() bool {
		st, _, _ := ta.call(t, "GET", "/v1/auth/whoami", olive, nil)
		return st == 401
	})
	if st, who, _ := newBrowser(t, ta, op).ssoLogin(ta, "olive", "olive-Passw0rd!"); st != 200 || !strings.Contains(who, `"role":"admin"`) {
		t.Fatalf("login after the provider's key changed: %d %s", st, who)
	}

	events := ta.auditEvents(t, admin, "").Events
	for what, pred := range map[string]func(audit.Event) bool{
		"olive's single sign-on": func(e audit.Event) bool {
			return e.Action == "auth.login" && e.Actor == "user:olive" && e.Result == "ok" && e.Details["via"] == "oidc"
		},
		"the refused username claim": func(e audit.Event) bool {
			return e.Action == "auth.login" && e.Result == "denied" && e.Details["via"] == "oidc" && e.Code == "auth.invalid_credentials"
		},
		"the callback not started here": func(e audit.Event) bool { return e.Action == "auth.login" && e.Code == "auth.oidc_state" },
		"olive's role taken away": func(e audit.Event) bool {
			return e.Action == "directory.roles_changed" && e.Target == "user:olive" && e.Details["after"] == "none"
		},
	} {
		if !slices.ContainsFunc(events, pred) {
			t.Errorf("no audit event for %s", what)
		}
	}
	if strings.Contains(ta.logs.String(), op.ClientSecret) || strings.Contains(ta.logs.String(), "olive-Passw0rd") {
		t.Error("the client secret or a password is in the logs")
	}
}

func grepLines(s, what string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, what) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
