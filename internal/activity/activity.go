// Package activity keeps when each tenant-environment was last used: a publish, a consume, an
// API call by one of the tenant's own principals, a native connection, a pipeline run. Use is
// noted in memory (a map lookup and an atomic compare per call, no write, no lock on the
// path of a publish); the retention package writes it to the store (checked every minute) and decides
// from it. It has no dependencies inside Penstock, so every subsystem can note use.
package activity

import (
	"sync"
	"sync/atomic"
	"time"
)

// Kind is one way an environment is used.
type Kind int

// The kinds of use, in the order they are shown.
const (
	Publish Kind = iota
	Consume
	API
	Native
	Pipeline
	NumKinds
)

var kindNames = [NumKinds]string{"publish", "consume", "api", "native", "pipeline"}

func (k Kind) String() string {
	if k < 0 || k >= NumKinds {
		return "unknown"
	}
	return kindNames[k]
}

// Env names a tenant-environment.
type Env struct{ Tenant, Environment string }

// Times are the last use of each kind, as Unix seconds (0: not seen by this process).
type Times [NumKinds]int64

// Tracker notes use. The zero value is not usable: call New. A nil *Tracker ignores every
// call, so a subsystem built without one needs no checks.
type Tracker struct {
	now  func() time.Time
	envs sync.Map // Env -> *entry
}

type entry struct {
	last    [NumKinds]atomic.Int64
	flushed [NumKinds]atomic.Int64 // what the last Take returned
}

// New returns a tracker reading the given clock (time.Now when nil).
func New(now func() time.Time) *Tracker {
	if now == nil {
		now = time.Now
	}
	return &Tracker{now: now}
}

// Now is the tracker's clock.
func (t *Tracker) Now() time.Time { return t.now() }

// Touch notes that env was used in the way k, now.
func (t *Tracker) Touch(tenant, env string, k Kind) {
	if t == nil || tenant == "" || env == "" || k < 0 || k >= NumKinds {
		return
	}
	key := Env{tenant, env}
	v, ok := t.envs.Load(key)
	if !ok {
		v, _ = t.envs.LoadOrStore(key, &entry{})
	}
	e := v.(*entry)
	now := t.now().Unix()
	// Within a second nothing is written: the common case of a busy environment is one
	// atomic load. A later time is never replaced by an earlier one.
	for {
		old := e.last[k].Load()
		if old >= now || e.last[k].CompareAndSwap(old, now) {
			return
		}
	}
}

// Take returns the environments with a use to write, with their last use of every kind seen
// by this process: those with a use of a kind not written yet, or later by at least step than
// the one written. A busy environment is written at most once a step; one used again after a
// quiet spell longer than step is written at the next Take.
func (t *Tracker) Take(step time.Duration) map[Env]Times {
	out := map[Env]Times{}
	if t == nil {
		return out
	}
	s := int64(step / time.Second)
	t.envs.Range(func(k, v any) bool {
		e := v.(*entry)
		var ts Times
		due := false
		for i := range ts {
			ts[i] = e.last[i].Load()
			if f := e.flushed[i].Load(); ts[i] > f && (f == 0 || ts[i]-f >= s) {
				due = true
			}
		}
		if due {
			for i := range ts {
				e.flushed[i].Store(ts[i])
			}
			out[k.(Env)] = ts
		}
		return true
	})
	return out
}

// Prune forgets the environments keep refuses (deleted ones).
func (t *Tracker) Prune(keep func(Env) bool) {
	if t == nil {
		return
	}
	t.envs.Range(func(k, _ any) bool {
		if !keep(k.(Env)) {
			t.envs.Delete(k)
		}
		return true
	})
}

// Untake marks what Take returned as not written (the store refused it): the next Take
// returns it again.
func (t *Tracker) Untake(env Env) {
	if t == nil {
		return
	}
	if v, ok := t.envs.Load(env); ok {
		for i := range v.(*entry).flushed {
			v.(*entry).flushed[i].Store(0)
		}
	}
}

// Forget drops what is kept of the environments of a tenant (env "" for all of them).
func (t *Tracker) Forget(tenant, env string) {
	if t == nil {
		return
	}
	t.envs.Range(func(k, _ any) bool {
		if e := k.(Env); e.Tenant == tenant && (env == "" || e.Environment == env) {
			t.envs.Delete(k)
		}
		return true
	})
}
