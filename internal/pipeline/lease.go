package pipeline

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/penstock/penstock/internal/engine"
)

// LeaseBucket holds, in a cluster, which node runs each pipeline.
const LeaseBucket = "penstock_pipeline_leases"

// Lease timing: a lease lapses LeaseTTL after its holder last renewed it; the holder renews
// every LeaseTTL/3 and gives the pipeline up (its run drains) as soon as a renewal fails. A
// standby tries to take a lease every LeaseTTL/6.
const LeaseTTL = 15 * time.Second

// Leases decide which node of a cluster runs each pipeline: a key per pipeline in a bucket
// whose entries lapse after LeaseTTL, created by the node that takes it and renewed by it
// with compare-and-set on its revision, so exactly one node holds a lease at any moment the
// engine's majority decides.
type Leases struct {
	kv   jetstream.KeyValue
	node string
	ttl  time.Duration
	log  *slog.Logger
}

// OpenLeases opens the lease bucket in the platform account for node.
func OpenLeases(ctx context.Context, plat *engine.Account, node string, log *slog.Logger) (*Leases, error) {
	return openLeases(ctx, plat, node, LeaseTTL, log)
}

func openLeases(ctx context.Context, plat *engine.Account, node string, ttl time.Duration, log *slog.Logger) (*Leases, error) {
	kv, err := plat.KeyValue(ctx, jetstream.KeyValueConfig{Bucket: LeaseBucket, History: 1, TTL: ttl,
		Description: "which node runs each pipeline; entries lapse unless renewed"})
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Leases{kv: kv, node: node, ttl: ttl, log: log}, nil
}

// leaseKey names a pipeline's lease without its names (which the bucket would otherwise
// show in clear): a hash of the application and the pipeline.
func leaseKey(app, name string) string {
	h := sha256.Sum256([]byte(app + "/" + name))
	return hex.EncodeToString(h[:16])
}

// hold blocks until this node holds the lease of key or quit closes (ok false). It returns
// a channel closed once the lease is lost (a renewal failed) and release, which stops the
// renewals and gives the lease up.
func (l *Leases) hold(quit, closing <-chan struct{}, key string) (lost <-chan struct{}, release func(), ok bool) {
	var rev uint64
	for {
		var err error
		if rev, err = l.take(key); err == nil {
			break
		}
		select {
		case <-quit:
			return nil, nil, false
		case <-closing:
			return nil, nil, false
		case <-time.After(l.ttl / 6):
		}
	}
	lostCh, stop, done := make(chan struct{}), make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(l.ttl / 3)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				ctx, cancel := context.WithTimeout(context.Background(), l.ttl/3)
				r, err := l.kv.Update(ctx, key, []byte(l.node), rev)
				cancel()
				if err != nil {
					l.log.Warn("pipeline lease lost: its run stops", "lease", key, "error", err.Error())
					close(lostCh)
					<-stop
					return
				}
				rev = r
			}
		}
	}()
	release = func() {
		close(stop)
		<-done
		select {
		case <-lostCh:
			return // not ours any more: nothing to give up
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), l.ttl/3)
		defer cancel()
		_ = l.kv.Delete(ctx, key, jetstream.LastRevision(rev))
	}
	return lostCh, release, true
}

// Hold is hold for a platform task other than a pipeline (the backup schedule): it blocks
// until this node holds the task's lease or quit closes.
func (l *Leases) Hold(quit <-chan struct{}, task string) (lost <-chan struct{}, release func(), ok bool) {
	return l.hold(quit, nil, leaseKey("platform", task))
}

// take creates the lease, or adopts it if this node held it before a restart.
func (l *Leases) take(key string) (uint64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), l.ttl/3)
	defer cancel()
	rev, err := l.kv.Create(ctx, key, []byte(l.node))
	if err == nil {
		return rev, nil
	}
	if !errors.Is(err, jetstream.ErrKeyExists) {
		return 0, err
	}
	e, gerr := l.kv.Get(ctx, key)
	if gerr != nil {
		return 0, gerr
	}
	if string(e.Value()) != l.node {
		return 0, fmt.Errorf("held by %s", e.Value())
	}
	return l.kv.Update(ctx, key, []byte(l.node), e.Revision())
}

// Holder is the node that holds the pipeline's lease, "" when none does.
func (l *Leases) Holder(ctx context.Context, app, name string) string {
	e, err := l.kv.Get(ctx, leaseKey(app, name))
	if err != nil {
		return ""
	}
	return string(e.Value())
}
