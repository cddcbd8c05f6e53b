// Package identity owns who someone is: tenants, environments, applications, users, their
// passwords, second factors, sessions and API keys, and the checks that prove a credential.
// It never decides what a principal may do (that is authz) and never keeps a credential in a
// form that could be replayed: passwords are argon2id hashes, tokens and keys SHA-256 digests.
package identity

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/crypto/argon2"

	"github.com/penstock/penstock/internal/redact"
)

// Argon2Params are the argon2id cost parameters. They are stored with every hash, so changing
// the configured ones upgrades each hash at its owner's next login.
type Argon2Params struct {
	Memory  uint32 // KiB
	Time    uint32
	Threads uint8
}

// DefaultArgon2 costs about 100 ms on the 2-core development VM (bench/identity measures it):
// OWASP's argon2id recommendation raised to that time budget.
var DefaultArgon2 = Argon2Params{Memory: 64 << 10, Time: 3, Threads: 2}

const (
	saltLen = 16
	hashLen = 32
)

// HashPassword returns a PHC-format argon2id hash with a fresh random salt:
// $argon2id$v=19$m=65536,t=3,p=2$<salt>$<hash>.
func HashPassword(pw redact.Secret, p Argon2Params) (string, error) {
	salt := make([]byte, saltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("password salt: %w", err)
	}
	sum := argon2.IDKey([]byte(pw.Reveal()), salt, p.Time, p.Memory, p.Threads, hashLen)
	enc := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, p.Memory, p.Time, p.Threads,
		enc.EncodeToString(salt), enc.EncodeToString(sum)), nil
}

// ErrBadHash means a stored hash is not a PHC argon2id string.
var ErrBadHash = errors.New("stored password hash is malformed")

// VerifyPassword checks pw against a stored hash in constant time. needsRehash is true when
// the hash was made with other parameters than want.
func VerifyPassword(pw redact.Secret, stored string, want Argon2Params) (ok, needsRehash bool, err error) {
	p, salt, sum, err := parseHash(stored)
	if err != nil {
		return false, false, err
	}
	got := argon2.IDKey([]byte(pw.Reveal()), salt, p.Time, p.Memory, p.Threads, uint32(len(sum)))
	if subtle.ConstantTimeCompare(got, sum) != 1 {
		return false, false, nil
	}
	return true, p != want, nil
}

func parseHash(s string) (Argon2Params, []byte, []byte, error) {
	parts := strings.Split(s, "$")
	if len(parts) != 6 || parts[1] != "argon2id" || parts[2] != "v="+strconv.Itoa(argon2.Version) {
		return Argon2Params{}, nil, nil, ErrBadHash
	}
	var p Argon2Params
	var threads uint
	if n, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &p.Memory, &p.Time, &threads); err != nil || n != 3 ||
		p.Memory == 0 || p.Time == 0 || threads == 0 || threads > 255 || p.Memory > 4<<20 || p.Time > 100 {
		return Argon2Params{}, nil, nil, ErrBadHash
	}
	p.Threads = uint8(threads)
	salt, err1 := base64.RawStdEncoding.DecodeString(parts[4])
	sum, err2 := base64.RawStdEncoding.DecodeString(parts[5])
	if err1 != nil || err2 != nil || len(salt) < 8 || len(sum) < 16 {
		return Argon2Params{}, nil, nil, ErrBadHash
	}
	return p, salt, sum, nil
}
