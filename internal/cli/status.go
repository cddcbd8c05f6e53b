package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/penstock/penstock/internal/certs"
)

// clientFlags are shared by every command that talks to the API.
type clientFlags struct {
	server, ca, dataDir string
	apiKeyFile          string
	sign                bool
	environ             []string
	// warn takes the server's warnings about what a call touched (an environment retention
	// will delete): the command's standard error.
	warn io.Writer
	// client is the HTTP client made for these flags, kept so that a command's calls share its
	// connections: one that polls (--wait) would otherwise open a connection per call and hold
	// each open until the server's idle timeout, and meet the server's limit of connections
	// from one address within half a minute.
	client    *http.Client
	clientFor [2]string // the CA file and server it was made for
	// untimed: the command's call lasts as long as its work (keys rotate-master), so its
	// client has no overall timeout; the server finishes the work even if the client goes.
	untimed bool
}

func (f *clientFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.server, "server", "https://127.0.0.1:8443", "Penstock API URL")
	cmd.Flags().StringVar(&f.ca, "ca", "", "CA certificate to trust (default: the internal CA in --data-dir)")
	cmd.Flags().StringVar(&f.dataDir, "data-dir", "./penstock-data", "data directory whose internal CA (and admin token) to use")
}

// addAuth adds the client flags and the credential flags, for commands that need a caller.
// Credentials: --api-key-file or PENSTOCK_API_KEY (sent as a bearer key, or with --sign as a
// signed request), else the session saved by penstock login.
func (f *clientFlags) addAuth(cmd *cobra.Command) {
	f.add(cmd)
	cmd.Flags().StringVar(&f.apiKeyFile, "api-key-file", "", "file holding an API key (or set PENSTOCK_API_KEY)")
	cmd.Flags().BoolVar(&f.sign, "sign", false, "sign each request with the API key (HMAC-SHA256) instead of sending the key")
}

// httpClient trusts only the configured CA: the internal one by default, never the system
// pool mixed in, so a certificate from elsewhere cannot impersonate a local Penstock.
func (f *clientFlags) httpClient() (*http.Client, error) {
	caPath := f.ca
	if caPath == "" {
		caPath = filepath.Join(f.dataDir, certs.CACertFile)
	}
	if f.client != nil && f.clientFor == [2]string{caPath, f.server} {
		return f.client, nil
	}
	pem, err := os.ReadFile(caPath)
	if err != nil {
		return nil, caError(caPath, f.ca != "", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", caPath)
	}
	timeout := 30 * time.Second
	if f.untimed {
		timeout = 0
	}
	f.client = &http.Client{
		Timeout: timeout,
		Transport: reachTransport{base: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}},
			server: f.server, ca: caPath},
	}
	f.clientFor = [2]string{caPath, f.server}
	return f.client, nil
}

func statusCmd() *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Ask a running Penstock whether it is alive and ready",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := cf.httpClient()
			if err != nil {
				return err
			}
			ready := true
			for _, path := range []string{"/healthz", "/readyz"} {
				status, body, err := get(cmd.Context(), c, cf.server+path)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%-8s %d %s\n", path, status, body)
				ready = ready && status == http.StatusOK
			}
			if !ready {
				return exitError{code: 1}
			}
			return nil
		},
	}
	cf.add(cmd)
	return cmd
}

func get(ctx context.Context, c *http.Client, url string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return 0, "", err
	}
	var compact map[string]any
	if json.Unmarshal(b, &compact) == nil {
		b, _ = json.Marshal(compact)
	}
	return resp.StatusCode, string(b), nil
}
