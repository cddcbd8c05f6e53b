package engine

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// groupSync makes what the embedded engine has written durable for many writers at once.
//
// With it the engine runs without its fsync of every write: a stream's write reaches the
// operating system (the file store writes in place) before the engine acknowledges it, and a
// writer that needs it on disk calls Sync, which returns once a syncfs(2) of the data
// directory's filesystem that began after the call has finished. Concurrent callers share one
// syncfs: while one runs, the callers arriving gather for the next. A failed syncfs is final:
// the kernel may have dropped the pages it could not write, so no later sync can promise them,
// and every Sync from then on fails.
//
// What no writer waits for (a native client's acknowledgements, MQTT sessions, the engine's
// own state files) is made durable by the same loop: a sync begins within a second of any
// write (then takes as long as the disk needs). One syncfs a second covers every stream, where the engine's own timer would
// open and sync each stream's files: with thousands of streams that timer alone costs a core.
type groupSync struct {
	log    *slog.Logger
	every  time.Duration
	syncfs func() error
	close  func() error
	reqs   chan chan error
	stop   chan struct{}
	done   chan struct{}
	syncs  atomic.Uint64 // syncs that writers waited for
	// periodic counts the syncs of the loop's own period, none waited for.
	periodic atomic.Uint64
	failed   atomic.Pointer[error]
	once     sync.Once
}

func newGroupSync(dir string, log *slog.Logger) (*groupSync, error) {
	syncfs, closeFn, err := openSyncfs(dir)
	if err != nil {
		return nil, err
	}
	return startGroupSync(syncfs, closeFn, time.Second, log), nil
}

// startGroupSync starts the loop; every is the longest time without a sync.
func startGroupSync(syncfs, closeFn func() error, every time.Duration, log *slog.Logger) *groupSync {
	g := &groupSync{log: log, every: every, syncfs: syncfs, close: closeFn, reqs: make(chan chan error, 4096),
		stop: make(chan struct{}), done: make(chan struct{})}
	go g.loop()
	return g
}

func (g *groupSync) loop() {
	defer close(g.done)
	// Ticks at half the period: a tick syncs unless a sync began since the tick before, so a
	// write is covered by a sync that begins within one period of it.
	tick := time.NewTicker(g.every / 2)
	defer tick.Stop()
	var began, seen uint64 // syncs begun; and as of the last tick
	for {
		var group []chan error
		select {
		case r := <-g.reqs:
			group = append(group, r)
		case <-tick.C:
			if began == seen {
				began++
				if g.run() == nil {
					g.periodic.Add(1)
				}
			}
			seen = began
			continue
		case <-g.stop:
			return
		}
	gather:
		for {
			select {
			case r := <-g.reqs:
				group = append(group, r)
			default:
				break gather
			}
		}
		began++
		err := g.run()
		if err == nil {
			g.syncs.Add(1)
		}
		for _, r := range group {
			r <- err
		}
	}
}

// run syncs the filesystem, or returns the failure that ended syncing.
func (g *groupSync) run() error {
	if p := g.failed.Load(); p != nil {
		return *p
	}
	if err := g.syncfs(); err != nil {
		err = fmt.Errorf("make the data directory durable (syncfs): %w; acknowledged writes may be lost, "+
			"restart Penstock once the disk is sound", err)
		g.failed.Store(&err)
		g.log.Error("the engine's writes can no longer be made durable", "error", err)
		return err
	}
	return nil
}

// Sync returns once everything written before the call is on disk.
func (g *groupSync) Sync(ctx context.Context) error {
	ch := make(chan error, 1)
	select {
	case g.reqs <- ch:
	case <-g.done:
		return ErrClosed
	case <-ctx.Done():
		return fmt.Errorf("sync: %w", ctx.Err())
	}
	select {
	case err := <-ch:
		return err
	case <-g.done:
		select {
		case err := <-ch:
			return err
		default:
			return ErrClosed // taken after the last group: never synced
		}
	case <-ctx.Done():
		return fmt.Errorf("sync: %w", ctx.Err())
	}
}

// Close stops the loop after the group in progress; callers still waiting get ErrClosed.
func (g *groupSync) Close() {
	g.once.Do(func() {
		close(g.stop)
		<-g.done
		for {
			select {
			case r := <-g.reqs:
				r <- ErrClosed
			default:
				_ = g.close()
				return
			}
		}
	})
}
