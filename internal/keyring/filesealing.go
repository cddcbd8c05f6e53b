package keyring

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
)

// SealFile seals b for the data-directory file name under a key derived from the engine's
// store key, with name as additional data. The store key is never re-keyed (a master rotation
// re-seals it), so such a file stays readable across rotations, and only with this
// directory's keys.
func (m *Master) SealFile(name string, b []byte) ([]byte, error) {
	aead, err := m.fileAEAD(name)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("seal %s: %w", name, err)
	}
	return aead.Seal(nonce, nonce, b, []byte(name)), nil
}

// OpenFile opens what SealFile sealed for name; a changed, moved or truncated file is ErrDecrypt.
func (m *Master) OpenFile(name string, ct []byte) ([]byte, error) {
	aead, err := m.fileAEAD(name)
	if err != nil {
		return nil, err
	}
	if len(ct) < aead.NonceSize()+aead.Overhead() {
		return nil, fmt.Errorf("%s: %w", name, ErrMalformed)
	}
	pt, err := aead.Open(nil, ct[:aead.NonceSize()], ct[aead.NonceSize():], []byte(name))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, ErrDecrypt)
	}
	return pt, nil
}

func (m *Master) fileAEAD(name string) (cipher.AEAD, error) {
	if m.store == nil || m.store.current.IsZero() {
		return nil, fmt.Errorf("seal %s: no store key", name)
	}
	secret, err := hex.DecodeString(m.store.current.Reveal())
	if err != nil {
		return nil, fmt.Errorf("seal %s: store key: %w", name, err)
	}
	key, err := hkdf.Key(sha256.New, secret, nil, "penstock data-directory file "+name, 32)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// SealShared seals b under the master key itself (its KMS, or the local key), with purpose as
// additional data: unlike SealFile, any process given the same master key opens it. It is how
// a cluster's join token carries the platform CA and the cluster credential to a new node.
func (m *Master) SealShared(ctx context.Context, purpose string, b []byte) ([]byte, error) {
	return m.ms.cur().EncryptWithContext(ctx, b, []byte("penstock/shared/"+purpose))
}

// OpenShared opens what SealShared sealed for purpose.
func (m *Master) OpenShared(ctx context.Context, purpose string, ct []byte) ([]byte, error) {
	pt, err := m.ms.cur().DecryptWithContext(ctx, ct, []byte("penstock/shared/"+purpose))
	if err != nil {
		return nil, fmt.Errorf("%s: %w (sealed under another master key, or changed)", purpose, ErrDecrypt)
	}
	return pt, nil
}
