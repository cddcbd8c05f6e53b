package keyring

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// PurgeRecords removes every record of the scope and of the scopes under it from every sealed
// store this keyring has opened, whether or not the scope's key still exists. After a scope
// is destroyed its records are unreadable already; purging them leaves nothing for a scope
// made later under the same name to list.
func (k *Keyring) PurgeRecords(ctx context.Context, s Scope) error {
	if err := s.Validate(); err != nil {
		return err
	}
	for _, st := range k.sealedStores() {
		lister, err := st.kv.ListKeysFiltered(ctx, s.key()+".>")
		if err != nil {
			return fmt.Errorf("keyring: list %s records of %s: %w", st.kind, s, err)
		}
		var keys []string
		for key := range lister.Keys() {
			keys = append(keys, key)
		}
		for _, key := range keys {
			if err := st.kv.Purge(ctx, key); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
				return fmt.Errorf("keyring: purge %s record of %s: %w", st.kind, s, err)
			}
		}
	}
	return nil
}

// Release makes the name of a destroyed scope usable again, for a tenant or application
// created anew under it: it finishes the destruction (every scope under it tombstoned, every
// wrapped keyset erased), purges every record of those scopes from the sealed stores, and
// only then removes their tombstones, the scope's own last, so a crash part way leaves the
// scope barred and the next Release finishes. The new scope gets a new key on first use;
// nothing sealed under the old one opens with it. A scope that was never destroyed is left
// alone.
func (k *Keyring) Release(ctx context.Context, s Scope) error {
	if err := s.Validate(); err != nil {
		return err
	}
	e, err := k.kv.Get(ctx, recordKey(s))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("keyring: read %s: %w", s, err)
	}
	var rec scopeRecord
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return fmt.Errorf("keyring: record of %s: %w", s, err)
	}
	if rec.Destroyed.IsZero() {
		return nil
	}
	if _, err := k.shredBelow(ctx, s); err != nil {
		return err
	}
	if err := k.PurgeRecords(ctx, s); err != nil {
		return err
	}
	keys, err := k.scopeKeys(ctx)
	if err != nil {
		return err
	}
	prefix := recordKey(s)
	for _, key := range keys {
		if !strings.HasPrefix(key, prefix+".") {
			continue
		}
		if err := k.kv.Purge(ctx, key); err != nil {
			return fmt.Errorf("keyring: release %s: %w", key, err)
		}
	}
	if err := k.kv.Purge(ctx, prefix); err != nil {
		return fmt.Errorf("keyring: release %s: %w", s, err)
	}
	k.forget()
	k.log.Info("destroyed scope released for reuse", "scope", s.String())
	return nil
}

// Record is one stored record of a sealed store, as stored: its value is still sealed.
type Record struct {
	Bucket string `json:"bucket"`
	Key    string `json:"key"`
	Value  []byte `json:"value"`
}

// ExportRecords returns every record of the scope and of the scopes under it from every
// sealed store this keyring has opened, still sealed, sorted by bucket and key.
func (k *Keyring) ExportRecords(ctx context.Context, s Scope) ([]Record, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	var out []Record
	for _, st := range k.sealedStores() {
		lister, err := st.kv.ListKeysFiltered(ctx, s.key()+".>")
		if err != nil {
			return nil, fmt.Errorf("keyring: list %s records of %s: %w", st.kind, s, err)
		}
		var keys []string
		for key := range lister.Keys() {
			keys = append(keys, key)
		}
		slices.Sort(keys)
		for _, key := range keys {
			e, err := st.kv.Get(ctx, key)
			if errors.Is(err, jetstream.ErrKeyNotFound) {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("keyring: read %s record %s: %w", st.kind, key, err)
			}
			out = append(out, Record{Bucket: st.kv.Bucket(), Key: key, Value: e.Value()})
		}
	}
	slices.SortFunc(out, func(a, b Record) int { return strings.Compare(a.Bucket+"\x00"+a.Key, b.Bucket+"\x00"+b.Key) })
	return out, nil
}

// ReplaceRecords makes the scope's records in every sealed store exactly recs: a record of
// the scope that recs does not hold is purged. A record outside the scope, or of a store this
// keyring has not opened, is refused before anything changes.
func (k *Keyring) ReplaceRecords(ctx context.Context, s Scope, recs []Record) error {
	if err := s.Validate(); err != nil {
		return err
	}
	stores := map[string]*Sealed{}
	for _, st := range k.sealedStores() {
		stores[st.kv.Bucket()] = st
	}
	want := map[string]map[string][]byte{}
	for _, r := range recs {
		if stores[r.Bucket] == nil {
			return invalid("record %s in bucket %q: no such sealed store", r.Key, r.Bucket)
		}
		if !strings.HasPrefix(r.Key, s.key()+".") {
			return invalid("record %s in bucket %s is not of scope %s", r.Key, r.Bucket, s)
		}
		if want[r.Bucket] == nil {
			want[r.Bucket] = map[string][]byte{}
		}
		want[r.Bucket][r.Key] = r.Value
	}
	for name, st := range stores {
		lister, err := st.kv.ListKeysFiltered(ctx, s.key()+".>")
		if err != nil {
			return fmt.Errorf("keyring: list %s records of %s: %w", st.kind, s, err)
		}
		var stale []string
		for key := range lister.Keys() {
			if _, ok := want[name][key]; !ok {
				stale = append(stale, key)
			}
		}
		for _, key := range stale {
			if err := st.kv.Purge(ctx, key); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
				return fmt.Errorf("keyring: purge %s record %s: %w", st.kind, key, err)
			}
		}
		for key, v := range want[name] {
			if _, err := st.kv.Put(ctx, key, v); err != nil {
				return fmt.Errorf("keyring: write %s record %s: %w", st.kind, key, err)
			}
		}
	}
	return nil
}
