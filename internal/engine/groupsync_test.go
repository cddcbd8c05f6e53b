package engine

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/datadir"
)

// A caller's Sync returns only after a syncfs that began after the call; callers that arrive
// while one runs share the next.
func TestGroupSyncCoversWhatCameBefore(t *testing.T) {
	var began atomic.Int64 // syncfs calls begun
	release := make(chan struct{})
	inSync := make(chan struct{}, 100)
	g := startGroupSync(func() error {
		began.Add(1)
		inSync <- struct{}{}
		<-release
		return nil
	}, func() error { return nil }, time.Hour, slog.New(slog.DiscardHandler))
	defer g.Close()

	first := make(chan error, 1)
	go func() { first <- g.Sync(context.Background()) }()
	<-inSync // the first syncfs is running

	// Ten callers arrive while it runs: none may return with it.
	const late = 10
	var wg sync.WaitGroup
	var returned atomic.Int64
	for range late {
		wg.Go(func() {
			if err := g.Sync(context.Background()); err != nil {
				t.Error(err)
			}
			returned.Add(1)
		})
	}
	waitUntil(t, "the late callers to queue", func() bool { return len(g.reqs) == late })
	release <- struct{}{}
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	<-inSync // the second syncfs began: the late callers gathered for it
	if n := returned.Load(); n != 0 {
		t.Fatalf("%d callers returned on a syncfs that began before they called", n)
	}
	release <- struct{}{}
	wg.Wait()
	if n := began.Load(); n != 2 {
		t.Fatalf("%d syncfs calls for 11 callers in two groups, want 2", n)
	}
	if n := g.syncs.Load(); n != 2 {
		t.Fatalf("syncs counted %d, want 2", n)
	}
}

// A failed syncfs is final: the pages it could not write may be gone, so no later Sync
// succeeds, even when the next syncfs would.
func TestGroupSyncFailureIsFinal(t *testing.T) {
	var calls atomic.Int64
	g := startGroupSync(func() error {
		if calls.Add(1) == 2 {
			return errors.New("input/output error")
		}
		return nil
	}, func() error { return nil }, time.Hour, slog.New(slog.DiscardHandler))
	defer g.Close()
	if err := g.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		err := g.Sync(context.Background())
		if err == nil || !strings.Contains(err.Error(), "input/output error") {
			t.Fatalf("sync %d after the failure: %v", i, err)
		}
	}
	if n := calls.Load(); n != 2 {
		t.Fatalf("syncfs called %d times; after a failure it must not be trusted again", n)
	}
	g.Close()
	if err := g.Sync(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("sync after close: %v", err)
	}
}

func waitUntil(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// Once the disk failed a sync, the engine is not ready and every synced write fails: nothing
// written after it can be promised.
func TestFailedSyncMakesTheEngineUnready(t *testing.T) {
	key, err := datadir.LoadOrCreateKey(filepath.Join(t.TempDir(), "store.key"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e, err := Open(ctx, Options{DataDir: t.TempDir(), Config: config.Default().Engine, StoreKey: key})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if !e.GroupSync() {
		t.Skip("group sync needs Linux")
	}
	if err := e.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	g := e.embedded.gsync
	g.syncfs = func() error { return errors.New("input/output error") } // the next syncfs fails
	if err := e.Ready(ctx); err == nil || !strings.Contains(err.Error(), "not made durable") {
		t.Fatalf("ready after a failed sync: %v", err)
	}
	acc, err := e.Account(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := acc.KeyValue(ctx, jetstream.KeyValueConfig{Bucket: "b"}); err == nil {
		t.Fatal("a bucket was created as if durable after the disk failed")
	}
	if err := acc.Sync(ctx); err == nil {
		t.Fatal("sync succeeded after the disk failed")
	}
}

// With no writer waiting, a sync still runs every period (what nobody waits for, such as a
// native client's acks, is on disk within it); a period in which writers synced adds none.
func TestGroupSyncRunsEveryPeriodAlone(t *testing.T) {
	var calls atomic.Int64
	g := startGroupSync(func() error { calls.Add(1); return nil }, func() error { return nil }, 20*time.Millisecond, slog.New(slog.DiscardHandler))
	defer g.Close()
	waitUntil(t, "three periodic syncs", func() bool { return calls.Load() >= 3 })
	if n, w := g.periodic.Load(), g.syncs.Load(); n < 3 || w != 0 {
		t.Fatalf("periodic syncs counted %d, writers' %d", n, w)
	}
}
