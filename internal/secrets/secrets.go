// Package secrets owns named secrets per application: connector credentials, sealed with the
// application's data key. Values go in and, inside the process, come out as redact.Secret;
// nothing in this package returns a value to a client, logs one, or stores one in the clear.
package secrets

import (
	"context"
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
	Name string `json:"name"`
	// Revision increases with every change of any secret; a secret's revision changes when it
	// is written again.
	Revision   uint64    `json:"revision"`
	Updated    time.Time `json:"updated"`
	KeyVersion int       `json:"key_version" doc:"Version of the application's data key that sealed it"`
}

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

// Put stores a secret, replacing any previous value.
func (s *Store) Put(ctx context.Context, app keyring.Scope, name string, value redact.Secret) (Meta, error) {
	if err := checkApp(app); err != nil {
		return Meta{}, err
	}
	if value.IsZero() || len(value.Reveal()) > MaxValueBytes {
		return Meta{}, fmt.Errorf("%w: value: must be 1 to %d bytes", keyring.ErrInvalid, MaxValueBytes)
	}
	if _, err := s.sealed.Put(ctx, app, name, []byte(value.Reveal())); err != nil {
		return Meta{}, err
	}
	_, e, err := s.sealed.Get(ctx, app, name)
	if err != nil {
		return Meta{}, err
	}
	return meta(e), nil
}

// Get returns a secret for use inside the process (a connector's credentials).
func (s *Store) Get(ctx context.Context, app keyring.Scope, name string) (redact.Secret, Meta, error) {
	if err := checkApp(app); err != nil {
		return redact.Secret{}, Meta{}, err
	}
	v, e, err := s.sealed.Get(ctx, app, name)
	if err != nil {
		return redact.Secret{}, Meta{}, err
	}
	return redact.NewSecret(string(v)), meta(e), nil
}

// Delete removes a secret.
func (s *Store) Delete(ctx context.Context, app keyring.Scope, name string) error {
	if err := checkApp(app); err != nil {
		return err
	}
	return s.sealed.Delete(ctx, app, name)
}

// List describes the application's secrets, sorted by name.
func (s *Store) List(ctx context.Context, app keyring.Scope) ([]Meta, error) {
	if err := checkApp(app); err != nil {
		return nil, err
	}
	entries, err := s.sealed.List(ctx, app)
	if err != nil {
		return nil, err
	}
	out := make([]Meta, len(entries))
	for i, e := range entries {
		out[i] = meta(e)
	}
	return out, nil
}

func meta(e keyring.Entry) Meta {
	return Meta{Name: e.ID, Revision: e.Revision, Updated: e.Updated.UTC(), KeyVersion: e.KeyVersion}
}
