package certs

import (
	"crypto/tls"
	"log/slog"
	"testing"
	"time"

	"github.com/penstock/penstock/internal/config"
)

// A long-running process renews its internal certificate when a handshake finds it close to
// expiry, without a restart or a signal.
func TestInternalCertificateRenewsInHandshake(t *testing.T) {
	m, err := NewManager(t.TempDir(), config.TLS{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	first := m.Current().Leaf
	get := m.TLSConfig().GetCertificate

	c, _ := get(&tls.ClientHelloInfo{})
	if c.Leaf.SerialNumber.Cmp(first.SerialNumber) != 0 {
		t.Fatal("fresh certificate renewed")
	}

	m.now = func() time.Time { return first.NotAfter.Add(-10 * 24 * time.Hour) }
	c, _ = get(&tls.ClientHelloInfo{})
	if c.Leaf.SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Fatal("certificate 10 days from expiry not renewed")
	}
	if !c.Leaf.NotAfter.After(first.NotAfter) {
		t.Fatalf("renewed certificate expires %v, not after %v", c.Leaf.NotAfter, first.NotAfter)
	}
}
