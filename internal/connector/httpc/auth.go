package httpc

import (
	"context"
	"fmt"
	"net/http"

	"github.com/penstock/penstock/internal/connector"
)

// checkAuth validates auth settings and keeps credentials out of plain headers.
func checkAuth(path string, a auth, headers map[string]string) error {
	for k := range headers {
		if http.CanonicalHeaderKey(k) == "Authorization" {
			return fmt.Errorf("%s.headers.%s: credentials go in auth, from a secret", path, k)
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
