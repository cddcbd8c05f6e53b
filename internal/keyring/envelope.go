package keyring

import (
	"context"
	"encoding/binary"
	"fmt"

	"github.com/penstock/penstock/internal/names"
)

// Ciphertext format, version 1, which is Tink's AEAD output as it is:
//
//	0x01 | key ID (4 bytes) | IV (12) | ciphertext | tag (16)
//
// The first byte is the format version (Tink's "TINK" output prefix; a later format would use
// another value), and the key ID names the data key version, so records sealed before a
// rotation stay readable. The associated data binds the record's identity (scope, kind, id);
// it is not stored. Using Tink's output unchanged saves a copy of every record.
const (
	formatV1     = 0x01
	headerLen    = 1 + 4
	minCipherLen = headerLen + 12 + 16
)

// associatedData is "penstock/v1", then scope, kind and id, each length-prefixed so no two
// identities share a byte string.
func associatedData(s Scope, kind, id string) []byte {
	ad := []byte("penstock/v1")
	for _, part := range []string{s.key(), kind, id} {
		ad = binary.BigEndian.AppendUint32(ad, uint32(len(part)))
		ad = append(ad, part...)
	}
	return ad
}

func checkIdentity(s Scope, kind, id string) error {
	if err := s.Validate(); err != nil {
		return err
	}
	if !names.Valid(kind, "_.-") {
		return invalid("kind %q: must be 1-63 of a-z, 0-9, _, . and -", kind)
	}
	if id == "" || len(id) > 1024 {
		return invalid("record id: must be 1-1024 bytes")
	}
	return nil
}

// Seal encrypts plaintext with the scope's primary data key (created on first use), bound to
// kind and id: it opens only for the same scope, kind and id.
func (k *Keyring) Seal(ctx context.Context, s Scope, kind, id string, plaintext []byte) ([]byte, error) {
	if err := checkIdentity(s, kind, id); err != nil {
		return nil, err
	}
	dk, err := k.dataKeyFor(ctx, s, true)
	if err != nil {
		return nil, err
	}
	ct, err := dk.aead.Encrypt(plaintext, associatedData(s, kind, id))
	if err != nil {
		return nil, fmt.Errorf("keyring: seal: %w", err)
	}
	return ct, nil
}

// Unseal decrypts what Seal produced for the same scope, kind and id. Every failure is one of
// the package's errors: ErrMalformed, ErrUnknownKeyVersion, ErrDecrypt, ErrDestroyed, ErrNoKey.
func (k *Keyring) Unseal(ctx context.Context, s Scope, kind, id string, ciphertext []byte) ([]byte, error) {
	if err := checkIdentity(s, kind, id); err != nil {
		return nil, err
	}
	keyID, err := KeyID(ciphertext)
	if err != nil {
		return nil, err
	}
	dk, err := k.dataKeyFor(ctx, s, false)
	if err != nil {
		return nil, err
	}
	if _, ok := dk.versions[keyID]; !ok {
		return nil, ErrUnknownKeyVersion
	}
	pt, err := dk.aead.Decrypt(ciphertext, associatedData(s, kind, id))
	if err != nil {
		return nil, ErrDecrypt
	}
	return pt, nil
}

// KeyID reads the data key ID a ciphertext was sealed with, checking only its framing.
func KeyID(ciphertext []byte) (uint32, error) {
	if len(ciphertext) < minCipherLen || ciphertext[0] != formatV1 {
		return 0, ErrMalformed
	}
	return binary.BigEndian.Uint32(ciphertext[1:5]), nil
}

// isPrimary reports whether a ciphertext was sealed with the scope's current primary key.
func (dk *dataKey) isPrimary(ciphertext []byte) bool {
	id, err := KeyID(ciphertext)
	return err == nil && id == dk.primary
}
