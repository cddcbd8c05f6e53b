package keyring

import (
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
// KMS. While a master rotation waits for a restart, it also holds the previous store key,
// which JetStream uses to convert the store on its next start.
const StoreKeysFile = "jetstream.keys"

// legacyStoreKeyFile is the plain store key of data directories made before the keyring.
const legacyStoreKeyFile = "jetstream.key"

var storeKeyAD = []byte("penstock/jetstream-store-key")

type storeKeysFile struct {
	KEK      string `json:"kek"`
	Current  []byte `json:"current"`
	Previous []byte `json:"previous,omitempty"`
}

type storeKeys struct {
	path     string
	kek      string
	current  redact.Secret
	previous redact.Secret
	// inUse is the key the running engine opened its store with.
	inUse redact.Secret
}

// LoadMaster loads the master key and unseals the engine's store key with it. It runs before
// the engine opens, and never touches the engine.
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

// StoreKey is what the embedded engine opens its store with: the current key, and the
// previous one when a master rotation changed it since the last start.
func (m *Master) StoreKey() (current, previous redact.Secret) {
	return m.store.current, m.store.previous
}

// StoreKeyInUse records that the engine opened, and so converted, its store with the current
// key: the previous key, and a pre-keyring plain key file, are no longer needed.
func (m *Master) StoreKeyInUse(ctx context.Context) error {
	sk := m.store
	sk.inUse = sk.current
	if !sk.previous.IsZero() {
		sk.previous = redact.Secret{}
		if err := sk.write(ctx, m.ms.cur()); err != nil {
			return err
		}
	}
	legacy := filepath.Join(filepath.Dir(sk.path), legacyStoreKeyFile)
	if err := os.Remove(legacy); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// ID is the current master key's fingerprint; Source says where it comes from.
func (m *Master) ID() string     { return m.ms.cur().id }
func (m *Master) Source() string { return m.ms.cur().source }

// Close releases the master key's keepers.
func (m *Master) Close() { m.ms.close() }

func loadStoreKeys(ctx context.Context, dataDir string, ms *masters) (*storeKeys, error) {
	sk := &storeKeys{path: filepath.Join(dataDir, StoreKeysFile)}
	b, err := os.ReadFile(sk.path)
	if errors.Is(err, os.ErrNotExist) {
		if sk.current, err = datadir.NewKey(); err != nil {
			return nil, err
		}
		// A data directory from before the keyring: its plain key becomes the previous one,
		// so the store is converted to the new key on this start.
		legacyPath := filepath.Join(dataDir, legacyStoreKeyFile)
		if _, err := os.Stat(legacyPath); err == nil {
			if sk.previous, err = datadir.LoadOrCreateKey(legacyPath); err != nil {
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
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("%s: %w", sk.path, err)
	}
	m, ok := ms.byID(f.KEK)
	if !ok {
		return nil, fmt.Errorf("%s is sealed by master key %s, which is not configured (current: %s)", sk.path, f.KEK, ms.cur().id)
	}
	sk.kek = f.KEK
	if sk.current, err = unsealStoreKey(ctx, m, f.Current); err != nil {
		return nil, fmt.Errorf("%s: %w", sk.path, err)
	}
	if len(f.Previous) > 0 {
		if sk.previous, err = unsealStoreKey(ctx, m, f.Previous); err != nil {
			return nil, fmt.Errorf("%s: %w", sk.path, err)
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

func (sk *storeKeys) write(ctx context.Context, m *master) error {
	f := storeKeysFile{KEK: m.id}
	var err error
	if f.Current, err = m.EncryptWithContext(ctx, []byte(sk.current.Reveal()), storeKeyAD); err != nil {
		return err
	}
	if !sk.previous.IsZero() {
		if f.Previous, err = m.EncryptWithContext(ctx, []byte(sk.previous.Reveal()), storeKeyAD); err != nil {
			return err
		}
	}
	b, _ := json.Marshal(f)
	if err := datadir.WriteFile(sk.path, b, 0o600, true); err != nil {
		return err
	}
	sk.kek = m.id
	return nil
}
