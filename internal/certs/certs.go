// Package certs owns the API's TLS: the internal certificate authority and server
// certificate it issues into the data directory, operator-supplied certificates and their
// reload, and the one tls.Config every Penstock listener uses. It never serves a connection.
package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/datadir"
)

// Files of the internal CA, relative to the data directory.
const (
	Dir            = "tls"
	CACertFile     = "tls/ca.crt"
	caKeyFile      = "tls/ca.key"
	serverCertFile = "tls/server.crt"
	serverKeyFile  = "tls/server.key"
)

const (
	caValidity     = 10 * 365 * 24 * time.Hour
	serverValidity = 365 * 24 * time.Hour
	// renewBefore is how long before expiry an internal server certificate is reissued.
	renewBefore = 30 * 24 * time.Hour
)

// Manager holds the API's current certificate and replaces it on Reload.
type Manager struct {
	dataDir string
	cfg     config.TLS
	log     *slog.Logger

	mu   sync.RWMutex
	cert *tls.Certificate

	now         func() time.Time // the clock; tests move it
	renewMu     sync.Mutex       // one renewal at a time
	lastRenewal time.Time        // guarded by renewMu
}

// NewManager loads the configured certificate, or creates the internal CA and a server
// certificate covering localhost, 127.0.0.1, ::1 and cfg.SANs.
func NewManager(dataDir string, cfg config.TLS, log *slog.Logger) (*Manager, error) {
	m := &Manager{dataDir: dataDir, cfg: cfg, log: log, now: time.Now}
	if err := m.Reload(); err != nil {
		return nil, err
	}
	return m, nil
}

// Internal reports whether the certificate comes from Penstock's own CA.
func (m *Manager) Internal() bool { return m.cfg.CertFile == "" }

// CAPath is the internal CA certificate clients should trust, or "" with an operator's certificate.
func (m *Manager) CAPath() string {
	if !m.Internal() {
		return ""
	}
	return filepath.Join(m.dataDir, CACertFile)
}

// Reload reads the operator's certificate files again, or reissues the internal certificate
// if it no longer covers the configured names or is close to expiry. On error the current
// certificate stays in use.
func (m *Manager) Reload() error {
	var (
		cert *tls.Certificate
		err  error
	)
	if m.Internal() {
		cert, err = m.internal()
	} else {
		var c tls.Certificate
		c, err = tls.LoadX509KeyPair(m.cfg.CertFile, m.cfg.KeyFile)
		if err != nil {
			err = fmt.Errorf("api.tls: load %s and %s: %w", m.cfg.CertFile, m.cfg.KeyFile, err)
		}
		cert = &c
	}
	if err != nil {
		return err
	}
	m.mu.Lock()
	m.cert = cert
	m.mu.Unlock()
	m.log.Info("tls certificate loaded", "internal", m.Internal(), "subject", cert.Leaf.Subject.CommonName,
		"dns_names", cert.Leaf.DNSNames, "not_after", cert.Leaf.NotAfter.UTC())
	return nil
}

// Current returns the certificate in use.
func (m *Manager) Current() *tls.Certificate {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.cert
}

// TLSConfig is the server configuration: TLS 1.2 at least (1.3 is negotiated whenever the
// client offers it) and, for TLS 1.2, only forward-secret AEAD cipher suites.
func (m *Manager) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		CipherSuites: []uint16{
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
			tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
		},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			m.renewIfDue()
			return m.Current(), nil
		},
		NextProtos: []string{"h2", "http/1.1"},
	}
}

// renewIfDue reissues an internal certificate that is within renewBefore of expiry, so a
// process that runs for a year never serves an expired one. It runs in the handshake that
// notices, at most once an hour; other handshakes meanwhile get the current certificate.
func (m *Manager) renewIfDue() {
	if !m.Internal() || m.Current().Leaf.NotAfter.Sub(m.now()) > renewBefore {
		return
	}
	if !m.renewMu.TryLock() {
		return
	}
	defer m.renewMu.Unlock()
	if m.now().Sub(m.lastRenewal) < time.Hour {
		return
	}
	m.lastRenewal = m.now()
	if err := m.Reload(); err != nil {
		m.log.Error("renew internal certificate", "error", err)
	}
}

func (m *Manager) internal() (*tls.Certificate, error) {
	caCert, caKey, err := m.loadOrCreateCA()
	if err != nil {
		return nil, err
	}
	names := wantedNames(m.cfg.SANs)
	certPath, keyPath := filepath.Join(m.dataDir, serverCertFile), filepath.Join(m.dataDir, serverKeyFile)
	leaf := pkix.Name{CommonName: "penstock", Organization: []string{"Penstock"}}
	if err := m.issueIfDue(caCert, caKey, certPath, keyPath, leaf, names, x509.ExtKeyUsageServerAuth); err != nil {
		return nil, err
	}
	c, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		return nil, err
	}
	return &c, nil
}

func (m *Manager) loadOrCreateCA() (*x509.Certificate, *ecdsa.PrivateKey, error) {
	certPath, keyPath := filepath.Join(m.dataDir, CACertFile), filepath.Join(m.dataDir, caKeyFile)
	c, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err == nil {
		key, ok := c.PrivateKey.(*ecdsa.PrivateKey)
		if !ok {
			return nil, nil, fmt.Errorf("%s: not an ECDSA key", keyPath)
		}
		return c.Leaf, key, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("internal CA: %w", err)
	}
	// A new CA is made only in a first start, and only when neither half exists: half of one
	// is a CA that clients may already trust.
	var present []string
	for _, f := range []string{caKeyFile, CACertFile} {
		if _, err := os.Lstat(filepath.Join(m.dataDir, f)); err == nil {
			present = append(present, f)
		}
	}
	for _, f := range []string{caKeyFile, CACertFile} {
		if _, err := os.Lstat(filepath.Join(m.dataDir, f)); err == nil {
			continue
		}
		const protects = "the internal CA (tls/ca.crt and tls/ca.key), which every client of this server trusts: " +
			"a new one would make every client refuse the server"
		if len(present) > 0 {
			return nil, nil, &datadir.MissingError{Dir: m.dataDir, File: f, Protects: protects}
		}
		if err := datadir.MayCreate(m.dataDir, f, protects); err != nil {
			return nil, nil, err
		}
	}
	if err := os.MkdirAll(filepath.Join(m.dataDir, Dir), 0o700); err != nil {
		return nil, nil, fmt.Errorf("create %s: %w", Dir, err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "Penstock internal CA", Organization: []string{"Penstock"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("create internal CA: %w", err)
	}
	if err := writePair(certPath, keyPath, der, key); err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	m.log.Info("internal CA created", "path", certPath)
	return cert, key, nil
}

// writePair writes a certificate and its key, both 0600, each so that a crash never leaves
// half a file.
func writePair(certPath, keyPath string, der []byte, key *ecdsa.PrivateKey) error {
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := writeFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})); err != nil {
		return err
	}
	return writeFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

// issueIfDue issues a certificate of the CA for subject and names into certPath and keyPath,
// unless the one there covers them, is signed by the CA and is not close to expiry.
func (m *Manager) issueIfDue(caCert *x509.Certificate, caKey *ecdsa.PrivateKey, certPath, keyPath string, subject pkix.Name,
	names []string, usage ...x509.ExtKeyUsage) error {
	if c, err := tls.LoadX509KeyPair(certPath, keyPath); err == nil {
		if covers(c.Leaf, names) && c.Leaf.NotAfter.Sub(m.now()) > renewBefore && c.Leaf.CheckSignatureFrom(caCert) == nil &&
			slices.Equal(c.Leaf.Subject.OrganizationalUnit, subject.OrganizationalUnit) {
			return nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		m.log.Warn("internal certificate unreadable; issuing a new one", "path", certPath, "error", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      subject,
		NotBefore:    m.now().Add(-time.Hour),
		NotAfter:     m.now().Add(serverValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  usage,
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("issue certificate %s: %w", certPath, err)
	}
	return writePair(certPath, keyPath, der, key)
}

func writeFile(path string, data []byte) error {
	return datadir.WriteFile(path, data, 0o600, true)
}

func wantedNames(sans []string) []string {
	names := []string{"localhost", "127.0.0.1", "::1"}
	for _, s := range sans {
		if !slices.Contains(names, s) {
			names = append(names, s)
		}
	}
	return names
}

func covers(c *x509.Certificate, names []string) bool {
	for _, n := range names {
		if c.VerifyHostname(n) != nil {
			return false
		}
	}
	return true
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err)) // the kernel's random source failing is not recoverable
	}
	return n
}
