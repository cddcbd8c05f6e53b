// Package edge owns the protections in front of every Penstock listener: per-source-IP
// connection rate and concurrency limits, a total connection cap, per-IP request rates and
// body size limits, each counted in metrics. It never authenticates or authorizes: a request
// it lets through is only a request that is not abusive in volume.
package edge

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
)

// Reasons a connection or request is refused, as the reason label of
// penstock_edge_rejected_total.
const (
	ReasonConnRate     = "conn_rate"
	ReasonConnsPerIP   = "conns_per_ip"
	ReasonConnsTotal   = "conns_total"
	ReasonSources      = "too_many_sources" // the per-source table is full of active sources
	ReasonRequestRate  = "request_rate"
	ReasonBodyTooLarge = "body_too_large"
)

// Metrics counts what the edge refuses and holds.
type Metrics struct {
	rejected  *prometheus.CounterVec
	open      prometheus.Gauge
	noRequest prometheus.Counter

	mu    sync.Mutex
	conns map[net.Conn]*servedFlag
}

// NewMetrics registers the edge's metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "penstock_edge_rejected_total",
			Help: "Connections and requests refused by the edge, by reason.",
		}, []string{"reason"}),
		open: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "penstock_edge_open_connections",
			Help: "Connections currently open on the API listener.",
		}),
		noRequest: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "penstock_edge_conns_without_request_total",
			Help: "Connections closed before a complete request: header timeouts (slowloris), oversized headers, failed TLS handshakes, clients that left.",
		}),
		conns: map[net.Conn]*servedFlag{},
	}
	for _, r := range []string{ReasonConnRate, ReasonConnsPerIP, ReasonConnsTotal, ReasonSources, ReasonRequestRate, ReasonBodyTooLarge} {
		m.rejected.WithLabelValues(r) // export zeros so a dashboard sees the series from the start
	}
	reg.MustRegister(m.rejected, m.open, m.noRequest)
	return m
}

// ConnContext is the http.Server hook that gives each connection a flag its requests set,
// so ConnState can tell which connections closed without one complete request.
func (m *Metrics) ConnContext(ctx context.Context, c net.Conn) context.Context {
	f := &servedFlag{}
	m.mu.Lock()
	m.conns[c] = f
	m.mu.Unlock()
	return context.WithValue(ctx, servedKey{}, f)
}

// ConnState is the http.Server hook that counts connections closed before a complete request
// reached a handler: the server cuts slow or oversized headers itself, and this is where they
// show.
func (m *Metrics) ConnState(c net.Conn, s http.ConnState) {
	if s != http.StateClosed && s != http.StateHijacked {
		return
	}
	m.mu.Lock()
	f, ok := m.conns[c]
	delete(m.conns, c)
	m.mu.Unlock()
	if ok && !f.served.Load() && s == http.StateClosed {
		m.noRequest.Inc()
	}
}

type servedKey struct{}

type servedFlag struct{ served atomic.Bool }

// markServed records that the request's connection carried a complete request.
func markServed(r *http.Request) {
	if f, ok := r.Context().Value(servedKey{}).(*servedFlag); ok {
		f.served.Store(true)
	}
}

// Reject counts one refusal.
func (m *Metrics) Reject(reason string) { m.rejected.WithLabelValues(reason).Inc() }

// ipTable keeps a token bucket and an open-connection count per source IP. Entries that are
// idle and whose bucket has refilled are swept, so a scan from many addresses cannot grow it
// without bound.
type ipTable struct {
	rate  rate.Limit
	burst int
	idle  time.Duration
	max   int // entries; beyond it new sources are refused until the sweep frees room

	mu        sync.Mutex
	entries   map[string]*ipEntry
	lastSweep time.Time
}

type ipEntry struct {
	lim      *rate.Limiter
	open     int
	lastSeen time.Time
}

func newIPTable(perSecond float64, burst int) *ipTable {
	idle := 5 * time.Minute
	if refill := time.Duration(float64(burst) / perSecond * float64(time.Second)); refill > idle {
		idle = refill
	}
	return &ipTable{rate: rate.Limit(perSecond), burst: burst, idle: idle, max: maxSources, entries: map[string]*ipEntry{}}
}

// maxSources bounds the memory a scan from many addresses can take (about 200 bytes each).
const maxSources = 100_000

// entryLocked returns ip's entry, creating it, or nil when the table is full of sources that
// are still active; t.mu must be held.
func (t *ipTable) entryLocked(ip string, now time.Time) *ipEntry {
	e, ok := t.entries[ip]
	// Sweep each minute, or each second while the table is full; never per connection, so a
	// full table cannot make every accept scan it.
	if since := now.Sub(t.lastSweep); !ok && (since > time.Minute || len(t.entries) >= t.max && since > time.Second) {
		for k, e := range t.entries {
			if e.open == 0 && now.Sub(e.lastSeen) > t.idle {
				delete(t.entries, k)
			}
		}
		t.lastSweep = now
	}
	if !ok {
		if len(t.entries) >= t.max {
			return nil
		}
		e = &ipEntry{lim: rate.NewLimiter(t.rate, t.burst)}
		t.entries[ip] = e
	}
	e.lastSeen = now
	return e
}

// allow takes one token from ip's bucket.
func (t *ipTable) allow(ip string) bool {
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.entryLocked(ip, now)
	return e != nil && e.lim.AllowN(now, 1)
}

// sourceOf is the key limits are kept under: the IPv4 address, or the IPv6 /64 (one
// subscriber's usual allocation, so rotating addresses inside it gains nothing).
func sourceOf(hostport string) string {
	ap, err := netip.ParseAddrPort(hostport)
	if err != nil {
		return hostport
	}
	ip := ap.Addr().Unmap()
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.String()
	}
	return ip.String()
}
