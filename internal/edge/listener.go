package edge

import (
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/penstock/penstock/internal/config"
)

// Listener refuses connections beyond the per-IP rate, the per-IP concurrency cap and the
// total cap by closing them as soon as they are accepted, before any TLS work is spent.
type Listener struct {
	net.Listener
	table   *ipTable
	perIP   int
	total   int64
	open    atomic.Int64
	metrics *Metrics
}

// NewListener wraps ln with the connection limits of l.
func NewListener(ln net.Listener, l config.Limits, m *Metrics) *Listener {
	return &Listener{
		Listener: ln,
		table:    newIPTable(l.ConnRate, l.ConnBurst),
		perIP:    l.MaxConnsPerIP,
		total:    int64(l.MaxConns),
		metrics:  m,
	}
}

// Accept returns the next connection within the limits; refused ones are closed and counted.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := sourceOf(c.RemoteAddr().String())
		if reason := l.admit(ip); reason != "" {
			l.metrics.Reject(reason)
			_ = c.Close()
			continue
		}
		l.metrics.open.Inc()
		return &conn{Conn: c, release: func() { l.release(ip) }}, nil
	}
}

func (l *Listener) admit(ip string) string {
	if l.open.Load() >= l.total {
		return ReasonConnsTotal
	}
	now := time.Now()
	l.table.mu.Lock()
	defer l.table.mu.Unlock()
	e := l.table.entryLocked(ip, now)
	switch {
	case e == nil:
		return ReasonSources
	case !e.lim.AllowN(now, 1):
		return ReasonConnRate
	case e.open >= l.perIP:
		return ReasonConnsPerIP
	}
	e.open++
	l.open.Add(1)
	return ""
}

func (l *Listener) release(ip string) {
	l.table.mu.Lock()
	if e, ok := l.table.entries[ip]; ok && e.open > 0 {
		e.open--
	}
	l.table.mu.Unlock()
	l.open.Add(-1)
	l.metrics.open.Dec()
}

// conn gives its slot back exactly once, however often it is closed.
type conn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
