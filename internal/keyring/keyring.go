// Package keyring owns Penstock's keys and every encryption of stored data: the master key
// (key-encryption key) from a file, the environment or a KMS; per-scope data keys (Tink AEAD
// keysets) wrapped by it; sealing records bound to their identity; rotation, re-encryption,
// crypto-shredding; and the embedded JetStream's store key. It is the only package that
// encrypts; it never logs, returns or stores key material in the clear.
package keyring

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/penstock/penstock/internal/engine"
)

// Errors a caller can act on. None carries key material or plaintext.
var (
	// ErrDestroyed means the scope's keys were destroyed: its data is gone for good.
	ErrDestroyed = errors.New("scope deleted: its keys were destroyed")
	// ErrDecrypt means the ciphertext does not authenticate: tampered, or moved to another
	// record, kind or scope.
	ErrDecrypt = errors.New("ciphertext does not authenticate for this record")
	// ErrMalformed means the bytes are not a Penstock ciphertext (truncated or garbage).
	ErrMalformed = errors.New("not a penstock ciphertext")
	// ErrUnknownKeyVersion means the ciphertext names a key version the scope does not have.
	ErrUnknownKeyVersion = errors.New("ciphertext names an unknown key version")
	// ErrNoKey means the scope has no data key yet, so nothing can have been sealed with it.
	ErrNoKey = errors.New("scope has no data key")
	// ErrConflict means concurrent changes kept a key operation from completing; retry it.
	ErrConflict = errors.New("changed concurrently; try again")
	// ErrInvalid marks errors about the caller's input: a scope, kind, id or name.
	ErrInvalid = errors.New("invalid input")
)

// Bucket holds wrapped data keys, tombstones of destroyed scopes and re-encryption jobs.
const Bucket = "penstock_keyring"

// Keyring seals and opens records with per-scope data keys.
type Keyring struct {
	masters *masters
	plat    *engine.Account
	kv      jetstream.KeyValue
	log     *slog.Logger

	mu     sync.Mutex
	cache  map[string]*dataKey // by scope key
	gen    uint64              // bumped whenever cached keys may be stale; a read that began before does not cache
	stores map[string]*Sealed  // registered sealed stores, by bucket
	// onDestroy runs after each Destroy (see OnDestroy).
	onDestroy []func(context.Context, Scope)
	// onMasterRotation runs before a rotated-out master key is retired (see OnMasterRotation).
	onMasterRotation []func(context.Context) error

	rotateMu sync.Mutex // one master rotation at a time

	jobs     sync.WaitGroup
	watching sync.WaitGroup // the watch of key changes, which lasts until Close
	jobCtx   context.Context
	stopJobs context.CancelFunc
	// afterRecord, when set by tests, runs after each record a job rewraps.
	afterRecord func(done int)
}

// Master is the loaded master key, before the engine opens: the engine's store key is sealed
// by it.
type Master struct {
	ms    *masters
	store *storeKeys
}

// Options configure New.
type Options struct {
	Master   *Master
	Platform *engine.Account
	Logger   *slog.Logger
	// Bucket names the keyring's bucket; empty means Bucket. Tests sharing one NATS server
	// use their own.
	Bucket string
}

// New opens the keyring on the platform account: its bucket, and any re-encryption or master
// rotation left unfinished by a previous process, which resume in the background.
func New(ctx context.Context, o Options) (*Keyring, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Bucket == "" {
		o.Bucket = Bucket
	}
	kv, err := o.Platform.ErasableKeyValue(ctx, o.Bucket, "data keys wrapped by the master key; tombstones; re-encryption jobs", 2)
	if err != nil {
		return nil, fmt.Errorf("keyring: %w", err)
	}
	jctx, cancel := context.WithCancel(context.Background())
	k := &Keyring{
		masters: o.Master.ms, plat: o.Platform, kv: kv, log: o.Logger,
		cache: map[string]*dataKey{}, stores: map[string]*Sealed{},
		jobCtx: jctx, stopJobs: cancel,
	}
	if err := k.finishDestroys(ctx); err != nil {
		cancel()
		return nil, err
	}
	if k.masters.previous != nil {
		k.rotateMu.Lock()
		err := k.finishMasterRotation(ctx, o.Master)
		k.rotateMu.Unlock()
		if err != nil {
			cancel()
			return nil, err
		}
	}
	if err := k.checkWrappers(ctx); err != nil {
		cancel()
		return nil, err
	}
	if err := k.watchScopes(ctx); err != nil {
		cancel()
		return nil, err
	}
	return k, nil
}

// watchScopes drops the cached data keys whenever any scope's record changes, here or on
// another node of a cluster (a rotation, a destruction, a release): the next use reads the
// record again. Key changes are rare; the cache refills at once.
func (k *Keyring) watchScopes(ctx context.Context) error {
	start := func() (jetstream.KeyWatcher, error) {
		return k.kv.Watch(k.jobCtx, "scope.>", jetstream.UpdatesOnly())
	}
	w, err := start()
	if err != nil {
		return fmt.Errorf("keyring: watch keys: %w", err)
	}
	k.watching.Add(1)
	go func() {
		defer k.watching.Done()
		for {
			for open := true; open; {
				select {
				case <-k.jobCtx.Done():
					_ = w.Stop()
					return
				case e, ok := <-w.Updates():
					open = ok
					if ok && e != nil {
						k.forget()
					}
				}
			}
			// The client library ended the watch: changes may have been missed meanwhile,
			// so nothing cached is trusted.
			k.log.Warn("keyring watch ended; dropping cached keys and watching again")
			k.forget()
			for {
				if w, err = start(); err == nil {
					break
				}
				select {
				case <-k.jobCtx.Done():
					return
				case <-time.After(time.Second):
				}
			}
			k.forget()
		}
	}()
	return nil
}

// Close stops background jobs (they resume at the next start) and waits for them.
func (k *Keyring) Close() {
	k.stopJobs()
	k.jobs.Wait()
	k.watching.Wait()
}

// invalidError is a message about the caller's input; errors.Is(err, ErrInvalid) holds.
type invalidError struct{ msg string }

func (e invalidError) Error() string        { return e.msg }
func (e invalidError) Is(target error) bool { return target == ErrInvalid }

func invalid(format string, args ...any) error { return invalidError{fmt.Sprintf(format, args...)} }
