package keyring

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/penstock/penstock/internal/crashpoint"
	"github.com/penstock/penstock/internal/datadir"
)

// ErrRotateConfigured means the master key comes from configuration (an environment key or a
// KMS), which Penstock cannot change: the operator rotates it through keyring.previous_*.
var ErrRotateConfigured = errors.New("the master key comes from keyring.master_key or keyring.kms_url: " +
	"set the new key there and the old one in keyring.previous_master_key or keyring.previous_kms_url, then restart")

// RotateMaster replaces the master key file with a new key while Penstock runs: every data key
// is rewrapped under the new key, the engine's store key is replaced (the store converts at
// the next start, with the old key kept until then), then the new key file takes the old
// one's place. Interrupted, it resumes at the next start.
func (k *Keyring) RotateMaster(ctx context.Context, m *Master) error {
	k.rotateMu.Lock()
	defer k.rotateMu.Unlock()
	ms := k.masters
	if !ms.fromFile {
		return ErrRotateConfigured
	}
	ms.mu.Lock()
	if !ms.fileRotation {
		key, err := datadir.NewKey()
		if err != nil {
			ms.mu.Unlock()
			return err
		}
		if err := datadir.WriteKey(filepath.Join(ms.dataDir, masterKeyNextFile), key); err != nil {
			ms.mu.Unlock()
			return err
		}
		crashpoint.Hit("rotate-master/next-written")
		nm, err := rawMaster(key, "file")
		if err != nil {
			ms.mu.Unlock()
			return err
		}
		ms.previous.close()
		ms.previous, ms.current, ms.fileRotation = ms.current, nm, true
	}
	ms.mu.Unlock()
	return k.finishMasterRotation(ctx, m)
}

// finishMasterRotation moves everything wrapped by the previous master key to the current
// one, in an order a kill at any step resumes from: every data key is rewrapped, then every
// one is read back under the new key, then the store key is re-sealed (and read back), and
// only then does the new key file take the old one's place. Until that rename both keys are
// on disk and each record names the key that wrapped it. It is idempotent: each step checks
// what is already done.
func (k *Keyring) finishMasterRotation(ctx context.Context, m *Master) error {
	ms := k.masters
	cur := ms.cur()
	rewrapped := 0
	// Until a full pass finds nothing to rewrap: a scope created by a writer that wrapped it
	// just before the switch is caught by the next pass.
	for pass := 0; ; pass++ {
		if pass == 10 {
			return fmt.Errorf("keyring: master rotation: %w", ErrConflict)
		}
		keys, err := k.scopeKeys(ctx)
		if err != nil {
			return err
		}
		n := 0
		for _, key := range keys {
			done, err := k.rewrapScope(ctx, key)
			if err != nil {
				return err
			}
			if done {
				n++
				crashpoint.Hit("rotate-master/scope-rewrapped")
			}
		}
		rewrapped += n
		if n == 0 {
			break
		}
	}
	if err := k.verifyScopes(ctx, cur); err != nil {
		return err
	}
	crashpoint.Hit("rotate-master/verified")
	if sk := m.store; sk != nil && sk.kek != cur.id {
		if err := sk.write(ctx, cur); err != nil {
			return err
		}
		crashpoint.Hit("rotate-master/store-key-sealed")
	}
	// What is kept outside the data directory under the master key (a backup target's
	// signing key and escrow) is sealed again while the old key can still open it.
	k.mu.Lock()
	hooks := slices.Clone(k.onMasterRotation)
	k.mu.Unlock()
	for _, f := range hooks {
		if err := f(ctx); err != nil {
			return fmt.Errorf("keyring: master rotation: %w", err)
		}
	}
	ms.mu.Lock()
	defer ms.mu.Unlock()
	if ms.fileRotation {
		next, file := filepath.Join(ms.dataDir, masterKeyNextFile), filepath.Join(ms.dataDir, MasterKeyFile)
		if err := os.Rename(next, file); err != nil {
			return fmt.Errorf("install new master key: %w", err)
		}
		if err := datadir.SyncDir(ms.dataDir); err != nil {
			return err
		}
		crashpoint.Hit("rotate-master/installed")
		ms.previous.close()
		ms.previous, ms.fileRotation = nil, false
	}
	k.log.Info("master key rotated", "master", cur.id, "data_keys_rewrapped", rewrapped)
	return nil
}

// checkWrappers refuses to open a keyring whose data keys are wrapped by a master key that is
// not configured: a replaced or mistyped master key is a refusal at start, never data that
// turns unreadable one record at a time.
func (k *Keyring) checkWrappers(ctx context.Context) error {
	return k.eachLiveScope(ctx, func(_ string, _ jetstream.KeyValueEntry, rec scopeRecord) error {
		if _, ok := k.masters.byID(rec.KEK); !ok {
			return fmt.Errorf("keyring: data keys are wrapped by master key %s, which is not configured (current: %s): "+
				"start with the master key that wrapped them (master.key, keyring.master_key or keyring.kms_url)", rec.KEK, k.masters.cur().id)
		}
		return nil
	})
}

// verifyScopes reads every live data key back under cur: the previous master key may only be
// dropped when nothing needs it.
func (k *Keyring) verifyScopes(ctx context.Context, cur *master) error {
	return k.eachLiveScope(ctx, func(key string, e jetstream.KeyValueEntry, rec scopeRecord) error {
		if rec.KEK != cur.id {
			return fmt.Errorf("keyring: master rotation: %s is still wrapped by %s: %w", key, rec.KEK, ErrConflict)
		}
		s, err := scopeFromKey(key[len("scope."):])
		if err != nil {
			return err
		}
		if _, err := k.unwrap(ctx, s, e); err != nil {
			return fmt.Errorf("keyring: master rotation: verify %s: %w", key, err)
		}
		return nil
	})
}

// eachLiveScope calls f with every scope record that is not destroyed.
func (k *Keyring) eachLiveScope(ctx context.Context, f func(key string, e jetstream.KeyValueEntry, rec scopeRecord) error) error {
	keys, err := k.scopeKeys(ctx)
	if err != nil {
		return err
	}
	for _, key := range keys {
		e, err := k.kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("keyring: %s: %w", key, err)
		}
		var rec scopeRecord
		if err := json.Unmarshal(e.Value(), &rec); err != nil {
			return fmt.Errorf("keyring: %s: %w", key, err)
		}
		if !rec.Destroyed.IsZero() {
			continue
		}
		if err := f(key, e, rec); err != nil {
			return err
		}
	}
	return nil
}

// rewrapScope rewraps one scope record under the current master key if another one wrapped
// it.
func (k *Keyring) rewrapScope(ctx context.Context, key string) (bool, error) {
	for attempt := 0; attempt < 10; attempt++ {
		e, err := k.kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		var rec scopeRecord
		if err := json.Unmarshal(e.Value(), &rec); err != nil {
			return false, fmt.Errorf("keyring: %s: %w", key, err)
		}
		if !rec.Destroyed.IsZero() || rec.KEK == k.masters.cur().id {
			return false, nil
		}
		s, err := scopeFromKey(key[len("scope."):])
		if err != nil {
			return false, err
		}
		dk, err := k.unwrap(ctx, s, e)
		if err != nil {
			return false, err
		}
		if _, err := k.writeKeyset(ctx, s, dk.handle, &rec, e.Revision()); errors.Is(err, ErrConflict) {
			continue // changed meanwhile (a rotation of this scope): read it again
		} else if err != nil {
			return false, err
		}
		return true, nil
	}
	return false, fmt.Errorf("keyring: rewrap %s: %w", key, ErrConflict)
}
