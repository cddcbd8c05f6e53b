package keyring

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/nats-io/nats.go/jetstream"

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
// one. It is idempotent: each step checks what is already done.
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
			}
		}
		rewrapped += n
		if n == 0 {
			break
		}
	}
	sk := m.store
	if sk.kek != cur.id {
		if !sk.inUse.IsZero() {
			// A new store key, and the one the engine runs with as the previous key.
			nk, err := datadir.NewKey()
			if err != nil {
				return err
			}
			sk.current, sk.previous = nk, sk.inUse
		}
		if err := sk.write(ctx, cur); err != nil {
			return err
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
		ms.previous.close()
		ms.previous, ms.fileRotation = nil, false
	}
	k.log.Info("master key rotated", "master", cur.id, "data_keys_rewrapped", rewrapped)
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
