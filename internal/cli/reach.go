package cli

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"syscall"
)

// unreachable is a request that never got an answer from the server, said with what to do.
type unreachable struct {
	msg string
	err error
}

func (e *unreachable) Error() string { return e.msg }
func (e *unreachable) Unwrap() error { return e.err }

// reachTransport says, when a request gets no answer, why and what to do: start the server,
// or point --server or --ca at the right one.
type reachTransport struct {
	base   http.RoundTripper
	server string // as --server gives it
	ca     string // the CA certificate file trusted
}

func (t reachTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(r)
	if err != nil {
		return nil, t.explain(err)
	}
	return resp, nil
}

func (t reachTransport) explain(err error) error {
	var (
		dns     *net.DNSError
		unknown x509.UnknownAuthorityError
		verify  *tls.CertificateVerificationError
		host    x509.HostnameError
		record  tls.RecordHeaderError
	)
	msg := ""
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		msg = fmt.Sprintf("cannot reach %s (connection refused): is penstock serve running? Start it with penstock serve, or point --server at it", t.server)
	case errors.As(err, &dns):
		msg = fmt.Sprintf("cannot reach %s (no such host %s): check --server", t.server, dns.Name)
	case errors.As(err, &host):
		msg = fmt.Sprintf("%s presents a certificate for other names (%v): use one of them in --server, or add this one to the server's api.tls.sans", t.server, host.Certificate.DNSNames)
	case errors.As(err, &unknown), errors.As(err, &verify):
		msg = fmt.Sprintf("%s presents a certificate the CA in %s did not sign: pass the server's CA certificate with --ca, or its data directory with --data-dir", t.server, t.ca)
	case errors.As(err, &record):
		msg = fmt.Sprintf("%s does not answer HTTPS: point --server at the https:// address penstock serve listens on", t.server)
	default:
		return err
	}
	return &unreachable{msg: msg, err: err}
}

// caError says why the CA certificate to trust cannot be read, and where it is looked for.
func caError(path string, given bool, err error) error {
	why := err.Error()
	var pe *fs.PathError
	if errors.As(err, &pe) {
		why = pe.Err.Error()
	}
	if given {
		return fmt.Errorf("cannot read the CA certificate %s given with --ca (%s): pass the server's tls/ca.crt", path, why)
	}
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("no CA certificate at %s to trust the server with: pass --ca with the server's tls/ca.crt, or --data-dir with its data directory", path)
	}
	return fmt.Errorf("cannot read the CA certificate %s (%s): pass --ca with the server's tls/ca.crt, or --data-dir with its data directory", path, why)
}
