package testenv

import (
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"os"
	"testing"

	"github.com/penstock/penstock/internal/certs"
	"github.com/penstock/penstock/internal/config"
)

// ServerTLS makes the internal CA and server certificate in dir, as a first start does, and
// returns the server's TLS configuration (TLS 1.2 and up) and the roots that verify it.
func ServerTLS(t testing.TB, dir string) (*tls.Config, *x509.CertPool) {
	t.Helper()
	cm, err := certs.NewManager(dir, config.TLS{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	pem, err := os.ReadFile(cm.CAPath())
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	tc := cm.TLSConfig()
	tc.MinVersion = tls.VersionTLS12
	return tc, roots
}
