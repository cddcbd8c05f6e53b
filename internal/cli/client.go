package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
)

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

// adminToken reads the platform administrator's token: --token-file, else admin.token in the
// data directory.
func (f *clientFlags) adminToken() (string, error) {
	path := f.tokenFile
	if path == "" {
		path = filepath.Join(f.dataDir, "admin.token")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read the admin token: %w (pass --token-file or --data-dir)", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// call sends an authenticated JSON request and decodes the JSON answer into out. A non-2xx
// answer comes back as an *apiError.
func (f *clientFlags) call(ctx context.Context, method, path string, body, out any) error {
	c, err := f.httpClient()
	if err != nil {
		return err
	}
	token, err := f.adminToken()
	if err != nil {
		return err
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(f.server, "/")+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		e := &apiError{}
		if json.Unmarshal(raw, e) != nil || e.Code == "" {
			return fmt.Errorf("%s %s: HTTP %d", method, path, resp.StatusCode)
		}
		return e
	}
	if out != nil && len(raw) > 0 {
		return json.Unmarshal(raw, out)
	}
	return nil
}
