package keyring

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"gocloud.dev/secrets"
	_ "gocloud.dev/secrets/awskms"        // awskms:// master keys
	_ "gocloud.dev/secrets/azurekeyvault" // azurekeyvault:// master keys
	_ "gocloud.dev/secrets/gcpkms"        // gcpkms:// master keys
	_ "gocloud.dev/secrets/hashivault"    // hashivault:// master keys
	"gocloud.dev/secrets/localsecrets"    // base64key:// and the key file

	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/datadir"
	"github.com/penstock/penstock/internal/redact"
)

// Files of the master key, in the data directory.
const (
	MasterKeyFile     = "master.key"
	masterKeyNextFile = "master.key.next" // a rotation in progress: the new key
)

// master is one key-encryption key. Its material stays inside the keeper (in memory for local
// keys, in the KMS otherwise); only its fingerprint leaves this package.
type master struct {
	id     string // fingerprint, safe to store and show
	source string // file, env, kms scheme
	keeper *secrets.Keeper
}

// EncryptWithContext seals plaintext under the master key, binding ad: the KMS or local keeper
// authenticates ad and plaintext together, as ad's length, ad, then the plaintext.
func (m *master) EncryptWithContext(ctx context.Context, plaintext, ad []byte) ([]byte, error) {
	buf := make([]byte, 4, 4+len(ad)+len(plaintext))
	binary.BigEndian.PutUint32(buf, uint32(len(ad)))
	buf = append(append(buf, ad...), plaintext...)
	ct, err := m.keeper.Encrypt(ctx, buf)
	if err != nil {
		return nil, fmt.Errorf("master key (%s): encrypt: %w", m.source, err)
	}
	return ct, nil
}

// DecryptWithContext opens what EncryptWithContext sealed, refusing it if ad differs.
func (m *master) DecryptWithContext(ctx context.Context, ciphertext, ad []byte) ([]byte, error) {
	buf, err := m.keeper.Decrypt(ctx, ciphertext)
	if err != nil {
		return nil, fmt.Errorf("master key (%s): %w", m.source, ErrDecrypt)
	}
	if len(buf) < 4 {
		return nil, ErrMalformed
	}
	n := binary.BigEndian.Uint32(buf)
	if uint64(n) > uint64(len(buf)-4) || subtle.ConstantTimeCompare(buf[4:4+n], ad) != 1 {
		return nil, fmt.Errorf("master key: %w", ErrDecrypt)
	}
	return buf[4+n:], nil
}

func (m *master) close() {
	if m != nil && m.keeper != nil {
		_ = m.keeper.Close()
	}
}

// masters is the current key-encryption key and, while a rotation is in progress, the one it
// replaces. Records name the key that wrapped them, so both stay readable.
type masters struct {
	mu       sync.RWMutex // guards current, previous and fileRotation
	current  *master
	previous *master
	// fileRotation is set when the current key is master.key.next: a rotation of the key file
	// that has not finished.
	fileRotation bool
	fromFile     bool
	dataDir      string
}

// cur is the key new wraps use.
func (ms *masters) cur() *master {
	ms.mu.RLock()
	defer ms.mu.RUnlock()
	return ms.current
}

func (ms *masters) byID(id string) (*master, bool) {
	ms.mu.RLock()
	defer ms.mu.RUnlock()
	switch {
	case ms.current.id == id:
		return ms.current, true
	case ms.previous != nil && ms.previous.id == id:
		return ms.previous, true
	}
	return nil, false
}

func (ms *masters) close() {
	ms.current.close()
	ms.previous.close()
}

// loadMasters finds the master key: a KMS URL, else the environment's key, else the key file
// in the data directory (created on first start). Configured previous keys are for rotations
// of a KMS or environment key.
func loadMasters(ctx context.Context, dataDir string, cfg config.Keyring) (*masters, error) {
	ms := &masters{dataDir: dataDir}
	var err error
	switch {
	case !cfg.KMSURL.IsZero():
		ms.current, err = kmsMaster(ctx, cfg.KMSURL)
	case !cfg.MasterKey.IsZero():
		ms.current, err = rawMaster(cfg.MasterKey, "env")
	default:
		ms.fromFile = true
		return ms, ms.loadFile()
	}
	if err != nil {
		return nil, err
	}
	switch {
	case !cfg.PreviousKMSURL.IsZero():
		ms.previous, err = kmsMaster(ctx, cfg.PreviousKMSURL)
	case !cfg.PreviousMasterKey.IsZero():
		ms.previous, err = rawMaster(cfg.PreviousMasterKey, "env (previous)")
	}
	if err != nil {
		ms.current.close()
		return nil, err
	}
	return ms, nil
}

func (ms *masters) loadFile() error {
	const protects = "the master key, which wraps every data key and the engine's store key: without it nothing in the directory can be read"
	load := func() (redact.Secret, error) {
		if missing(filepath.Join(ms.dataDir, MasterKeyFile)) && !missing(filepath.Join(ms.dataDir, StoreKeysFile)) {
			// Something is sealed by a master key already, even in an unfinished first start.
			return redact.Secret{}, &datadir.MissingError{Dir: ms.dataDir, File: MasterKeyFile, Protects: protects}
		}
		return datadir.LoadKey(ms.dataDir, MasterKeyFile, protects)
	}
	if preKeyring(ms.dataDir) {
		// Nothing in a directory from before the keyring was ever sealed by a master key.
		load = func() (redact.Secret, error) {
			return datadir.LoadOrCreateKey(filepath.Join(ms.dataDir, MasterKeyFile))
		}
	}
	key, err := load()
	if err != nil {
		return err
	}
	if ms.current, err = rawMaster(key, "file"); err != nil {
		return err
	}
	next := filepath.Join(ms.dataDir, masterKeyNextFile)
	if _, err := os.Stat(next); err == nil {
		nk, err := datadir.ReadKey(next)
		if err != nil {
			return fmt.Errorf("master key: %w", err)
		}
		nm, err := rawMaster(nk, "file")
		if err != nil {
			return err
		}
		ms.previous, ms.current, ms.fileRotation = ms.current, nm, true
	}
	return nil
}

// missing reports whether nothing, not even a dangling link, is at path.
func missing(path string) bool {
	_, err := os.Lstat(path)
	return errors.Is(err, os.ErrNotExist)
}

// preKeyring reports whether dataDir is from before the keyring: a plain store key, and no
// sealed one.
func preKeyring(dataDir string) bool {
	_, errLegacy := os.Stat(filepath.Join(dataDir, legacyStoreKeyFile))
	_, errSealed := os.Stat(filepath.Join(dataDir, StoreKeysFile))
	return errLegacy == nil && errors.Is(errSealed, os.ErrNotExist)
}

// rawMaster uses a 256-bit key given as 64 hex characters or as base64.
func rawMaster(s redact.Secret, source string) (*master, error) {
	key, err := decodeKey(s.Reveal())
	if err != nil {
		return nil, fmt.Errorf("master key (%s): %w", source, err)
	}
	sum := sha256.Sum256(append([]byte("penstock master key id\x00"), key[:]...))
	return &master{id: "local:" + hex.EncodeToString(sum[:8]), source: source, keeper: localsecrets.NewKeeper(key)}, nil
}

func decodeKey(s string) ([32]byte, error) {
	var key [32]byte
	s = strings.TrimSpace(s)
	for _, dec := range []func(string) ([]byte, error){
		hex.DecodeString, base64.StdEncoding.DecodeString, base64.URLEncoding.DecodeString,
	} {
		if b, err := dec(s); err == nil && len(b) == 32 {
			copy(key[:], b)
			return key, nil
		}
	}
	return key, errors.New("must be 32 bytes as 64 hex characters or base64")
}

// kmsMaster opens a gocloud.dev/secrets keeper URL. The URL can hold key material
// (base64key://), so it is a Secret and only its scheme is ever shown.
func kmsMaster(ctx context.Context, raw redact.Secret) (*master, error) {
	u, err := url.Parse(raw.Reveal())
	if err != nil || u.Scheme == "" {
		return nil, errors.New("keyring.kms_url: must be a URL such as awskms://, gcpkms://, azurekeyvault://, hashivault:// or base64key://")
	}
	if u.Scheme == "base64key" && u.Host == "" {
		// gocloud would make up a random key, and the next start could not read anything.
		return nil, errors.New("keyring.kms_url: base64key:// needs the key: base64key://<32 bytes in URL-safe base64>")
	}
	k, err := secrets.OpenKeeper(ctx, raw.Reveal())
	if err != nil {
		// The driver's error may quote the URL, and a base64key:// URL is the key itself.
		return nil, fmt.Errorf("keyring.kms_url (%s): %s", u.Scheme, strings.ReplaceAll(err.Error(), raw.Reveal(), "[kms_url]"))
	}
	sum := sha256.Sum256([]byte("penstock kms key id\x00" + raw.Reveal()))
	return &master{id: "kms:" + u.Scheme + ":" + hex.EncodeToString(sum[:8]), source: u.Scheme, keeper: k}, nil
}
