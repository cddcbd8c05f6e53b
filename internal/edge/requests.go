package edge

import (
	"errors"
	"io"
	"net/http"
	"strconv"

	"github.com/penstock/penstock/internal/config"
)

// Refusal writes the response for a refused request; the API supplies it so refusals carry
// the same error body as every other error.
type Refusal func(w http.ResponseWriter, r *http.Request, status int, code, msg string)

// Requests limits the request rate per source (IPv4 address or IPv6 /64) and the size of
// request bodies. The source is the connection's peer: forwarded-for headers are not trusted.
func Requests(l config.Limits, m *Metrics, refuse Refusal) func(http.Handler) http.Handler {
	table := newIPTable(l.RequestRate, l.RequestBurst)
	maxBody := l.MaxBodyBytes
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			markServed(r)
			if !table.allow(sourceOf(r.RemoteAddr)) {
				m.Reject(ReasonRequestRate)
				w.Header().Set("Retry-After", strconv.Itoa(1))
				refuse(w, r, http.StatusTooManyRequests, "rate_limited", "too many requests from this address; retry later")
				return
			}
			if r.ContentLength > maxBody {
				m.Reject(ReasonBodyTooLarge)
				w.Header().Set("Connection", "close")
				refuse(w, r, http.StatusRequestEntityTooLarge, "body_too_large",
					"request body exceeds "+strconv.FormatInt(maxBody, 10)+" bytes")
				return
			}
			r.Body = &countedLimit{ReadCloser: http.MaxBytesReader(w, r.Body, maxBody), m: m}
			next.ServeHTTP(w, r)
		})
	}
}

// countedLimit counts a body that turns out too large while it is read (chunked bodies
// declare no length up front). The handler sees the *http.MaxBytesError and answers 413.
type countedLimit struct {
	io.ReadCloser
	m       *Metrics
	counted bool
}

func (c *countedLimit) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	var tooLarge *http.MaxBytesError
	if err != nil && !c.counted && errors.As(err, &tooLarge) {
		c.counted = true
		c.m.Reject(ReasonBodyTooLarge)
	}
	return n, err
}
