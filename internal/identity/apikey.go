package identity

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"strings"

	"github.com/penstock/penstock/internal/redact"
)

// API keys are shown once as psk_<id>_<secret>: the id (16 hex characters) finds the key, the
// secret (64 hex characters, 256 bits) proves it. Only SHA-256 of the secret is stored.
const apiKeyPrefix = "psk_"

// ErrAPIKeyFormat means a string is not shaped like a Penstock API key.
var ErrAPIKeyFormat = errors.New("not a penstock API key")

// NewAPIKey returns the key to show once, its id, and the digest to store.
func NewAPIKey() (key redact.Secret, id string, digest [32]byte, err error) {
	raw := make([]byte, 8+32)
	if _, err := rand.Read(raw); err != nil {
		return redact.Secret{}, "", digest, err
	}
	id, secret := hex.EncodeToString(raw[:8]), hex.EncodeToString(raw[8:])
	return redact.NewSecret(apiKeyPrefix + id + "_" + secret), id, sha256.Sum256([]byte(secret)), nil
}

// ParseAPIKey splits a presented key into its id and the digest of its secret, checking only
// its shape.
func ParseAPIKey(key string) (id string, digest [32]byte, err error) {
	rest, ok := strings.CutPrefix(key, apiKeyPrefix)
	if !ok || len(rest) != 16+1+64 || rest[16] != '_' {
		return "", digest, ErrAPIKeyFormat
	}
	id, secret := rest[:16], rest[17:]
	if !isHex(id) || !isHex(secret) {
		return "", digest, ErrAPIKeyFormat
	}
	return id, sha256.Sum256([]byte(secret)), nil
}

// DigestEqual compares two digests in constant time.
func DigestEqual(a, b [32]byte) bool { return subtle.ConstantTimeCompare(a[:], b[:]) == 1 }

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}
