package egress

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// HTTPClient returns a client whose every connection, redirects included, goes through d. It
// uses no proxy from the environment (a proxy would dial on the client's behalf, unchecked)
// and follows at most 10 redirects, each only to the same scheme and host as the request it
// came from: a redirect elsewhere would carry the connector's credentials (custom headers and
// bearer tokens survive redirects) to a host nobody configured, and https must not turn into
// http.
func (d *Dialer) HTTPClient(timeout time.Duration) *http.Client {
	tr := &http.Transport{
		Proxy:                 nil,
		DialContext:           d.DialContext,
		TLSClientConfig:       &tls.Config{MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          16,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: timeout,
	}
	return &http.Client{Transport: tr, Timeout: timeout, CheckRedirect: checkRedirect}
}

func checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= 10 {
		return errors.New("stopped after 10 redirects")
	}
	first := via[0].URL
	if req.URL.Scheme != first.Scheme || !strings.EqualFold(req.URL.Host, first.Host) {
		return fmt.Errorf("%w: redirect from %s://%s to %s://%s (only redirects within the same scheme and host are followed)",
			ErrDenied, first.Scheme, first.Host, req.URL.Scheme, req.URL.Host)
	}
	// Every connection, this one included, is checked when it is dialled.
	return nil
}
