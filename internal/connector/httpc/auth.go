package httpc

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/penstock/penstock/internal/connector"
)

// checkAuth validates auth settings and keeps credentials out of plain headers and the URL's
// query string: a spec is shown to viewers, so a credential in it is only ever a
// ${secret:NAME} in auth.
func checkAuth(path string, a auth, headers map[string]string, rawURL string) error {
	for k := range headers {
		if credentialName(k) {
			return fmt.Errorf("%s.headers.%s: looks like a credential; send it with auth (type: header, header: %s, "+
				"token: ${secret:NAME}) from a secret stored with `penstock secrets put`", path, k, k)
		}
	}
	if u, err := url.Parse(rawURL); err == nil {
		if u.User != nil {
			return fmt.Errorf("%s.url: credentials in the URL are not allowed; send them with auth from a secret stored with `penstock secrets put`", path)
		}
		for k := range u.Query() {
			if credentialName(k) {
				return fmt.Errorf("%s.url: the query parameter %q looks like a credential; a URL is shown to viewers: "+
					"send it with auth (type: header or bearer) from a secret stored with `penstock secrets put`", path, k)
			}
		}
	}
	switch a.Type {
	case "bearer", "header":
		if a.Token == "" {
			return fmt.Errorf("%s.auth.token: required for %s", path, a.Type)
		}
		if a.Type == "header" && a.Header == "" {
			return fmt.Errorf("%s.auth.header: required for type header", path)
		}
	case "basic":
		if a.User == "" || a.Password == "" {
			return fmt.Errorf("%s.auth: user and password required for basic", path)
		}
	}
	return nil
}

// credentialName reports whether a header or query parameter name looks like it carries a
// credential: authorization, cookies, and anything named or ending in key, token, secret,
// password, signature or session.
func credentialName(name string) bool {
	n := strings.NewReplacer("-", "", "_", "", ".", "").Replace(strings.ToLower(name))
	switch n {
	case "authorization", "proxyauthorization", "cookie", "auth", "pwd", "pass", "passwd", "sig", "code", "bearer":
		return true
	}
	for _, s := range []string{"credential", "jwt", "bearer", "passwd", "password"} {
		if strings.Contains(n, s) {
			return true
		}
	}
	for _, s := range []string{"key", "token", "secret", "signature", "session", "apikey", "auth", "pass"} {
		if strings.HasSuffix(n, s) || strings.HasPrefix(n, s) && s != "key" && s != "pass" {
			return true
		}
	}
	return false
}

// credential resolves the header value auth sends, from the application's secrets.
func credential(ctx context.Context, res connector.Resources, a auth) (string, error) {
	secret := func(field string, r connector.SecretRef) (string, error) {
		if res.Secrets == nil {
			return "", fmt.Errorf("http: no secrets")
		}
		v, err := res.Secrets.Secret(ctx, r.Name())
		if err != nil {
			return "", fmt.Errorf("http: auth.%s: %w", field, err)
		}
		return v.Reveal(), nil
	}
	switch a.Type {
	case "bearer", "header":
		v, err := secret("token", a.Token)
		if err != nil {
			return "", err
		}
		if a.Type == "bearer" {
			return "Bearer " + v, nil
		}
		return v, nil
	case "basic":
		v, err := secret("password", a.Password)
		if err != nil {
			return "", err
		}
		r, _ := http.NewRequest("GET", "/", nil)
		r.SetBasicAuth(a.User, v)
		return r.Header.Get("Authorization"), nil
	}
	return "", nil
}

func setCredential(req *http.Request, a auth, cred string) {
	switch a.Type {
	case "bearer", "basic":
		req.Header.Set("Authorization", cred)
	case "header":
		req.Header.Set(a.Header, cred)
	}
}
