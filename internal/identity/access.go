package identity

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/penstock/penstock/internal/authz"
	"github.com/penstock/penstock/internal/keyring"
	"github.com/penstock/penstock/internal/redact"
)

// ErrUnauthenticated means a token or key is unknown, expired, revoked or malformed. It says
// no more than that.
var ErrUnauthenticated = errors.New("invalid or expired credentials")

func (s *Store) newSession(ctx context.Context, user string, mfa bool) (redact.Secret, Session, error) {
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return redact.Secret{}, Session{}, err
	}
	token := hex.EncodeToString(raw)
	now := s.cfg.Now().UTC()
	sess := Session{User: user, Created: now, LastSeen: now, Expires: now.Add(s.cfg.SessionMax), MFA: mfa}
	if err := s.put(ctx, "session."+HashToken(token), sess, 0); err != nil {
		return redact.Secret{}, Session{}, err
	}
	return redact.NewSecret(token), sess, nil
}

// Session looks a session token up in the local view. It refreshes the session's last-seen
// time at most once a minute, so an active session stays and an idle one expires.
func (s *Store) Session(ctx context.Context, token string) (Session, error) {
	key := "session." + HashToken(token)
	var sess Session
	rev, ok := s.get(key, &sess)
	if !ok {
		return Session{}, ErrUnauthenticated
	}
	now := s.cfg.Now()
	u, uok := s.User(sess.User)
	if !uok || u.Disabled || u.Directory != nil && u.Directory.Gone || now.After(sess.Expires) || now.Sub(sess.LastSeen) > s.cfg.SessionIdle {
		return Session{}, ErrUnauthenticated
	}
	if now.Sub(sess.LastSeen) > time.Minute {
		sess.LastSeen = now.UTC()
		_ = s.put(ctx, key, sess, rev) // losing this race to another request is fine
	}
	return sess, nil
}

// Logout ends one session.
func (s *Store) Logout(ctx context.Context, token string) error {
	return s.del(ctx, "session."+HashToken(token))
}

// EndSessions ends every session of a user (disable, password reset, admin revocation) but
// the one whose token is except (none if empty).
func (s *Store) EndSessions(ctx context.Context, user string, except ...string) error {
	keep := ""
	if len(except) > 0 && except[0] != "" {
		keep = "session." + HashToken(except[0])
	}
	s.mu.RLock()
	var keys []string
	for k, e := range s.view {
		var sess Session
		if strings.HasPrefix(k, "session.") && k != keep && e.Operation() == jetstream.KeyValuePut &&
			json.Unmarshal(e.Value(), &sess) == nil && sess.User == user {
			keys = append(keys, k)
		}
	}
	s.mu.RUnlock()
	for _, k := range keys {
		if err := s.del(ctx, k); err != nil {
			return err
		}
	}
	return nil
}

// Grant binds role at scope to subject ("user:<name>" or "apikey:<id>"), which must exist.
func (s *Store) Grant(ctx context.Context, subject string, role authz.Role, scope authz.Scope) (RoleBinding, error) {
	if err := authz.CheckGrant(role, scope); err != nil {
		return RoleBinding{}, invalidf("%v", err)
	}
	if err := s.scopeExists(scope); err != nil {
		return RoleBinding{}, err
	}
	kind, name, _ := strings.Cut(subject, ":")
	switch kind {
	case "user":
		if _, ok := s.User(name); !ok {
			return RoleBinding{}, ErrNotFound
		}
	default:
		return RoleBinding{}, invalidf("subject %q: must be user:<name>", subject)
	}
	for _, b := range s.Bindings(subject) {
		if b.Role == role && b.Scope == scope {
			return b, nil
		}
	}
	b := RoleBinding{ID: NewID("rb_"), Subject: subject, Role: role, Scope: scope, Created: s.cfg.Now().UTC()}
	return b, s.put(ctx, "binding."+b.ID, b, 0)
}

// Revoke removes a role binding.
func (s *Store) Revoke(ctx context.Context, id string) error {
	if _, ok := s.Binding(id); !ok {
		return ErrNotFound
	}
	return s.del(ctx, "binding."+id)
}

// Binding returns a role binding by id.
func (s *Store) Binding(id string) (RoleBinding, bool) {
	var b RoleBinding
	_, ok := s.get("binding."+id, &b)
	return b, ok
}

// Bindings lists role bindings, of one subject or (subject "") all.
func (s *Store) Bindings(subject string) []RoleBinding {
	var out []RoleBinding
	for _, b := range list[RoleBinding](s, "binding.") {
		if subject == "" || b.Subject == subject {
			out = append(out, b)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].Created.Before(out[j].Created) || out[i].Created.Equal(out[j].Created) && out[i].ID < out[j].ID
	})
	return out
}

func (s *Store) scopeExists(sc authz.Scope) error {
	if sc.Tenant == "" {
		return nil
	}
	t, ok := s.Tenant(sc.Tenant)
	if !ok {
		return ErrNotFound
	}
	if sc.Environment != "" {
		found := false
		for _, e := range t.Environments {
			found = found || e == sc.Environment
		}
		if !found {
			return ErrNotFound
		}
	}
	if sc.Application != "" {
		if _, ok := s.App(sc.Tenant, sc.Environment, sc.Application); !ok {
			return ErrNotFound
		}
	}
	return nil
}

// NewKey is a created API key: the key to show once and its stored form.
type NewKey struct {
	Key    redact.Secret
	Record APIKey
}

// CreateAPIKey makes a key for owner ("user:<name>", or "app:<t>/<e>/<a>" for a service key)
// with one role at one scope, an optional expiry and source CIDRs.
func (s *Store) CreateAPIKey(ctx context.Context, owner, name string, role authz.Role, scope authz.Scope, expires time.Time, cidrs []string) (NewKey, error) {
	if !authz.ValidRole(role) || role == authz.PlatformAdmin {
		return NewKey{}, invalidf("role %q: one of the tenant roles", role)
	}
	if scope == authz.Platform {
		return NewKey{}, invalidf("an API key is scoped to a tenant, environment or application")
	}
	if err := s.scopeExists(scope); err != nil {
		return NewKey{}, err
	}
	for i, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return NewKey{}, invalidf("cidrs[%d]: %q is not a CIDR", i, c)
		}
		cidrs[i] = p.Masked().String()
	}
	if !expires.IsZero() && !expires.After(s.cfg.Now()) {
		return NewKey{}, invalidf("expires: must be in the future")
	}
	key, id, digest, err := NewAPIKey()
	if err != nil {
		return NewKey{}, err
	}
	signing := SigningKey(key)
	sealed, err := s.keys.Seal(ctx, keyring.Scope{Tenant: scope.Tenant}, "apikey-hmac", id, signing[:])
	if err != nil {
		return NewKey{}, err
	}
	rec := APIKey{ID: id, Owner: owner, Name: name, Digest: hex.EncodeToString(digest[:]), SealedHMAC: sealed,
		Role: role, Scope: scope, CIDRs: cidrs, Expires: expires.UTC(), Created: s.cfg.Now().UTC()}
	if err := s.put(ctx, "apikey."+id, rec, 0); err != nil {
		return NewKey{}, err
	}
	return NewKey{Key: key, Record: rec}, nil
}

// SigningKey is the HMAC key of signed requests made with an API key: derived from the key's
// secret, so the client computes it, and stored only sealed by the keyring.
func SigningKey(key redact.Secret) [32]byte {
	m := hmac.New(sha256.New, []byte(key.Reveal()))
	m.Write([]byte("penstock request signing v1"))
	var out [32]byte
	copy(out[:], m.Sum(nil))
	return out
}

// APIKey returns a key's record.
func (s *Store) APIKey(id string) (APIKey, bool) {
	s.mu.RLock()
	k, ok := s.apiKeys[id]
	s.mu.RUnlock()
	return k, ok
}

// APIKeys lists keys, of one owner or (owner "") all, newest first.
func (s *Store) APIKeys(owner string) []APIKey {
	var out []APIKey
	for _, k := range list[APIKey](s, "apikey.") {
		if owner == "" || k.Owner == owner {
			out = append(out, k)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.After(out[j].Created) })
	return out
}

// RevokeAPIKey revokes a key everywhere.
func (s *Store) RevokeAPIKey(ctx context.Context, id string) error {
	for range 5 {
		var k APIKey
		rev, ok := s.get("apikey."+id, &k)
		if !ok {
			return ErrNotFound
		}
		k.Revoked = true
		if err := s.put(ctx, "apikey."+id, k, rev); err == nil {
			return nil
		}
		if e, err := s.kv.Get(ctx, "apikey."+id); err == nil {
			s.apply(e) // refresh the view, then try again
		}
	}
	return errors.New("identity: key changed concurrently; try again")
}

// VerifyAPIKey checks a presented key against the local view: format, digest, revocation,
// expiry and source CIDRs. It costs a SHA-256 and a map lookup, no argon2.
func (s *Store) VerifyAPIKey(presented string, source netip.Addr) (APIKey, error) {
	id, digest, err := ParseAPIKey(presented)
	if err != nil {
		return APIKey{}, ErrUnauthenticated
	}
	return s.checkKey(id, &digest, source)
}

// StillValid reports whether a key that was verified earlier may still be used from source:
// not revoked or expired, and its owner still holds its role.
func (s *Store) StillValid(id string, source netip.Addr) (APIKey, error) {
	return s.checkKey(id, nil, source)
}

// checkKey validates key id (and, if digest is given, its secret's digest) for use now.
func (s *Store) checkKey(id string, digest *[32]byte, source netip.Addr) (APIKey, error) {
	k, ok := s.APIKey(id)
	if !ok || k.Revoked || !k.Expires.IsZero() && s.cfg.Now().After(k.Expires) || s.hidden(k.Scope) {
		return APIKey{}, ErrUnauthenticated
	}
	if digest != nil {
		var want [32]byte
		if n, err := hex.Decode(want[:], []byte(k.Digest)); err != nil || n != 32 || !DigestEqual(want, *digest) {
			return APIKey{}, ErrUnauthenticated
		}
	}
	if !AllowedFrom(k.CIDRs, source) || !s.ownerStillHolds(k) {
		return APIKey{}, ErrUnauthenticated
	}
	return k, nil
}

// ownerStillHolds reports whether the authority behind a key is still there: a user's key
// works only while the user is enabled, has no pending password change, and still holds the
// key's role at its scope; a service key only while its application exists.
func (s *Store) ownerStillHolds(k APIKey) bool {
	kind, name, _ := strings.Cut(k.Owner, ":")
	switch kind {
	case "user":
		u, ok := s.User(name)
		return ok && !u.Disabled && !u.MustChange && authz.Grants(s.Principal(k.Owner).Bindings, k.Role, k.Scope)
	case "app":
		sc, err := authz.ParseScope(name)
		if err != nil || sc.Application == "" {
			return false
		}
		_, ok := s.App(sc.Tenant, sc.Environment, sc.Application)
		return ok
	}
	return false
}

// KeyForSignature returns a key's record and its signing key, for verifying a signed request.
func (s *Store) KeyForSignature(ctx context.Context, id string, source netip.Addr) (APIKey, [32]byte, error) {
	k, err := s.checkKey(id, nil, source)
	if err != nil {
		return APIKey{}, [32]byte{}, err
	}
	raw, err := s.keys.Unseal(ctx, keyring.Scope{Tenant: k.Scope.Tenant}, "apikey-hmac", id, k.SealedHMAC)
	if err != nil || len(raw) != 32 {
		return APIKey{}, [32]byte{}, ErrUnauthenticated
	}
	return k, [32]byte(raw), nil
}

// KeyPrincipal is an API key's principal: its one role at its one scope.
func KeyPrincipal(k APIKey) authz.Principal {
	return authz.Principal{Kind: "apikey", Name: k.ID, Bindings: []authz.Binding{{Role: k.Role, Scope: k.Scope}}}
}

// TouchAPIKey records a key's last use, at most once a minute.
func (s *Store) TouchAPIKey(ctx context.Context, id string) {
	// Every request with a key passes here: decided from the decoded keys while the last
	// use is recent, without parsing the stored record.
	s.mu.RLock()
	known, ok := s.apiKeys[id]
	s.mu.RUnlock()
	if ok && s.cfg.Now().Sub(known.LastUsed) < time.Minute {
		return
	}
	var k APIKey
	rev, ok := s.get("apikey."+id, &k)
	if !ok || s.cfg.Now().Sub(k.LastUsed) < time.Minute {
		return
	}
	k.LastUsed = s.cfg.Now().UTC()
	_ = s.put(ctx, "apikey."+id, k, rev)
}

// MarkSessionMFA records that a session's user passed a second factor (after enrolling).
func (s *Store) MarkSessionMFA(ctx context.Context, token string) error {
	if token == "" {
		return nil
	}
	key := "session." + HashToken(token)
	var sess Session
	rev, ok := s.get(key, &sess)
	if !ok {
		return ErrUnauthenticated
	}
	sess.MFA = true
	return s.put(ctx, key, sess, rev)
}

// Member reports whether subject has a role anywhere in tenant.
func (s *Store) Member(subject, tenant string) bool {
	for _, b := range s.Principal(subject).Bindings {
		if b.Scope.Tenant == tenant {
			return true
		}
	}
	return false
}
