package cli

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/penstock/penstock/internal/api"
	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/identity"
	"github.com/penstock/penstock/internal/redact"
	"github.com/penstock/penstock/internal/signing"
)

// EnvAPIKey is the environment variable the CLI reads an API key from.
const EnvAPIKey = config.EnvAPIKey

// apiError is the API's error body.
type apiError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Details []struct {
		Location string `json:"location"`
		Message  string `json:"message"`
	} `json:"details"`
}

func (e *apiError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %s", e.Code, e.Message)
	for _, d := range e.Details {
		fmt.Fprintf(&b, "\n  %s: %s", d.Location, d.Message)
	}
	return b.String()
}

// savedSession is what penstock login keeps, 0600, in the user's configuration directory.
type savedSession struct {
	Server string `json:"server"`
	Token  string `json:"token"`
}

func sessionPath() (string, error) {
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("no configuration directory for the session: %w", err)
	}
	return filepath.Join(dir, "penstock", "session.json"), nil
}

func saveSession(s savedSession) error {
	p, err := sessionPath()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	b, _ := json.Marshal(s)
	return os.WriteFile(p, b, 0o600)
}

func loadSession() (savedSession, error) {
	p, err := sessionPath()
	if err != nil {
		return savedSession{}, err
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return savedSession{}, errors.New("not logged in: run penstock login, or give an API key (--api-key-file or " + EnvAPIKey + ")")
	}
	var s savedSession
	if err := json.Unmarshal(b, &s); err != nil {
		return savedSession{}, fmt.Errorf("%s: %w", p, err)
	}
	return s, nil
}

// apiKey returns the API key from --api-key-file or the environment, or zero.
func (f *clientFlags) apiKey() (redact.Secret, error) {
	if f.apiKeyFile != "" {
		b, err := os.ReadFile(f.apiKeyFile)
		if err != nil {
			return redact.Secret{}, fmt.Errorf("read the API key: %w", err)
		}
		return redact.NewSecret(strings.TrimSpace(string(b))), nil
	}
	return redact.NewSecret(lookupEnv(f.environ, EnvAPIKey)), nil
}

// raw sends a GET as the caller and returns the body as it is (exports).
func (f *clientFlags) raw(ctx context.Context, method, path string) ([]byte, error) {
	var out json.RawMessage
	c, err := f.httpClient()
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(f.server, "/")+path, nil)
	if err != nil {
		return nil, err
	}
	if err := f.authorize(req, nil); err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out, err = io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode >= 300 {
		e := &apiError{}
		if json.Unmarshal(out, e) != nil || e.Code == "" {
			return nil, fmt.Errorf("%s %s: HTTP %d", method, path, resp.StatusCode)
		}
		return nil, e
	}
	return out, nil
}

// call sends a JSON request as the caller and decodes the JSON answer into out. A non-2xx
// answer comes back as an *apiError.
func (f *clientFlags) call(ctx context.Context, method, path string, body, out any) error {
	c, err := f.httpClient()
	if err != nil {
		return err
	}
	var raw []byte
	if body != nil {
		if raw, err = json.Marshal(body); err != nil {
			return err
		}
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(f.server, "/")+path, bytes.NewReader(raw))
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if err := f.authorize(req, raw); err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if w := resp.Header.Get(api.RetentionWarningHeader); w != "" && f.warn != nil {
		fmt.Fprintf(f.warn, "penstock: warning: %s\n", escapeUnsafe([]byte(strings.Map(func(r rune) rune {
			if r < 0x20 {
				return -1
			}
			return r
		}, w))))
	}
	rb, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		e := &apiError{}
		if json.Unmarshal(rb, e) != nil || e.Code == "" {
			return fmt.Errorf("%s %s: HTTP %d", method, path, resp.StatusCode)
		}
		return e
	}
	if out != nil && len(rb) > 0 {
		return json.Unmarshal(rb, out)
	}
	return nil
}

// authorize adds the caller's credential: a signed request or bearer API key if one is
// configured, else the saved session (for the server it was made with).
func (f *clientFlags) authorize(req *http.Request, body []byte) error {
	key, err := f.apiKey()
	if err != nil {
		return err
	}
	if !key.IsZero() {
		if !f.sign {
			req.Header.Set("Authorization", "Bearer "+key.Reveal())
			return nil
		}
		id, _, err := identity.ParseAPIKey(key.Reveal())
		if err != nil {
			return err
		}
		nonce := make([]byte, 16)
		if _, err := rand.Read(nonce); err != nil {
			return err
		}
		signing.Sign(req, id, identity.SigningKey(key), body, time.Now(), hex.EncodeToString(nonce), "content-type")
		return nil
	}
	if f.sign {
		return errors.New("--sign needs an API key (--api-key-file or " + EnvAPIKey + ")")
	}
	s, err := loadSession()
	if err != nil {
		return err
	}
	if strings.TrimRight(s.Server, "/") != strings.TrimRight(f.server, "/") {
		return fmt.Errorf("the saved session is for %s, not %s: run penstock login --server %s", s.Server, f.server, f.server)
	}
	req.Header.Set("Authorization", "Bearer "+s.Token)
	return nil
}

// postJSON sends an unauthenticated JSON POST (login).
func postJSON(ctx context.Context, c *http.Client, url string, body, out any) error {
	raw, err := json.Marshal(body)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(raw))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	rb, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		e := &apiError{}
		if json.Unmarshal(rb, e) != nil || e.Code == "" {
			return fmt.Errorf("POST %s: HTTP %d", url, resp.StatusCode)
		}
		return e
	}
	return json.Unmarshal(rb, out)
}
