package keyring

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/datadir"
	"github.com/penstock/penstock/internal/redact"
)

// StoreKeysFile, in the data directory, holds the embedded JetStream's store encryption key
// sealed by the master key, so the operator manages one secret, the master key. It is a
// random key rather than one derived from the master key because a KMS key never leaves the
// KMS. A master rotation re-seals the same store key under the new master key: the store
// itself is never re-keyed in place, because the engine's conversion of a store to a new key
// is not crash-safe (a failed conversion loses streams and consumers).
const StoreKeysFile = "jetstream.keys"

// legacyStoreKeyFile is the plain store key of data directories made before the keyring.
const legacyStoreKeyFile = "jetstream.key"

const storeKeysProtects = "the engine's store key, sealed by the master key: without it no stream, " +
	"queue or bucket in jetstream/ can be read"

var storeKeyAD = []byte("penstock/jetstream-store-key")

type storeKeysFile struct {
	KEK     string `json:"kek"`
	Current []byte `json:"current"`
	// Previous is written only by versions that re-keyed the store at a master rotation: the
	// key the store was still written with.
	Previous []byte `json:"previous,omitempty"`
}

type storeKeys struct {
	path    string
	kek     string
	current redact.Secret
	// legacy: the plain key file from before the keyring is still there.
	legacy bool
}

// LoadMaster loads the master key and unseals the engine's store key with it. It runs before
// the engine opens, and never touches the engine. A missing key file is created only during
// the data directory's first start.
func LoadMaster(ctx context.Context, dataDir string, cfg config.Keyring) (*Master, error) {
	ms, err := loadMasters(ctx, dataDir, cfg)
	if err != nil {
		return nil, err
	}
	sk, err := loadStoreKeys(ctx, dataDir, ms)
	if err != nil {
		ms.close()
		return nil, err
	}
	return &Master{ms: ms, store: sk}, nil
}

// StoreKey is the key the embedded engine opens its store with.
func (m *Master) StoreKey() redact.Secret { return m.store.current }

// StoreOpened records that the engine opened its store with the key: a pre-keyring plain key
// file, whose key is now sealed in StoreKeysFile, is removed.
func (m *Master) StoreOpened() error {
	if !m.store.legacy {
		return nil
	}
	legacy := filepath.Join(filepath.Dir(m.store.path), legacyStoreKeyFile)
	if err := os.Remove(legacy); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	m.store.legacy = false
	return datadir.SyncDir(filepath.Dir(legacy))
}

// ID is the current master key's fingerprint; Source says where it comes from.
func (m *Master) ID() string     { return m.ms.cur().id }
func (m *Master) Source() string { return m.ms.cur().source }

// Close releases the master key's keepers.
func (m *Master) Close() { m.ms.close() }

func loadStoreKeys(ctx context.Context, dataDir string, ms *masters) (*storeKeys, error) {
	sk := &storeKeys{path: filepath.Join(dataDir, StoreKeysFile)}
	legacyPath := filepath.Join(dataDir, legacyStoreKeyFile)
	if _, err := os.Stat(legacyPath); err == nil {
		sk.legacy = true
	}
	b, err := os.ReadFile(sk.path)
	if errors.Is(err, os.ErrNotExist) {
		if sk.legacy {
			// A data directory from before the keyring: its plain key stays the store key,
			// sealed from now on.
			if sk.current, err = datadir.ReadKey(legacyPath); err != nil {
				return nil, err
			}
		} else {
			if !missing(filepath.Join(dataDir, "jetstream")) {
				// The engine has written a store: this key is what it was written with.
				return nil, &datadir.MissingError{Dir: dataDir, File: StoreKeysFile, Protects: storeKeysProtects}
			}
			if err := datadir.MayCreate(dataDir, StoreKeysFile, storeKeysProtects); err != nil {
				return nil, err
			}
			if sk.current, err = datadir.NewKey(); err != nil {
				return nil, err
			}
		}
		if err := sk.write(ctx, ms.cur()); err != nil {
			return nil, err
		}
		return sk, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", sk.path, err)
	}
	var f storeKeysFile
	if err := json.Unmarshal(b, &f); err != nil || len(f.Current) == 0 {
		return nil, fmt.Errorf("%s is damaged (%s); restore it from a copy or a backup of the data directory", sk.path, storeKeysProtects)
	}
	m, ok := ms.byID(f.KEK)
	if !ok {
		return nil, fmt.Errorf("%s is sealed by master key %s, which is not configured (current: %s): "+
			"start with the master key that sealed it", sk.path, f.KEK, ms.cur().id)
	}
	sk.kek = f.KEK
	sealed := f.Current
	if len(f.Previous) > 0 {
		// Written by a version that re-keyed the store at the next start: that start has not
		// happened, so the store is still under the previous key, which stays.
		sealed = f.Previous
	}
	if sk.current, err = unsealStoreKey(ctx, m, sealed); err != nil {
		return nil, fmt.Errorf("%s: %w", sk.path, err)
	}
	if len(f.Previous) > 0 {
		if err := sk.write(ctx, m); err != nil {
			return nil, err
		}
	}
	return sk, nil
}

func unsealStoreKey(ctx context.Context, m *master, sealed []byte) (redact.Secret, error) {
	pt, err := m.DecryptWithContext(ctx, sealed, storeKeyAD)
	if err != nil {
		return redact.Secret{}, err
	}
	return redact.NewSecret(string(pt)), nil
}

// write seals the store key under m, replaces the file, and reads it back: the file on disk
// must open under m to the same key before anything relies on it.
func (sk *storeKeys) write(ctx context.Context, m *master) error {
	f := storeKeysFile{KEK: m.id}
	var err error
	if f.Current, err = m.EncryptWithContext(ctx, []byte(sk.current.Reveal()), storeKeyAD); err != nil {
		return err
	}
	b, _ := json.Marshal(f)
	if err := datadir.WriteFile(sk.path, b, 0o600, true); err != nil {
		return err
	}
	back, err := os.ReadFile(sk.path)
	if err != nil || !bytes.Equal(back, b) {
		return fmt.Errorf("%s: written file does not read back", sk.path)
	}
	got, err := unsealStoreKey(ctx, m, f.Current)
	if err != nil || !got.Equal(sk.current) {
		return fmt.Errorf("%s: written key does not open under master key %s", sk.path, m.id)
	}
	sk.kek = m.id
	return nil
}
