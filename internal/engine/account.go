package engine

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Account is a connection into one NATS account with the helpers Penstock needs: KV buckets
// and streams created with the engine's storage and replication defaults.
type Account struct {
	name     string
	nc       *nats.Conn
	js       jetstream.JetStream
	replicas int
	sync     syncFunc // nil: the engine syncs every write itself, or does not promise to
	// clustered: reads go to a stream's leader (no direct gets), which has applied every write
	// it acknowledged.
	clustered bool

	// handedOut is when Account last returned this (unix ns); idleMu guards the traffic
	// counters IdleFor last saw and since when they have not moved.
	handedOut atomic.Int64
	holds     atomic.Int32 // HeldAccount users
	idleMu    sync.Mutex
	seen      uint64
	quietFrom time.Time
}

// IdleFor tells how long the account's connection has carried no message either way and has
// not been handed out by Engine.Account, as seen by successive calls: the first call, and any
// after traffic, starts the count at zero. Advisories, subscriptions' messages and requests
// all count as traffic.
func (a *Account) IdleFor() time.Duration {
	st := a.nc.Stats()
	moved := st.InMsgs + st.OutMsgs
	now := time.Now()
	a.idleMu.Lock()
	defer a.idleMu.Unlock()
	if moved != a.seen || a.quietFrom.IsZero() {
		a.seen, a.quietFrom = moved, now
	}
	if h := time.Unix(0, a.handedOut.Load()); h.After(a.quietFrom) {
		return now.Sub(h)
	}
	return now.Sub(a.quietFrom)
}

// Quiet starts IdleFor's count again from the traffic the account carried so far: the traffic
// of a check made for the idle close itself (asking the engine whether anything is in flight)
// is not use.
func (a *Account) Quiet() {
	st := a.nc.Stats()
	a.idleMu.Lock()
	a.seen = st.InMsgs + st.OutMsgs
	a.idleMu.Unlock()
}

// Sync returns once every write made before the call is on disk. With the engine's own
// fsync per write (or an external engine) there is nothing left to do. Writes through
// JetStream() are synced already; Sync is for writes made on the core connection.
func (a *Account) Sync(ctx context.Context) error {
	if a.sync == nil {
		return nil
	}
	return a.sync(ctx)
}

// GroupSync tells whether this account's writes are made durable by Sync (true) or by the
// engine itself.
func (a *Account) GroupSync() bool { return a.sync != nil }

// Name is the Penstock account name.
func (a *Account) Name() string { return a.name }

// JetStream is the account's JetStream context, for operations the helpers do not cover.
func (a *Account) JetStream() jetstream.JetStream { return a.js }

// Conn is the account's core NATS connection.
func (a *Account) Conn() *nats.Conn { return a.nc }

// KeyValue creates the bucket or updates it to cfg, on file storage with the engine's
// replication unless cfg says otherwise.
func (a *Account) KeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	if cfg.Replicas == 0 {
		cfg.Replicas = a.replicas
	}
	kv, err := a.js.CreateOrUpdateKeyValue(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("key-value bucket %q: %w", cfg.Bucket, err)
	}
	return kv, nil
}

// Stream creates the stream or updates it to cfg, on file storage with the engine's
// replication unless cfg says otherwise.
func (a *Account) Stream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	if cfg.Replicas == 0 {
		cfg.Replicas = a.replicas
	}
	s, err := a.js.CreateOrUpdateStream(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("stream %q: %w", cfg.Name, err)
	}
	return s, nil
}

// ErasableKeyValue is a KV bucket whose messages may be erased (overwritten on disk) with
// SecureDeleteMsg: the stream has the layout KV buckets use but without deny_delete, which a
// plain KV bucket sets and can never drop. Keys that must be shreddable live in one. With
// history 2 the value a write replaces stays until its writer erases it: a value pushed out by
// the history limit is removed without being overwritten.
func (a *Account) ErasableKeyValue(ctx context.Context, bucket, description string, history int64) (jetstream.KeyValue, error) {
	// In a cluster, reads go to the stream's leader, except in a bucket made before (see
	// keptDirect).
	direct := !a.clustered || keptDirect(ctx, a.js, "KV_"+bucket)
	_, err := a.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:              "KV_" + bucket,
		Description:       description,
		Subjects:          []string{"$KV." + bucket + ".>"},
		MaxMsgsPerSubject: history,
		MaxBytes:          -1,
		MaxMsgSize:        -1,
		MaxMsgs:           -1,
		MaxConsumers:      -1,
		Storage:           jetstream.FileStorage,
		Replicas:          a.replicas,
		AllowRollup:       true,
		AllowDirect:       direct,
		Duplicates:        2 * time.Minute,
		Discard:           jetstream.DiscardNew,
	})
	if err != nil {
		return nil, fmt.Errorf("key-value bucket %q: %w", bucket, err)
	}
	open := a.js.KeyValue
	if a.clustered {
		open = func(ctx context.Context, bucket string) (jetstream.KeyValue, error) {
			return definedKeyValue(ctx, a.js, bucket)
		}
	}
	kv, err := open(ctx, bucket)
	if err != nil {
		return nil, fmt.Errorf("key-value bucket %q: %w", bucket, err)
	}
	return kv, nil
}
