// Package secrets owns named secrets per application: connector credentials, sealed with the
// application's data key. Values go in and, inside the process, come out as redact.Secret;
// nothing in this package returns a value to a client, logs one, or stores one in the clear.
package secrets

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/penstock/penstock/internal/keyring"
	"github.com/penstock/penstock/internal/redact"
)

// Bucket is the platform-account KV bucket secrets live in.
const Bucket = "penstock_secrets"

// MaxValueBytes bounds one secret's value.
const MaxValueBytes = 64 << 10

// Store keeps secrets.
type Store struct{ sealed *keyring.Sealed }

// Meta describes a secret without its value.
type Meta struct {
	Name       string    `json:"name"`
	Revision   uint64    `json:"revision" doc:"1 for a new secret, one more at each put of the same name; a secret deleted and stored again starts at 1; 0 if the stored secret does not open (damaged storage, which penstock doctor names)"`
	Updated    time.Time `json:"updated"`
	KeyVersion int       `json:"key_version" doc:"Version of the application's data key that sealed it"`
}

// A stored secret is its revision and its value, sealed together so that neither changes
// without the other:
//
//	0xFF | revision (8 bytes, big-endian) | value
//
// Secrets stored before they had revisions of their own are the bare value. Every value came
// in as a JSON string, so as UTF-8, which never starts with 0xFF: those read as revision 1.
const (
	recordMark   = 0xFF
	recordHeader = 1 + 8
)

func record(rev uint64, value redact.Secret) []byte {
	b := make([]byte, recordHeader, recordHeader+len(value.Reveal()))
	b[0] = recordMark
	binary.BigEndian.PutUint64(b[1:], rev)
	return append(b, value.Reveal()...)
}

// parseRecord splits what record made; a record without the mark is a value stored before
// secrets had revisions.
func parseRecord(b []byte) (uint64, []byte) {
	if len(b) > recordHeader && b[0] == recordMark {
		return binary.BigEndian.Uint64(b[1:recordHeader]), b[recordHeader:]
	}
	return 1, b
}

// putAttempts bounds how often Put starts again after a concurrent put of the same name won:
// each lost attempt means another put succeeded.
const putAttempts = 32

// New opens the store.
func New(ctx context.Context, kr *keyring.Keyring) (*Store, error) {
	s, err := kr.Sealed(ctx, Bucket, "secret")
	if err != nil {
		return nil, fmt.Errorf("secrets: %w", err)
	}
	return &Store{sealed: s}, nil
}

func checkApp(app keyring.Scope) error {
	if err := app.Validate(); err != nil {
		return err
	}
	if app.Application == "" {
		return fmt.Errorf("%w: scope %q: secrets belong to an application (tenant/environment/application)", keyring.ErrInvalid, app.String())
	}
	return nil
}

// Put stores a secret, replacing any previous value, at the revision after the one it
// replaces (1 if there was none). Concurrent puts of one name each get their own revision:
// the write is conditional on the record read, and a put that loses reads again.
func (s *Store) Put(ctx context.Context, app keyring.Scope, name string, value redact.Secret) (Meta, error) {
	if err := checkApp(app); err != nil {
		return Meta{}, err
	}
	if value.IsZero() || len(value.Reveal()) > MaxValueBytes {
		return Meta{}, fmt.Errorf("%w: value: must be 1 to %d bytes", keyring.ErrInvalid, MaxValueBytes)
	}
	for range putAttempts {
		var rev, at uint64
		b, e, err := s.sealed.Get(ctx, app, name)
		switch {
		case errors.Is(err, keyring.ErrNotFound):
		case damaged(err):
			at = e.Revision // replaced by a new secret, since its revision cannot be read
		case err != nil:
			return Meta{}, err
		default:
			rev, _ = parseRecord(b)
			at = e.Revision
			clear(b)
		}
		rec := record(rev+1, value)
		e, err = s.sealed.Update(ctx, app, name, rec, at)
		clear(rec)
		if errors.Is(err, keyring.ErrConflict) {
			continue
		}
		if err != nil {
			return Meta{}, err
		}
		return meta(e, rev+1), nil
	}
	return Meta{}, fmt.Errorf("secret %s: %w", name, keyring.ErrConflict)
}

// Get returns a secret for use inside the process (a connector's credentials).
func (s *Store) Get(ctx context.Context, app keyring.Scope, name string) (redact.Secret, Meta, error) {
	if err := checkApp(app); err != nil {
		return redact.Secret{}, Meta{}, err
	}
	b, e, err := s.sealed.Get(ctx, app, name)
	if err != nil {
		return redact.Secret{}, Meta{}, err
	}
	rev, v := parseRecord(b)
	out := redact.NewSecret(string(v))
	clear(b)
	return out, meta(e, rev), nil
}

// Delete removes a secret.
func (s *Store) Delete(ctx context.Context, app keyring.Scope, name string) error {
	if err := checkApp(app); err != nil {
		return err
	}
	return s.sealed.Delete(ctx, app, name)
}

// List describes the application's secrets, sorted by name. A secret's revision is sealed
// with its value, so listing opens each one.
func (s *Store) List(ctx context.Context, app keyring.Scope) ([]Meta, error) {
	if err := checkApp(app); err != nil {
		return nil, err
	}
	entries, err := s.sealed.List(ctx, app)
	if err != nil {
		return nil, err
	}
	out := make([]Meta, 0, len(entries))
	for _, e := range entries {
		_, m, err := s.Get(ctx, app, e.ID)
		switch {
		case errors.Is(err, keyring.ErrNotFound):
			continue // deleted since the listing
		case damaged(err):
			m = meta(e, 0) // still listed, so that it can be put again or deleted
		case err != nil:
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

// damaged reports whether err means a stored secret is there but does not open.
func damaged(err error) bool {
	return errors.Is(err, keyring.ErrDecrypt) || errors.Is(err, keyring.ErrMalformed) || errors.Is(err, keyring.ErrUnknownKeyVersion)
}

func meta(e keyring.Entry, rev uint64) Meta {
	return Meta{Name: e.ID, Revision: rev, Updated: e.Updated.UTC(), KeyVersion: e.KeyVersion}
}
