package activity

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestTakeReturnsWhatChangedSinceTheLastTake(t *testing.T) {
	var now atomic.Int64
	now.Store(1000)
	tr := New(func() time.Time { return time.Unix(now.Load(), 0) })
	tr.Touch("acme", "production", Publish)
	tr.Touch("acme", "staging", API)
	tr.Touch("", "staging", API)  // no tenant: ignored
	tr.Touch("acme", "", Consume) // no environment: ignored
	tr.Touch("acme", "test", Kind(99))
	got := tr.Take(0)
	if len(got) != 2 || got[Env{"acme", "production"}][Publish] != 1000 || got[Env{"acme", "staging"}][API] != 1000 {
		t.Fatalf("first take: %v", got)
	}
	if got := tr.Take(0); len(got) != 0 {
		t.Fatalf("nothing changed, yet: %v", got)
	}
	tr.Touch("acme", "production", Publish) // the same second: nothing new
	if got := tr.Take(0); len(got) != 0 {
		t.Fatalf("same second: %v", got)
	}
	now.Store(1060)
	tr.Touch("acme", "production", Consume)
	got = tr.Take(0)
	if ts := got[Env{"acme", "production"}]; len(got) != 1 || ts[Consume] != 1060 || ts[Publish] != 1000 {
		t.Fatalf("after a consume: %v", got)
	}
	// A write the store refused is taken again.
	tr.Untake(Env{"acme", "production"})
	if got := tr.Take(0); got[Env{"acme", "production"}][Consume] != 1060 {
		t.Fatalf("after untake: %v", got)
	}
	tr.Forget("acme", "production")
	now.Store(1100)
	tr.Touch("acme", "staging", API)
	if got := tr.Take(0); len(got) != 1 || got[Env{"acme", "staging"}][API] != 1100 {
		t.Fatalf("after forgetting production: %v", got)
	}
	tr.Forget("acme", "")
	if got := tr.Take(0); len(got) != 0 {
		t.Fatalf("after forgetting the tenant: %v", got)
	}
	// With a step, a busy environment is written once a step.
	tr.Touch("acme", "busy", Publish)
	if got := tr.Take(time.Hour); len(got) != 1 {
		t.Fatalf("first use with a step: %v", got)
	}
	now.Store(1100 + 3599)
	tr.Touch("acme", "busy", Publish)
	if got := tr.Take(time.Hour); len(got) != 0 {
		t.Fatalf("within the step: %v", got)
	}
	tr.Touch("acme", "busy", API) // a kind never written: at once
	if got := tr.Take(time.Hour); len(got) != 1 {
		t.Fatalf("a new kind within the step: %v", got)
	}
	now.Store(1100 + 3599 + 3600) // a step after the last write
	tr.Touch("acme", "busy", Publish)
	if got := tr.Take(time.Hour); got[Env{"acme", "busy"}][Publish] != 1100+3599+3600 {
		t.Fatalf("a step later: %v", got)
	}
	tr.Prune(func(e Env) bool { return e.Environment != "busy" })
	now.Store(9000)
	tr.Touch("acme", "other", Publish)
	if got := tr.Take(0); len(got) != 1 {
		t.Fatalf("after pruning busy: %v", got)
	}
	var none *Tracker
	none.Touch("acme", "production", Publish)
	none.Forget("acme", "")
	none.Untake(Env{"acme", "production"})
	if got := none.Take(0); len(got) != 0 {
		t.Fatal("a nil tracker took something")
	}
	if Publish.String() != "publish" || Pipeline.String() != "pipeline" || Kind(-1).String() != "unknown" {
		t.Fatal("kind names")
	}
}

// Touches from many goroutines while another takes: every environment's last use is taken
// once it stops changing.
func TestConcurrentTouchesAndTakes(t *testing.T) {
	var now atomic.Int64
	tr := New(func() time.Time { return time.Unix(now.Load(), 0) })
	var wg sync.WaitGroup
	stop := make(chan struct{})
	taken := map[Env]Times{}
	wg.Go(func() {
		for {
			for e, ts := range tr.Take(0) {
				taken[e] = ts
			}
			select {
			case <-stop:
				return
			default:
			}
		}
	})
	var workers sync.WaitGroup
	for i := range 8 {
		workers.Go(func() {
			for j := range 1000 {
				now.Store(int64(j))
				tr.Touch("acme", []string{"a", "b"}[i%2], Kind(j%int(NumKinds)))
			}
		})
	}
	workers.Wait()
	close(stop)
	wg.Wait()
	for e, ts := range tr.Take(0) {
		taken[e] = ts
	}
	if len(taken) != 2 {
		t.Fatalf("environments taken: %v", taken)
	}
}
