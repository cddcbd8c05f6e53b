package pipeline

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/penstock/penstock/internal/keyring/keyringtest"
)

// TestLeaseIsHeldByOneNodeAndPassesOnWhenItsHolderDies: while a node holds a lease (renewing
// it), another never gets it; when the holder stops renewing (it died), the other takes it
// within the lapse time plus one attempt, and a holder that loses it is told at once.
func TestLeaseIsHeldByOneNodeAndPassesOnWhenItsHolderDies(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	st, closeStack, err := keyringtest.OpenTemp(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer closeStack()
	const ttl = 1500 * time.Millisecond
	a, err := openLeases(ctx, st.Platform, "a", ttl, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := openLeases(ctx, st.Platform, "b", ttl, nil)
	if err != nil {
		t.Fatal(err)
	}
	key := leaseKey("acme/production/shop", "nightly")
	quit := make(chan struct{})
	lostA, releaseA, ok := a.hold(quit, nil, key)
	if !ok {
		t.Fatal("a did not get a free lease")
	}
	// b waits while a renews: three lapse times.
	var bHolds atomic.Bool
	bDone := make(chan struct{})
	var releaseB func()
	go func() {
		defer close(bDone)
		_, rel, ok := b.hold(quit, nil, key)
		if ok {
			releaseB = rel
			bHolds.Store(true)
		}
	}()
	defer func() {
		if releaseB != nil {
			releaseB()
		}
	}()
	time.Sleep(3 * ttl) // the property under test is what does not happen in this time
	if bHolds.Load() {
		t.Fatal("b took a lease a was renewing")
	}
	select {
	case <-lostA:
		t.Fatal("a lost a lease it was renewing")
	default:
	}
	// a gives it up: b has it at its next attempt.
	releaseA()
	released := time.Now()
	select {
	case <-bDone:
	case <-time.After(10 * ttl):
		t.Fatal("b did not take the released lease")
	}
	t.Logf("released lease taken over in %v", time.Since(released).Round(time.Millisecond))
	if !bHolds.Load() {
		t.Fatal("b's hold ended without the lease")
	}
	if got := b.Holder(ctx, "acme/production/shop", "nightly"); got != "b" {
		t.Fatalf("holder %q, want b", got)
	}
	// A holder that died left its entry and renews it no more (kill -9): a takes the lease
	// once the entry lapses, not before.
	other := leaseKey("acme/production/shop", "hourly")
	if _, err := a.kv.Create(ctx, other, []byte("dead-node")); err != nil {
		t.Fatal(err)
	}
	died := time.Now()
	_, releaseA2, ok := a.hold(quit, nil, other)
	if !ok {
		t.Fatal("a did not take the lapsed lease")
	}
	defer releaseA2()
	took := time.Since(died)
	if took < ttl/2 {
		t.Fatalf("a took a dead node's lease %v after it died: before it lapsed", took)
	}
	t.Logf("lease of a dead holder taken over in %v (lapse %v)", took.Round(time.Millisecond), ttl)
	close(quit)
}
