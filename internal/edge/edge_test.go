package edge

import (
	"fmt"
	"testing"
	"time"
)

// A scan from many addresses does not grow the table without bound: idle entries whose
// bucket has refilled are swept, entries with open connections are kept.
func TestIPTableSweepsIdleEntries(t *testing.T) {
	tb := newIPTable(10, 10)
	for i := range 1000 {
		if !tb.allow(fmt.Sprintf("10.0.%d.%d", i/256, i%256)) {
			t.Fatal("first request from a new address refused")
		}
	}
	tb.mu.Lock()
	tb.entries["10.0.0.1"].open = 1
	past := time.Now().Add(-2 * tb.idle)
	for _, e := range tb.entries {
		e.lastSeen = past
	}
	tb.lastSweep = past
	tb.mu.Unlock()

	tb.allow("192.0.2.1")
	tb.mu.Lock()
	defer tb.mu.Unlock()
	if len(tb.entries) != 2 {
		t.Fatalf("%d entries after the sweep, want 2 (the busy one and the new one)", len(tb.entries))
	}
	if _, ok := tb.entries["10.0.0.1"]; !ok {
		t.Fatal("entry with an open connection swept")
	}
}

func TestIPTableRateAndBurst(t *testing.T) {
	tb := newIPTable(1, 3)
	allowed := 0
	for range 10 {
		if tb.allow("198.51.100.7") {
			allowed++
		}
	}
	if allowed != 3 {
		t.Fatalf("%d of 10 immediate requests allowed, want the burst of 3", allowed)
	}
	if !tb.allow("198.51.100.8") {
		t.Fatal("another address shares the bucket")
	}
}
