// Package testenv owns what Penstock's tests share: finding the machine's services, writing
// operator certificates, collecting logs from goroutines. It is imported by tests only and
// never by the server.
package testenv

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"
)

// NATSURL is the machine's NATS JetStream server, the external engine in tests.
const NATSURL = "nats://127.0.0.1:4222"

// RequireNATS needs the machine's NATS JetStream server.
func RequireNATS(t testing.TB) {
	t.Helper()
	Require(t, "NATS JetStream", "127.0.0.1:4222", "nats-server -js -a 127.0.0.1 -p 4222")
}

// Require needs a TCP service at addr. On a laptop without it the test skips, saying how to
// start it; with CI set (where .ci/services starts every service) it fails.
func Require(t testing.TB, name, addr, start string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err == nil {
		c.Close()
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s at %s is down: %v (.ci/services starts it)", name, addr, err)
	}
	t.Skipf("%s at %s is down (%v): start it (%s) or run bash .ci/run", name, addr, err, start)
}

// WriteCert writes a self-signed ECDSA certificate for localhost with common name cn and its
// key, as an operator would supply them. Each file is replaced by a rename, so a server
// reading them never sees half a file.
func WriteCert(t testing.TB, certPath, keyPath, cn string) *x509.Certificate {
	t.Helper()
	cert, err := writeCertErr(certPath, keyPath, cn)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func writeCert(certPath, keyPath, cn string) error {
	_, err := writeCertErr(certPath, keyPath, cn)
	return err
}

func writeCertErr(certPath, keyPath, cn string) (*x509.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: cn}, DNSNames: []string{"localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	for path, block := range map[string]*pem.Block{
		keyPath:  {Type: "EC PRIVATE KEY", Bytes: kb},
		certPath: {Type: "CERTIFICATE", Bytes: der},
	} {
		if err := os.WriteFile(path+".tmp", pem.EncodeToMemory(block), 0o600); err != nil {
			return nil, err
		}
		if err := os.Rename(path+".tmp", path); err != nil {
			return nil, err
		}
	}
	return x509.ParseCertificate(der)
}

// LogBuffer collects output written from several goroutines.
type LogBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// NATSMasterKey is the master key of every Penstock a test runs against the machine's NATS
// server. That server outlives test runs and keeps the platform state they write (wrapped data
// keys, users, the audit log); one master key for all of them keeps it readable, as one
// Penstock platform per NATS server would in production.
const NATSMasterKey = "7e1a3c5b9d2f4a6c8e0b1d3f5a7c9e2b4d6f8a0c2e4b6d8f1a3c5e7b9d0f2a4c"

// TOTPCode is the code an authenticator app shows for secret at a time (RFC 6238 as Penstock
// uses it: SHA-1, 6 digits, 30 seconds).
func TOTPCode(t testing.TB, secret string, at time.Time) string {
	t.Helper()
	c, err := totp.GenerateCodeCustom(secret, at, totp.ValidateOpts{Period: 30, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1})
	if err != nil {
		t.Fatal(err)
	}
	return c
}
