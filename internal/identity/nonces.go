package identity

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/penstock/penstock/internal/authz"
	"github.com/penstock/penstock/internal/crashpoint"
	"github.com/penstock/penstock/internal/engine"
	"github.com/penstock/penstock/internal/redact"
	"github.com/penstock/penstock/internal/signing"
)

// Nonces remembers the nonces of signed requests in a KV bucket whose entries expire after
// 11 minutes (longer than the ±5 minute window a request date may have), shared by every
// Penstock process, so a request replayed to another node is refused too.
type Nonces struct{ kv jetstream.KeyValue }

// OpenNonces opens the bucket.
func OpenNonces(ctx context.Context, plat *engine.Account) (*Nonces, error) {
	kv, err := plat.KeyValue(ctx, jetstream.KeyValueConfig{Bucket: "penstock_nonces", History: 1, TTL: 11 * time.Minute,
		Description: "nonces of signed requests, kept past the allowed clock skew"})
	if err != nil {
		return nil, fmt.Errorf("nonces: %w", err)
	}
	return &Nonces{kv: kv}, nil
}

// Use records a nonce, failing with signing.ErrReplay if it was seen.
func (n *Nonces) Use(ctx context.Context, id, nonce string) error {
	_, err := n.kv.Create(ctx, id+"."+nonce, nil)
	if errors.Is(err, jetstream.ErrKeyExists) {
		return signing.ErrReplay
	}
	if err != nil {
		return fmt.Errorf("nonces: %w", err)
	}
	return nil
}

var _ signing.NonceStore = (*Nonces)(nil)

// Bootstrap creates the first platform administrator, "admin", with a generated password, if
// the platform has no users. It returns the password to show once (zero if nothing was done);
// it must be changed, and a second factor enrolled, at first login. With resume (a first start
// that stopped before it served, so its password was never used and maybe never shown), an
// administrator that start made gets its role, if the stop came before it, and a new password.
func (s *Store) Bootstrap(ctx context.Context, resume bool) (redact.Secret, error) {
	if u, ok := s.User("admin"); ok && resume && u.MustChange {
		if _, err := s.Grant(ctx, "user:admin", authz.PlatformAdmin, authz.Platform); err != nil {
			return redact.Secret{}, err
		}
		return s.ResetPassword(ctx, "admin")
	}
	if len(s.Users()) > 0 {
		return redact.Secret{}, nil
	}
	_, pw, err := s.CreateUser(ctx, "admin", "", redact.Secret{})
	if err != nil {
		if errors.Is(err, ErrExists) {
			return redact.Secret{}, nil // another node bootstrapped at the same moment
		}
		return redact.Secret{}, err
	}
	crashpoint.Hit("first-start/admin-created")
	if _, err := s.Grant(ctx, "user:admin", authz.PlatformAdmin, authz.Platform); err != nil {
		return redact.Secret{}, err
	}
	return pw, nil
}
