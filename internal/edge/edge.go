// Package edge owns the protections in front of every Penstock listener: per-source-IP
// connection rate and concurrency limits, a total connection cap, per-IP request rates and
// body size limits, each counted in metrics. It never authenticates or authorizes: a request
// it lets through is only a request that is not abusive in volume.
package edge

import (
	"net"
	"sync"
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
	ReasonRequestRate  = "request_rate"
	ReasonBodyTooLarge = "body_too_large"
)

// Metrics counts what the edge refuses and holds.
type Metrics struct {
	rejected *prometheus.CounterVec
	open     prometheus.Gauge
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
	}
	for _, r := range []string{ReasonConnRate, ReasonConnsPerIP, ReasonConnsTotal, ReasonRequestRate, ReasonBodyTooLarge} {
		m.rejected.WithLabelValues(r) // export zeros so a dashboard sees the series from the start
	}
	reg.MustRegister(m.rejected, m.open)
	return m
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
	return &ipTable{rate: rate.Limit(perSecond), burst: burst, idle: idle, entries: map[string]*ipEntry{}}
}

// entryLocked returns ip's entry, creating it; t.mu must be held.
func (t *ipTable) entryLocked(ip string, now time.Time) *ipEntry {
	if now.Sub(t.lastSweep) > time.Minute {
		for k, e := range t.entries {
			if e.open == 0 && now.Sub(e.lastSeen) > t.idle {
				delete(t.entries, k)
			}
		}
		t.lastSweep = now
	}
	e, ok := t.entries[ip]
	if !ok {
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
	return t.entryLocked(ip, now).lim.AllowN(now, 1)
}

// hostOf is the IP part of a connection's remote address.
func hostOf(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	h, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return h
}
