package keyring

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/penstock/penstock/internal/engine"
	"github.com/penstock/penstock/internal/names"
)

// Sealed is a KV bucket of records sealed with their scope's data key: the building block of
// every store that keeps customer data or credentials. Re-encryption jobs walk every Sealed
// store the keyring has opened.
type Sealed struct {
	k    *Keyring
	kv   jetstream.KeyValue
	kind string
}

// Entry describes a sealed record without its value.
type Entry struct {
	ID string
	// Revision is the bucket's revision of the record: it changes with every write to the
	// bucket, re-encryption included, and is what Update compares.
	Revision   uint64
	Updated    time.Time
	KeyVersion int
}

var idPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,128}$`)

// ErrNotFound means no record has that id in that scope.
var ErrNotFound = errors.New("record not found")

// Sealed opens (creating if needed) a bucket in the platform account whose records are of
// kind, and registers it for re-encryption.
func (k *Keyring) Sealed(ctx context.Context, bucketName, kind string) (*Sealed, error) {
	if !names.Valid(kind, "_.-") {
		return nil, invalid("kind %q: must be 1-63 of a-z, 0-9, _, . and -", kind)
	}
	kv, err := k.plat.KeyValue(ctx, jetstream.KeyValueConfig{Bucket: bucketName, History: 1,
		Description: kind + " records, sealed with their scope's data key"})
	if err != nil {
		return nil, err
	}
	s := &Sealed{k: k, kv: kv, kind: kind}
	k.mu.Lock()
	defer k.mu.Unlock()
	// The kind is part of every record's associated data, the bucket is not: one bucket per
	// kind keeps a record from being opened out of another store.
	for name, other := range k.stores {
		if other.kind == kind && name != bucketName {
			return nil, fmt.Errorf("kind %q is already stored in bucket %s", kind, name)
		}
	}
	k.stores[bucketName] = s
	return s, nil
}

func checkID(id string) error {
	if !idPattern.MatchString(id) {
		return invalid("name %q: must be 1-128 of A-Z, a-z, 0-9, _ and -", id)
	}
	return nil
}

func sealedKey(sc Scope, id string) string { return sc.key() + "." + id }

// Put seals value and stores it, returning the record's new revision.
func (s *Sealed) Put(ctx context.Context, sc Scope, id string, value []byte) (uint64, error) {
	if err := checkID(id); err != nil {
		return 0, err
	}
	ct, err := s.k.Seal(ctx, sc, s.kind, id, value)
	if err != nil {
		return 0, err
	}
	return s.kv.Put(ctx, sealedKey(sc, id), ct)
}

// Update seals value and stores it only if the record is still at revision rev or, with rev
// 0, only if there is no record; it returns what it stored. ErrConflict means another write
// came first: read the record again and decide anew.
func (s *Sealed) Update(ctx context.Context, sc Scope, id string, value []byte, rev uint64) (Entry, error) {
	if err := checkID(id); err != nil {
		return Entry{}, err
	}
	ct, err := s.k.Seal(ctx, sc, s.kind, id, value)
	if err != nil {
		return Entry{}, err
	}
	key := sealedKey(sc, id)
	var newRev uint64
	if rev == 0 {
		newRev, err = s.kv.Create(ctx, key, ct)
	} else {
		newRev, err = s.kv.Update(ctx, key, ct, rev)
	}
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return Entry{}, ErrConflict
	}
	if err != nil {
		return Entry{}, fmt.Errorf("write %s: %w", s.kind, err)
	}
	// The stored entry carries the engine's time; a later write may already have replaced it,
	// and then the time of this one is as good as the engine's.
	if e, err := s.kv.Get(ctx, key); err == nil && e.Revision() == newRev {
		return s.entry(ctx, sc, e), nil
	}
	return s.entryOf(ctx, sc, key, newRev, time.Now(), ct), nil
}

// Get opens a record. A record that is there but does not open comes with its entry and the
// error.
func (s *Sealed) Get(ctx context.Context, sc Scope, id string) ([]byte, Entry, error) {
	if err := checkID(id); err != nil {
		return nil, Entry{}, err
	}
	if err := sc.Validate(); err != nil {
		return nil, Entry{}, err
	}
	e, err := s.kv.Get(ctx, sealedKey(sc, id))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		if err := s.k.checkDestroyed(ctx, sc); err != nil {
			return nil, Entry{}, err
		}
		return nil, Entry{}, ErrNotFound
	}
	if err != nil {
		return nil, Entry{}, fmt.Errorf("read %s: %w", s.kind, err)
	}
	pt, err := s.k.Unseal(ctx, sc, s.kind, id, e.Value())
	if err != nil {
		return nil, s.entry(ctx, sc, e), err // what is there, for a caller that replaces it
	}
	return pt, s.entry(ctx, sc, e), nil
}

// Delete removes a record and its history.
func (s *Sealed) Delete(ctx context.Context, sc Scope, id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	if err := sc.Validate(); err != nil {
		return err
	}
	if err := s.k.checkDestroyed(ctx, sc); err != nil {
		return err
	}
	if _, err := s.kv.Get(ctx, sealedKey(sc, id)); errors.Is(err, jetstream.ErrKeyNotFound) {
		return ErrNotFound
	}
	return s.kv.Purge(ctx, sealedKey(sc, id))
}

// DeleteAt removes a record only if it is still at revision rev: ErrConflict if another
// write came first, ErrNotFound if it is gone.
func (s *Sealed) DeleteAt(ctx context.Context, sc Scope, id string, rev uint64) error {
	if err := checkID(id); err != nil {
		return err
	}
	if err := sc.Validate(); err != nil {
		return err
	}
	err := s.kv.Delete(ctx, sealedKey(sc, id), jetstream.LastRevision(rev))
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return ErrNotFound
	case errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) || engine.WrongLastSequence(err):
		return ErrConflict
	}
	return err
}

// Tenants lists the tenants that have records at the tenant scope itself (not under an
// environment or an application), with one listing of the bucket's keys.
func (s *Sealed) Tenants(ctx context.Context) (map[string]bool, error) {
	lister, err := s.kv.ListKeys(ctx)
	if err != nil {
		if errors.Is(err, jetstream.ErrNoKeysFound) {
			return map[string]bool{}, nil
		}
		return nil, fmt.Errorf("list %s: %w", s.kind, err)
	}
	out := map[string]bool{}
	for key := range lister.Keys() {
		if parts := strings.Split(key, "."); len(parts) == 2 {
			out[parts[0]] = true
		}
	}
	return out, nil
}

// List describes the scope's records, sorted by id. A destroyed scope yields ErrDestroyed.
func (s *Sealed) List(ctx context.Context, sc Scope) ([]Entry, error) {
	if err := sc.Validate(); err != nil {
		return nil, err
	}
	if err := s.k.checkDestroyed(ctx, sc); err != nil {
		return nil, err
	}
	keys, err := s.keys(ctx, sc)
	if err != nil {
		return nil, err
	}
	out := make([]Entry, 0, len(keys))
	for _, key := range keys {
		e, err := s.kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, s.entry(ctx, sc, e))
	}
	return out, nil
}

// keys lists the bucket keys of the scope's own records (not those of scopes under it), sorted.
func (s *Sealed) keys(ctx context.Context, sc Scope) ([]string, error) {
	lister, err := s.kv.ListKeysFiltered(ctx, sc.key()+".*")
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", s.kind, err)
	}
	var keys []string
	for key := range lister.Keys() {
		keys = append(keys, key)
	}
	sort.Strings(keys)
	return keys, nil
}

func (s *Sealed) entry(ctx context.Context, sc Scope, e jetstream.KeyValueEntry) Entry {
	return s.entryOf(ctx, sc, e.Key(), e.Revision(), e.Created(), e.Value())
}

func (s *Sealed) entryOf(ctx context.Context, sc Scope, key string, rev uint64, updated time.Time, ct []byte) Entry {
	out := Entry{ID: key[strings.LastIndexByte(key, '.')+1:], Revision: rev, Updated: updated}
	if id, err := KeyID(ct); err == nil {
		if dk, err := s.k.dataKeyFor(ctx, sc, false); err == nil {
			out.KeyVersion = dk.versions[id]
		}
	}
	return out
}

// checkDestroyed returns ErrDestroyed if the scope or one above it was destroyed.
func (k *Keyring) checkDestroyed(ctx context.Context, sc Scope) error {
	_, err := k.dataKeyFor(ctx, sc, false)
	if errors.Is(err, ErrDestroyed) {
		return err
	}
	return nil
}

// IsDestroyed reports whether the scope, or one above it, was crypto-shredded: such a scope's
// name cannot be used again.
func (k *Keyring) IsDestroyed(ctx context.Context, sc Scope) (bool, error) {
	_, err := k.dataKeyFor(ctx, sc, false)
	switch {
	case errors.Is(err, ErrDestroyed):
		return true, nil
	case err == nil, errors.Is(err, ErrNoKey):
		return false, nil
	}
	return false, err
}

// Watch calls fn for every change to the store's records from now on, here or on another
// node of a cluster, with the record's scope and id (deleted for a deletion), until ctx ends.
// Each time the watch (re)starts, fn is also called for every record that exists then, so a
// change made just before, or while the watch was down, is not missed: fn must be idempotent.
// A watch the client library ends is logged and started again.
func (s *Sealed) Watch(ctx context.Context, log *slog.Logger, fn func(sc Scope, id string, deleted bool)) error {
	deliver := func(key string, deleted bool) {
		i := strings.LastIndexByte(key, '.')
		if i < 0 {
			return
		}
		sc, err := scopeFromKey(key[:i])
		if err != nil {
			return
		}
		fn(sc, key[i+1:], deleted)
	}
	start := func() (jetstream.KeyWatcher, error) {
		w, err := s.kv.WatchAll(ctx, jetstream.UpdatesOnly())
		if err != nil {
			return nil, fmt.Errorf("watch %s: %w", s.kind, err)
		}
		return w, nil
	}
	resync := func() {
		lister, err := s.kv.ListKeys(ctx)
		if err != nil {
			if !errors.Is(err, jetstream.ErrNoKeysFound) && ctx.Err() == nil {
				log.Warn("records not listed after the watch started", "kind", s.kind, "error", err.Error())
			}
			return
		}
		for k := range lister.Keys() {
			deliver(k, false)
		}
	}
	w, err := start()
	if err != nil {
		return err
	}
	go func() {
		resync()
		for {
			for open := true; open; {
				select {
				case <-ctx.Done():
					_ = w.Stop()
					return
				case e, ok := <-w.Updates():
					open = ok
					if ok && e != nil {
						deliver(e.Key(), e.Operation() != jetstream.KeyValuePut)
					}
				}
			}
			log.Warn("watch of records ended; starting it again", "kind", s.kind)
			for {
				if w, err = start(); err == nil {
					break
				}
				select {
				case <-ctx.Done():
					return
				case <-time.After(time.Second):
				}
			}
			resync()
		}
	}()
	return nil
}
