package keyring

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/tink-crypto/tink-go/v2/aead"
	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/tink"

	"github.com/penstock/penstock/internal/crashpoint"
	"github.com/penstock/penstock/internal/engine"
)

// scopeRecord is a scope's entry in the keyring bucket: its Tink keyset wrapped by a master
// key, or, once destroyed, a tombstone with no key at all.
type scopeRecord struct {
	KEK       string    `json:"kek,omitempty"`
	Keyset    []byte    `json:"keyset,omitempty"`
	Created   time.Time `json:"created"`
	Rotated   time.Time `json:"rotated,omitzero"`
	Destroyed time.Time `json:"destroyed,omitzero"`
	// Versions and Primary are plain metadata for status, so it needs no unwrapping.
	Versions int `json:"versions,omitempty"`
	Primary  int `json:"primary,omitempty"`
}

// dataKey is a scope's unwrapped keyset, cached in memory.
type dataKey struct {
	rec      scopeRecord
	revision uint64
	handle   *keyset.Handle
	aead     tink.AEAD
	versions map[uint32]int // Tink key ID -> version number, 1 for the first key
	primary  uint32
}

func recordKey(s Scope) string { return "scope." + s.key() }

func keysetAD(s Scope) []byte { return []byte("penstock/keyset/" + s.key()) }

// dataKeyFor returns the scope's data key, creating it if create is set and the scope has none.
// A destroyed scope, or one under a destroyed scope, yields ErrDestroyed.
func (k *Keyring) dataKeyFor(ctx context.Context, s Scope, create bool) (*dataKey, error) {
	k.mu.Lock()
	dk, ok := k.cache[s.key()]
	gen := k.gen
	k.mu.Unlock()
	if ok {
		return dk, nil
	}
	for {
		entry, err := k.kv.Get(ctx, recordKey(s))
		switch {
		case err == nil:
			if err := k.checkAncestors(ctx, s); err != nil {
				return nil, err
			}
			dk, err := k.unwrap(ctx, s, entry)
			if err != nil {
				return nil, err
			}
			k.mu.Lock()
			if k.gen == gen { // nothing was destroyed or rotated since this read began
				k.cache[s.key()] = dk
			}
			k.mu.Unlock()
			return dk, nil
		case !errors.Is(err, jetstream.ErrKeyNotFound):
			return nil, fmt.Errorf("keyring: read %s: %w", s, err)
		}
		if err := k.checkAncestors(ctx, s); err != nil {
			return nil, err
		}
		if !create {
			return nil, ErrNoKey
		}
		h, err := keyset.NewHandle(aead.AES256GCMKeyTemplate())
		if err != nil {
			return nil, fmt.Errorf("keyring: new data key: %w", err)
		}
		rec := scopeRecord{Created: time.Now().UTC()}
		if _, err := k.writeKeyset(ctx, s, h, &rec, 0); err != nil && !errors.Is(err, ErrConflict) {
			return nil, err
		}
		// Created, or another writer won the race: read back whichever key is stored.
	}
}

func (k *Keyring) checkAncestors(ctx context.Context, s Scope) error {
	for _, a := range s.ancestors() {
		entry, err := k.kv.Get(ctx, recordKey(a))
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("keyring: read %s: %w", a, err)
		}
		var rec scopeRecord
		if json.Unmarshal(entry.Value(), &rec) == nil && !rec.Destroyed.IsZero() {
			return ErrDestroyed
		}
	}
	return nil
}

// writeKeyset wraps h under the current master key and stores it: created if rev is 0, else
// updated from rev (ErrConflict if the record changed). The master key cannot change between
// the wrap and the write, so a master rotation never misses a record. The replaced value is
// then erased from storage.
func (k *Keyring) writeKeyset(ctx context.Context, s Scope, h *keyset.Handle, rec *scopeRecord, rev uint64) (uint64, error) {
	info := h.KeysetInfo()
	rec.Versions = len(info.GetKeyInfo())
	for i, ki := range info.GetKeyInfo() {
		if ki.GetKeyId() == info.GetPrimaryKeyId() {
			rec.Primary = i + 1
		}
	}
	k.masters.mu.RLock()
	cur := k.masters.current
	var buf bytes.Buffer
	if err := h.WriteWithContext(ctx, keyset.NewBinaryWriter(&buf), cur, keysetAD(s)); err != nil {
		k.masters.mu.RUnlock()
		return 0, fmt.Errorf("keyring: wrap data key for %s: %w", s, err)
	}
	rec.KEK, rec.Keyset = cur.id, buf.Bytes()
	b, err := json.Marshal(rec)
	if err != nil {
		k.masters.mu.RUnlock()
		return 0, err
	}
	var newRev uint64
	if rev == 0 {
		newRev, err = k.kv.Create(ctx, recordKey(s), b)
	} else {
		newRev, err = k.kv.Update(ctx, recordKey(s), b, rev)
	}
	k.masters.mu.RUnlock()
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) || isWrongSequence(err) {
			return 0, ErrConflict
		}
		return 0, fmt.Errorf("keyring: store data key for %s: %w", s, err)
	}
	k.forget()
	return newRev, k.eraseOld(ctx, recordKey(s), newRev)
}

func isWrongSequence(err error) bool { return engine.WrongLastSequence(err) }

// eraseOld overwrites in storage every revision of key but keep.
func (k *Keyring) eraseOld(ctx context.Context, key string, keep uint64) error {
	hist, err := k.kv.History(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("keyring: history of %s: %w", key, err)
	}
	stream, err := k.stream(ctx)
	if err != nil {
		return err
	}
	for _, e := range hist {
		if e.Revision() == keep {
			continue
		}
		if err := stream.SecureDeleteMsg(ctx, e.Revision()); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			return fmt.Errorf("keyring: erase %s revision %d: %w", key, e.Revision(), err)
		}
	}
	return nil
}

func (k *Keyring) unwrap(ctx context.Context, s Scope, entry jetstream.KeyValueEntry) (*dataKey, error) {
	var rec scopeRecord
	if err := json.Unmarshal(entry.Value(), &rec); err != nil {
		return nil, fmt.Errorf("keyring: record of %s: %w", s, err)
	}
	if !rec.Destroyed.IsZero() {
		return nil, ErrDestroyed
	}
	m, ok := k.masters.byID(rec.KEK)
	if !ok {
		return nil, fmt.Errorf("keyring: the data key of %s is wrapped by master key %s, which is not configured", s, rec.KEK)
	}
	h, err := keyset.ReadWithContext(ctx, keyset.NewBinaryReader(bytes.NewReader(rec.Keyset)), m, keysetAD(s))
	if err != nil {
		return nil, fmt.Errorf("keyring: unwrap data key of %s: %w", s, err)
	}
	a, err := aead.New(h)
	if err != nil {
		return nil, fmt.Errorf("keyring: data key of %s: %w", s, err)
	}
	info := h.KeysetInfo()
	dk := &dataKey{rec: rec, revision: entry.Revision(), handle: h, aead: a, primary: info.GetPrimaryKeyId(), versions: map[uint32]int{}}
	for i, ki := range info.GetKeyInfo() {
		dk.versions[ki.GetKeyId()] = i + 1
	}
	return dk, nil
}

// Rotate gives the scope a new primary data key and starts re-encrypting its records in the
// background. Records sealed with older versions stay readable throughout.
func (k *Keyring) Rotate(ctx context.Context, s Scope) (version int, err error) {
	if err := s.Validate(); err != nil {
		return 0, err
	}
	for attempt := 0; attempt < 5; attempt++ {
		dk, err := k.dataKeyFor(ctx, s, true)
		if err != nil {
			return 0, err
		}
		m := keyset.NewManagerFromHandle(dk.handle)
		id, err := m.Add(aead.AES256GCMKeyTemplate())
		if err != nil {
			return 0, fmt.Errorf("keyring: rotate %s: %w", s, err)
		}
		if err := m.SetPrimary(id); err != nil {
			return 0, fmt.Errorf("keyring: rotate %s: %w", s, err)
		}
		h, err := m.Handle()
		if err != nil {
			return 0, fmt.Errorf("keyring: rotate %s: %w", s, err)
		}
		rec := dk.rec
		rec.Rotated = time.Now().UTC()
		version := len(h.KeysetInfo().GetKeyInfo())
		// The job is recorded before the new key: a kill between the two leaves a job that
		// finds its version missing and says so, never a new key whose records nobody
		// re-encrypts.
		if err := k.recordJob(ctx, s, version); err != nil {
			return 0, err
		}
		crashpoint.Hit("rotate/job-recorded")
		if _, err := k.writeKeyset(ctx, s, h, &rec, dk.revision); errors.Is(err, ErrConflict) {
			k.forget()
			continue // changed under us (another rotation): start again from what is stored
		} else if err != nil {
			return 0, err
		}
		crashpoint.Hit("rotate/keyset-written")
		k.goJob(s)
		return version, nil
	}
	return 0, fmt.Errorf("keyring: rotate %s: %w", s, ErrConflict)
}

// forget drops every cached data key, and makes reads already under way not cache theirs.
func (k *Keyring) forget() {
	k.mu.Lock()
	clear(k.cache)
	k.gen++
	k.mu.Unlock()
}

// Destroy crypto-shreds the scope and every scope under it. In this order, so that a crash at
// any point leaves nothing usable and the next start (or another Destroy) finishes the job:
// the scope gets a tombstone, which also bars new keys below it; then every scope under it
// (listed after the tombstone, so none created meanwhile escapes) gets one; then every wrapped
// keyset of those scopes is overwritten in storage, not just marked deleted. From then on each
// record sealed with them, wherever a copy lives, fails with ErrDestroyed.
func (k *Keyring) Destroy(ctx context.Context, s Scope) error {
	if err := s.Validate(); err != nil {
		return err
	}
	if _, err := k.tombstone(ctx, recordKey(s)); err != nil {
		return err
	}
	k.forget()
	n, err := k.shredBelow(ctx, s)
	if err != nil {
		return err
	}
	k.log.Info("scope keys destroyed", "scope", s.String(), "scopes", n)
	k.mu.Lock()
	hooks := slices.Clone(k.onDestroy)
	k.mu.Unlock()
	for _, f := range hooks {
		f(ctx, s)
	}
	return nil
}

// shredBelow tombstones every scope under the destroyed scope s and erases the wrapped
// keysets of s and of all of them.
func (k *Keyring) shredBelow(ctx context.Context, s Scope) (int, error) {
	keys, err := k.scopeKeys(ctx)
	if err != nil {
		return 0, err
	}
	prefix := recordKey(s)
	n := 0
	for _, key := range keys {
		if key != prefix && !strings.HasPrefix(key, prefix+".") {
			continue
		}
		rev, err := k.tombstone(ctx, key)
		if err != nil {
			return n, err
		}
		if err := k.eraseOld(ctx, key, rev); err != nil {
			return n, err
		}
		n++
	}
	k.forget()
	return n, nil
}

// tombstone replaces a scope record with a tombstone (keeping its times) unless it is one
// already, and returns the tombstone's revision.
func (k *Keyring) tombstone(ctx context.Context, key string) (uint64, error) {
	var rec scopeRecord
	e, err := k.kv.Get(ctx, key)
	switch {
	case err == nil:
		if json.Unmarshal(e.Value(), &rec) == nil && !rec.Destroyed.IsZero() {
			return e.Revision(), nil
		}
	case !errors.Is(err, jetstream.ErrKeyNotFound):
		return 0, fmt.Errorf("keyring: destroy %s: %w", key, err)
	}
	now := time.Now().UTC()
	if rec.Created.IsZero() {
		rec.Created = now
	}
	tomb, _ := json.Marshal(scopeRecord{Created: rec.Created, Rotated: rec.Rotated, Destroyed: now})
	rev, err := k.kv.Put(ctx, key, tomb)
	if err != nil {
		return 0, fmt.Errorf("keyring: destroy %s: %w", key, err)
	}
	return rev, nil
}

// finishDestroys completes destructions a crash interrupted: every scope under a tombstone is
// tombstoned and every wrapped keyset left behind a tombstone is erased.
func (k *Keyring) finishDestroys(ctx context.Context) error {
	keys, err := k.scopeKeys(ctx)
	if err != nil {
		return err
	}
	for _, key := range keys {
		e, err := k.kv.Get(ctx, key)
		if err != nil {
			continue
		}
		var rec scopeRecord
		if json.Unmarshal(e.Value(), &rec) != nil || rec.Destroyed.IsZero() {
			continue
		}
		s, err := scopeFromKey(key[len("scope."):])
		if err != nil {
			continue
		}
		if _, err := k.shredBelow(ctx, s); err != nil {
			return err
		}
	}
	return nil
}

func (k *Keyring) stream(ctx context.Context) (jetstream.Stream, error) {
	st, err := k.kv.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("keyring: %w", err)
	}
	info := st.(*jetstream.KeyValueBucketStatus).StreamInfo()
	return k.plat.JetStream().Stream(ctx, info.Config.Name)
}

// scopeKeys lists the keys of every scope record.
func (k *Keyring) scopeKeys(ctx context.Context) ([]string, error) {
	lister, err := k.kv.ListKeysFiltered(ctx, "scope.>")
	if err != nil {
		return nil, fmt.Errorf("keyring: list scopes: %w", err)
	}
	var out []string
	for key := range lister.Keys() {
		out = append(out, key)
	}
	return out, nil
}
