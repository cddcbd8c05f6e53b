package certs_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/penstock/penstock/internal/certs"
	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/testenv"
)

var discard = slog.New(slog.DiscardHandler)

func TestInternalCA(t *testing.T) {
	dir := t.TempDir()
	m, err := certs.NewManager(dir, config.TLS{SANs: []string{"penstock.internal", "10.1.2.3"}}, discard)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"tls/ca.crt", "tls/ca.key", "tls/server.crt", "tls/server.key"} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %o, want 600", f, st.Mode().Perm())
		}
	}
	leaf := m.Current().Leaf
	pub, ok := leaf.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		t.Fatalf("server key is %T, want ECDSA P-256", leaf.PublicKey)
	}
	pool := x509.NewCertPool()
	caPEM, _ := os.ReadFile(m.CAPath())
	pool.AppendCertsFromPEM(caPEM)
	for _, name := range []string{"localhost", "127.0.0.1", "::1", "penstock.internal", "10.1.2.3"} {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: pool}); err != nil {
			t.Errorf("certificate not valid for %s: %v", name, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: "other.example", Roots: pool}); err == nil {
		t.Error("certificate valid for a name it was not issued for")
	}

	// A restart reuses the CA and the certificate.
	m2, err := certs.NewManager(dir, config.TLS{SANs: []string{"penstock.internal", "10.1.2.3"}}, discard)
	if err != nil {
		t.Fatal(err)
	}
	if m2.Current().Leaf.SerialNumber.Cmp(leaf.SerialNumber) != 0 {
		t.Error("restart reissued an unchanged certificate")
	}

	// A new SAN reissues the certificate from the same CA.
	m3, err := certs.NewManager(dir, config.TLS{SANs: []string{"new.example"}}, discard)
	if err != nil {
		t.Fatal(err)
	}
	if err := m3.Current().Leaf.VerifyHostname("new.example"); err != nil {
		t.Errorf("after adding a SAN: %v", err)
	}
	if _, err := m3.Current().Leaf.Verify(x509.VerifyOptions{DNSName: "new.example", Roots: pool}); err != nil {
		t.Errorf("reissued certificate not from the same CA: %v", err)
	}
}

func TestOperatorCertificateReload(t *testing.T) {
	dir := t.TempDir()
	cp, kp := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	first := testenv.WriteCert(t, cp, kp, "first").SerialNumber
	m, err := certs.NewManager(dir, config.TLS{CertFile: cp, KeyFile: kp}, discard)
	if err != nil {
		t.Fatal(err)
	}
	if m.Internal() || m.CAPath() != "" {
		t.Fatal("operator certificate reported as internal")
	}
	if _, err := os.Stat(filepath.Join(dir, "tls")); !os.IsNotExist(err) {
		t.Fatal("internal CA created although the operator supplied a certificate")
	}
	if m.Current().Leaf.SerialNumber.Cmp(first) != 0 {
		t.Fatal("not serving the operator's certificate")
	}
	second := testenv.WriteCert(t, cp, kp, "second").SerialNumber
	if err := m.Reload(); err != nil {
		t.Fatal(err)
	}
	if m.Current().Leaf.SerialNumber.Cmp(second) != 0 {
		t.Fatal("reload kept the old certificate")
	}
	// A broken file on reload keeps the current certificate.
	os.WriteFile(kp, []byte("garbage"), 0o600)
	if err := m.Reload(); err == nil {
		t.Fatal("reload accepted a broken key")
	}
	if m.Current().Leaf.SerialNumber.Cmp(second) != 0 {
		t.Fatal("failed reload replaced the certificate")
	}
	if _, err := certs.NewManager(dir, config.TLS{CertFile: filepath.Join(dir, "none.pem"), KeyFile: kp}, discard); err == nil {
		t.Fatal("missing certificate file accepted")
	}
}
