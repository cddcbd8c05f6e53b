package backup

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"
)

// Manifest lists every part of a backup. It is stored as its JSON followed by a signature
// line, so that what is verified is the exact bytes read.
type Manifest struct {
	Format  int       `json:"format"` // 1
	ID      string    `json:"id"`
	Created time.Time `json:"created"`
	// Tenant is set for a backup of one tenant; empty for the whole platform.
	Tenant string `json:"tenant,omitempty"`
	// Key names the signing key: the first 16 hex characters of SHA-256 of its public key.
	Key   string `json:"key"`
	Parts []Part `json:"parts"`
}

// Part is one stream's sealed snapshot, or (Kind "records") a tenant's records from the
// platform's sealed stores.
type Part struct {
	Kind    string          `json:"kind,omitempty"` // "" for a stream, "records"
	Object  string          `json:"object"`         // where it is stored, relative to the backup
	Account string          `json:"account"`        // the engine account that holds the stream
	Stream  string          `json:"stream"`
	Scope   string          `json:"scope"` // the keyring scope it is sealed under
	Size    int64           `json:"size"`  // sealed bytes
	SHA256  string          `json:"sha256"`
	State   StreamState     `json:"state"`
	Config  json.RawMessage `json:"config,omitempty"` // the stream's configuration, as the engine gave it
	// Records is how many records a records part holds.
	Records int `json:"records,omitempty"`
}

// KindRecords is the kind of a part that holds a tenant's records.
const KindRecords = "records"

// ErrManifest is returned for a manifest that is damaged or not signed by the expected key.
var ErrManifest = errors.New("backup manifest refused")

const signaturePrefix = "\nsignature ed25519 "

// KeyID names a signing key by its public key.
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:8])
}

// Sign encodes the manifest, sets its key id, and appends the signature of the encoded bytes.
func (m *Manifest) Sign(priv ed25519.PrivateKey) ([]byte, error) {
	m.Format = 1
	m.Key = KeyID(priv.Public().(ed25519.PublicKey))
	body, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	return signed(priv, body), nil
}

// ReadManifest checks a stored manifest's signature against pub before it decodes anything,
// then decodes it.
func ReadManifest(b []byte, pub ed25519.PublicKey) (*Manifest, error) {
	body, err := openSigned(b, pub)
	if err != nil {
		return nil, err
	}
	var m Manifest
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrManifest, err)
	}
	if m.Format != 1 || m.Key != KeyID(pub) {
		return nil, fmt.Errorf("%w: format %d, key %s", ErrManifest, m.Format, m.Key)
	}
	return &m, nil
}

// Check compares a part as read (its size and SHA-256) with what the manifest says.
func (p Part) Check(size int64, sum [32]byte) error {
	if size != p.Size || hex.EncodeToString(sum[:]) != p.SHA256 {
		return fmt.Errorf("%w: part %s is %d bytes with SHA-256 %x; the manifest says %d bytes, %s",
			ErrUnreadable, p.Object, size, sum, p.Size, p.SHA256)
	}
	return nil
}

// signed appends to body the signature line of its Ed25519 signature.
func signed(priv ed25519.PrivateKey, body []byte) []byte {
	sig := ed25519.Sign(priv, body)
	return append(append(slices.Clone(body), signaturePrefix...), hex.EncodeToString(sig)+"\n"...)
}

// openSigned checks what signed made against pub and returns the body.
func openSigned(b []byte, pub ed25519.PublicKey) ([]byte, error) {
	i := bytes.LastIndex(b, []byte(signaturePrefix))
	if i < 0 {
		return nil, fmt.Errorf("%w: no signature line", ErrManifest)
	}
	body, sigHex := b[:i], bytes.TrimSuffix(b[i+len(signaturePrefix):], []byte("\n"))
	sig, err := hex.DecodeString(string(sigHex))
	if err != nil || len(sig) != ed25519.SignatureSize {
		return nil, fmt.Errorf("%w: the signature line is damaged", ErrManifest)
	}
	if !ed25519.Verify(pub, body, sig) {
		return nil, fmt.Errorf("%w: the signature does not verify with key %s (changed after signing, or signed by another key)", ErrManifest, KeyID(pub))
	}
	return body, nil
}
