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

// A node's route certificate is renewed by the running node too, in the handshake that finds
// it close to expiry, for both sides of a route.
func TestRouteCertificateRenewsInHandshake(t *testing.T) {
	m, err := NewManager(t.TempDir(), config.TLS{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := m.RouteTLS("n1", []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	first, err := cfg.GetCertificate(&tls.ClientHelloInfo{})
	if err != nil {
		t.Fatal(err)
	}
	if c, _ := cfg.GetClientCertificate(&tls.CertificateRequestInfo{}); c.Leaf.SerialNumber.Cmp(first.Leaf.SerialNumber) != 0 {
		t.Fatal("the route certificate changed without being due")
	}
	m.now = func() time.Time { return first.Leaf.NotAfter.Add(-10 * 24 * time.Hour) }
	for _, get := range []func() (*tls.Certificate, error){
		func() (*tls.Certificate, error) { return cfg.GetCertificate(&tls.ClientHelloInfo{}) },
		func() (*tls.Certificate, error) { return cfg.GetClientCertificate(&tls.CertificateRequestInfo{}) },
	} {
		c, err := get()
		if err != nil {
			t.Fatal(err)
		}
		if c.Leaf.SerialNumber.Cmp(first.Leaf.SerialNumber) == 0 || !c.Leaf.NotAfter.After(first.Leaf.NotAfter) {
			t.Fatalf("route certificate 10 days from expiry not renewed: expires %v", c.Leaf.NotAfter)
		}
		if c.Leaf.Subject.OrganizationalUnit[0] != NodeUnit {
			t.Fatalf("renewed route certificate unit %v", c.Leaf.Subject.OrganizationalUnit)
		}
	}
}
