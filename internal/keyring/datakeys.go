package keyring

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/tink-crypto/tink-go/v2/aead"
	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/tink"
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
	k.mu.Unlock()
	if ok {
		return dk, nil
	}
	for {
		entry, err := k.kv.Get(ctx, recordKey(s))
		switch {
		case err == nil:
			dk, err := k.unwrap(ctx, s, entry)
			if err != nil {
				return nil, err
			}
			k.mu.Lock()
			k.cache[s.key()] = dk
			k.mu.Unlock()
			return dk, nil
		case !errors.Is(err, jetstream.ErrKeyNotFound):
			return nil, fmt.Errorf("keyring: read %s: %w", s, err)
		case !create:
			if err := k.checkAncestors(ctx, s); err != nil {
				return nil, err
			}
			return nil, ErrNoKey
		}
		if err := k.checkAncestors(ctx, s); err != nil {
			return nil, err
		}
		h, err := keyset.NewHandle(aead.AES256GCMKeyTemplate())
		if err != nil {
			return nil, fmt.Errorf("keyring: new data key: %w", err)
		}
		rec := scopeRecord{Created: time.Now().UTC()}
		b, err := k.wrap(ctx, s, h, &rec)
		if err != nil {
			return nil, err
		}
		if _, err := k.kv.Create(ctx, recordKey(s), b); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
			return nil, fmt.Errorf("keyring: store data key for %s: %w", s, err)
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

func (k *Keyring) wrap(ctx context.Context, s Scope, h *keyset.Handle, rec *scopeRecord) ([]byte, error) {
	var buf bytes.Buffer
	cur := k.masters.cur()
	info := h.KeysetInfo()
	rec.Versions = len(info.GetKeyInfo())
	for i, ki := range info.GetKeyInfo() {
		if ki.GetKeyId() == info.GetPrimaryKeyId() {
			rec.Primary = i + 1
		}
	}
	if err := h.WriteWithContext(ctx, keyset.NewBinaryWriter(&buf), cur, keysetAD(s)); err != nil {
		return nil, fmt.Errorf("keyring: wrap data key for %s: %w", s, err)
	}
	rec.KEK, rec.Keyset = cur.id, buf.Bytes()
	return json.Marshal(rec)
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
		b, err := k.wrap(ctx, s, h, &rec)
		if err != nil {
			return 0, err
		}
		k.forget(s)
		if _, err := k.kv.Update(ctx, recordKey(s), b, dk.revision); err != nil {
			continue // changed under us (another rotation): start again from what is stored
		}
		dk, err = k.dataKeyFor(ctx, s, false)
		if err != nil {
			return 0, err
		}
		if err := k.startJob(ctx, s, dk); err != nil {
			return 0, err
		}
		return dk.versions[dk.primary], nil
	}
	return 0, fmt.Errorf("keyring: rotate %s: concurrent changes, try again", s)
}

func (k *Keyring) forget(s Scope) {
	k.mu.Lock()
	delete(k.cache, s.key())
	k.mu.Unlock()
}

// Destroy crypto-shreds the scope and every scope under it: their wrapped data keys are erased
// from the engine's storage (overwritten, not just marked deleted) and replaced by tombstones,
// so every record sealed with them, wherever a copy lives, can no longer be opened, and the
// scopes cannot be given new keys.
func (k *Keyring) Destroy(ctx context.Context, s Scope) error {
	if err := s.Validate(); err != nil {
		return err
	}
	keys, err := k.scopeKeys(ctx)
	if err != nil {
		return err
	}
	stream, err := k.stream(ctx)
	if err != nil {
		return err
	}
	prefix := recordKey(s)
	targets := []string{prefix}
	for _, key := range keys {
		if len(key) > len(prefix) && key[:len(prefix)+1] == prefix+"." {
			targets = append(targets, key)
		}
	}
	now := time.Now().UTC()
	for _, key := range targets {
		entry, err := k.kv.Get(ctx, key)
		var rec scopeRecord
		switch {
		case err == nil:
			_ = json.Unmarshal(entry.Value(), &rec)
		case !errors.Is(err, jetstream.ErrKeyNotFound):
			return fmt.Errorf("keyring: destroy %s: %w", key, err)
		}
		if rec.Created.IsZero() {
			rec.Created = now
		}
		if err == nil {
			// Overwrite the wrapped keyset's bytes in storage before anything else: a plain
			// delete would leave them on disk until compaction.
			if err := stream.SecureDeleteMsg(ctx, entry.Revision()); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
				return fmt.Errorf("keyring: erase %s: %w", key, err)
			}
		}
		// A crash here leaves the scope with no record; Destroy is safe to run again.
		tomb, _ := json.Marshal(scopeRecord{Created: rec.Created, Rotated: rec.Rotated, Destroyed: now})
		if _, err := k.kv.Put(ctx, key, tomb); err != nil {
			return fmt.Errorf("keyring: destroy %s: %w", key, err)
		}
		if sc, err := scopeFromKey(key[len("scope."):]); err == nil {
			k.forget(sc)
		}
	}
	k.log.Info("scope keys destroyed", "scope", s.String(), "scopes", len(targets))
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
