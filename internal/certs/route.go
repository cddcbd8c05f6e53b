package certs

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/penstock/penstock/internal/datadir"
)

// Files of this node's route certificate, relative to the data directory.
const (
	nodeCertFile = "tls/node.crt"
	nodeKeyFile  = "tls/node.key"
)

// NodeUnit is the organizational unit of route certificates: a certificate of the CA without
// it (the API's) is refused on a route.
const NodeUnit = "penstock-node"

// RouteTLS is the mutual TLS of the cluster's routes: this node's certificate (issued by the
// platform CA for node and hosts, renewed like the API's) both as server and as client, and
// the CA alone to verify the other side, which must present a node certificate. A node dialed
// must hold a certificate for the address it was dialed at: its cluster.advertise or
// cluster.listen host, its host name and api.tls.sans are in it.
func (m *Manager) RouteTLS(node string, hosts []string) (*tls.Config, error) {
	caCert, caKey, err := m.loadOrCreateCA()
	if err != nil {
		return nil, err
	}
	certPath, keyPath := filepath.Join(m.dataDir, nodeCertFile), filepath.Join(m.dataDir, nodeKeyFile)
	subject := pkix.Name{CommonName: node, Organization: []string{"Penstock"}, OrganizationalUnit: []string{NodeUnit}}
	names := wantedNames(append([]string{node}, hosts...))
	rc := &routeCert{load: func() (*tls.Certificate, error) {
		if err := m.issueIfDue(caCert, caKey, certPath, keyPath, subject, names, x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth); err != nil {
			return nil, fmt.Errorf("route certificate: %w", err)
		}
		c, err := tls.LoadX509KeyPair(certPath, keyPath)
		if err != nil {
			return nil, fmt.Errorf("route certificate: %w", err)
		}
		return &c, nil
	}, now: func() time.Time { return m.now() }}
	if _, err := rc.get(); err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		// The certificate is renewed by the running node, as the API's is, 30 days before
		// it expires: a handshake after that gets the new one.
		GetCertificate:       func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return rc.get() },
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return rc.get() },
		RootCAs:              pool,
		ClientCAs:            pool,
		ClientAuth:           tls.RequireAndVerifyClientCert,
		// Beyond the chain (and, dialing, the name): a node certificate, not the API's.
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verifyNode(cs, pool)
		},
	}, nil
}

// routeCert is this node's route certificate, checked for renewal at most once an hour.
type routeCert struct {
	load func() (*tls.Certificate, error)
	now  func() time.Time

	mu      sync.Mutex
	cert    *tls.Certificate
	checked time.Time
}

func (r *routeCert) get() (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cert != nil && r.now().Sub(r.checked) < time.Hour {
		return r.cert, nil
	}
	c, err := r.load()
	if err != nil {
		if r.cert != nil {
			return r.cert, nil // keep the current one; the next check tries again
		}
		return nil, err
	}
	r.cert, r.checked = c, r.now()
	return c, nil
}

func verifyNode(cs tls.ConnectionState, pool *x509.CertPool) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("route: the other node presented no certificate")
	}
	leaf := cs.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}); err != nil {
		return fmt.Errorf("route: certificate of %q: %w", leaf.Subject.CommonName, err)
	}
	if !slices.Contains(leaf.Subject.OrganizationalUnit, NodeUnit) ||
		!slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageClientAuth) || !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageServerAuth) {
		return fmt.Errorf("route: certificate of %q is not a node certificate of this platform", leaf.Subject.CommonName)
	}
	return nil
}

// CAFiles returns the platform CA's certificate and key (PEM) of dataDir, for a node that
// joins the cluster.
func CAFiles(dataDir string) (certPEM, keyPEM []byte, err error) {
	if certPEM, err = os.ReadFile(filepath.Join(dataDir, CACertFile)); err != nil {
		return nil, nil, err
	}
	if keyPEM, err = os.ReadFile(filepath.Join(dataDir, caKeyFile)); err != nil {
		return nil, nil, err
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		return nil, nil, fmt.Errorf("platform CA: %w", err)
	}
	return certPEM, keyPEM, nil
}

// InstallCA writes the cluster's CA into the data directory of a node that joins it. The
// directory must be new (a first start): a node with data of its own has a CA its clients
// already trust.
func InstallCA(dataDir string, certPEM, keyPEM []byte) error {
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		return fmt.Errorf("platform CA: %w", err)
	}
	first, err := datadir.FirstStart(dataDir)
	if err != nil {
		return err
	}
	if !first {
		return fmt.Errorf("data directory %s holds data already: a node joins a cluster with a new, empty data directory", dataDir)
	}
	if err := os.MkdirAll(filepath.Join(dataDir, Dir), 0o700); err != nil {
		return err
	}
	if err := writeFile(filepath.Join(dataDir, caKeyFile), keyPEM); err != nil {
		return err
	}
	return writeFile(filepath.Join(dataDir, CACertFile), certPEM)
}
