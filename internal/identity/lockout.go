package identity

import (
	"sync"
	"time"
)

// Lockout counts failed logins per account and per source IP and locks each out for a time
// that doubles with every failure past the threshold. The clock is a field so tests advance it
// instead of sleeping.
type Lockout struct {
	Threshold int           // failures allowed before the first lock
	Base, Max time.Duration // first lock and longest lock
	Now       func() time.Time

	mu      sync.Mutex
	entries map[string]*lockEntry
	locks   int // lockouts started, for admins
}

type lockEntry struct {
	failures int
	until    time.Time
	last     time.Time
}

// NewLockout: 5 failures, then 1 minute, doubling up to 1 hour.
func NewLockout() *Lockout {
	return &Lockout{Threshold: 5, Base: time.Minute, Max: time.Hour, Now: time.Now, entries: map[string]*lockEntry{}}
}

// Locked reports whether any of keys (such as "user:alice", "ip:192.0.2.1") is locked now,
// and until when.
func (l *Lockout) Locked(keys ...string) (bool, time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.Now()
	var until time.Time
	for _, k := range keys {
		if e, ok := l.entries[k]; ok && now.Before(e.until) && e.until.After(until) {
			until = e.until
		}
	}
	return !until.IsZero(), until
}

// Fail records a failure for every key.
func (l *Lockout) Fail(keys ...string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.Now()
	for _, k := range keys {
		e, ok := l.entries[k]
		if !ok || now.Sub(e.last) > 24*time.Hour {
			e = &lockEntry{}
			l.entries[k] = e
		}
		e.failures++
		e.last = now
		if over := e.failures - l.Threshold; over >= 0 {
			d := l.Base << min(over, 30)
			if d > l.Max || d <= 0 {
				d = l.Max
			}
			e.until = now.Add(d)
			l.locks++
		}
	}
}

// Succeed clears the account's counter (not the source IP's: one good login from an address
// does not excuse its other failures).
func (l *Lockout) Succeed(account string) {
	l.mu.Lock()
	delete(l.entries, account)
	l.mu.Unlock()
}

// Lockouts is how many lockouts have started since the process began.
func (l *Lockout) Lockouts() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.locks
}
