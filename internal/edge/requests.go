package edge

import (
	"net/http"
	"strconv"

	"github.com/penstock/penstock/internal/config"
)

// Refusal writes the response for a refused request; the API supplies it so refusals carry
// the same error body as every other error.
type Refusal func(w http.ResponseWriter, r *http.Request, status int, code, msg string)

// Requests limits the request rate per source IP and the size of request bodies. The source
// IP is the connection's peer: forwarded-for headers are not trusted.
func Requests(l config.Limits, m *Metrics, refuse Refusal) func(http.Handler) http.Handler {
	table := newIPTable(l.RequestRate, l.RequestBurst)
	maxBody := l.MaxBodyBytes
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !table.allow(hostOfRequest(r)) {
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
			r.Body = http.MaxBytesReader(w, r.Body, maxBody)
			next.ServeHTTP(w, r)
		})
	}
}

func hostOfRequest(r *http.Request) string {
	for i := len(r.RemoteAddr) - 1; i >= 0; i-- {
		if r.RemoteAddr[i] == ':' {
			h := r.RemoteAddr[:i]
			if len(h) > 1 && h[0] == '[' {
				h = h[1 : len(h)-1]
			}
			return h
		}
	}
	return r.RemoteAddr
}
