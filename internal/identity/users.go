package identity

import (
	"context"
	"errors"
	"net/mail"
	"sort"
	"strings"

	"github.com/penstock/penstock/internal/authz"
	"github.com/penstock/penstock/internal/keyring"
	"github.com/penstock/penstock/internal/redact"
)

// platformScope seals platform users' TOTP secrets. "platform" is a reserved tenant name.
var platformScope = keyring.Scope{Tenant: "platform"}

// Authentication failures. The API answers ErrBadCredentials the same way whether the user
// exists or not.
var (
	ErrBadCredentials = errors.New("invalid user name or password")
	ErrLocked         = errors.New("too many failed attempts; try again later")
	ErrMFARequired    = errors.New("a one-time code from the authenticator is required")
	ErrBadCode        = errors.New("invalid or already used one-time code")
)

// CreateUser creates a user. With an empty password one is generated and returned (once);
// either way the user must change it at first login.
func (s *Store) CreateUser(ctx context.Context, name, email string, password redact.Secret) (User, redact.Secret, error) {
	if err := checkName("user", name); err != nil {
		return User{}, redact.Secret{}, err
	}
	if email != "" {
		if a, err := mail.ParseAddress(email); err != nil || a.Address != email {
			return User{}, redact.Secret{}, invalidf("email %q is not an address such as alice@example.com", email)
		}
	}
	if password.IsZero() {
		var err error
		if password, err = GeneratePassword(); err != nil {
			return User{}, redact.Secret{}, err
		}
	} else if err := s.cfg.Policy.Check(password, name, email); err != nil {
		return User{}, redact.Secret{}, err
	}
	hash, err := HashPassword(password, s.cfg.Argon2)
	if err != nil {
		return User{}, redact.Secret{}, err
	}
	u := User{ID: NewID("usr_"), Name: name, Email: email, PasswordHash: hash, MustChange: true, Created: s.cfg.Now().UTC()}
	if err := s.put(ctx, "user."+name, u, 0); err != nil {
		return User{}, redact.Secret{}, err
	}
	return u, password, nil
}

// User returns a user.
func (s *Store) User(name string) (User, bool) {
	s.mu.RLock()
	u, ok := s.users[name]
	s.mu.RUnlock()
	return u, ok
}

// Users lists users by name.
func (s *Store) Users() []User {
	out := list[User](s, "user.")
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// updateUser applies f to the stored user, retrying on concurrent changes.
func (s *Store) updateUser(ctx context.Context, name string, f func(*User) error) (User, error) {
	for range 5 {
		var u User
		rev, ok := s.get("user."+name, &u)
		if !ok {
			return User{}, ErrNotFound
		}
		if err := f(&u); err != nil {
			return User{}, err
		}
		err := s.put(ctx, "user."+name, u, rev)
		if err == nil {
			return u, nil
		}
		if e, gerr := s.kv.Get(ctx, "user."+name); gerr == nil {
			s.apply(e) // refresh the view, then try again
			continue
		}
		return User{}, err
	}
	return User{}, errors.New("identity: user changed concurrently; try again")
}

// SetDisabled disables (or enables) a user and ends their sessions.
func (s *Store) SetDisabled(ctx context.Context, name string, disabled bool) error {
	if _, err := s.updateUser(ctx, name, func(u *User) error { u.Disabled = disabled; return nil }); err != nil {
		return err
	}
	return s.EndSessions(ctx, name)
}

// ResetPassword sets a generated password, returned once, that must be changed at first
// login, and ends the user's sessions.
func (s *Store) ResetPassword(ctx context.Context, name string) (redact.Secret, error) {
	pw, err := GeneratePassword()
	if err != nil {
		return redact.Secret{}, err
	}
	hash, err := HashPassword(pw, s.cfg.Argon2)
	if err != nil {
		return redact.Secret{}, err
	}
	if _, err := s.updateUser(ctx, name, func(u *User) error {
		if u.Directory != nil {
			return invalidf("user %s logs in through the directory, which holds its password", name)
		}
		u.PasswordHash, u.MustChange = hash, true
		return nil
	}); err != nil {
		return redact.Secret{}, err
	}
	return pw, s.EndSessions(ctx, name)
}

// ChangePassword replaces the password after checking the current one (under the lockout,
// so a stolen session cannot guess it) and the policy, and ends the user's other sessions.
func (s *Store) ChangePassword(ctx context.Context, lock *Lockout, name string, current, next redact.Secret, session string) error {
	u, ok := s.User(name)
	if ok && u.Directory != nil {
		return invalidf("user %s logs in through the directory: change the password there", name)
	}
	if !ok {
		return ErrNotFound
	}
	if locked, _ := lock.Locked("user:" + name); locked {
		return ErrLocked
	}
	if ok, _, err := VerifyPassword(current, u.PasswordHash, s.cfg.Argon2); err != nil || !ok {
		lock.Fail("user:" + name)
		return ErrBadCredentials
	}
	if current.Equal(next) {
		return &PolicyError{"reused", "must differ from the current one"}
	}
	if err := s.cfg.Policy.Check(next, u.Name, u.Email); err != nil {
		return err
	}
	hash, err := HashPassword(next, s.cfg.Argon2)
	if err != nil {
		return err
	}
	if _, err = s.updateUser(ctx, name, func(u *User) error { u.PasswordHash, u.MustChange = hash, false; return nil }); err != nil {
		return err
	}
	return s.EndSessions(ctx, name, session)
}

// Login checks a user's password and, if they have a confirmed second factor, the one-time or
// recovery code, under the per-user and per-source lockout. It returns a session token, shown
// once.
func (s *Store) Login(ctx context.Context, lock *Lockout, name string, password redact.Secret, code, source string) (redact.Secret, Session, error) {
	keys := []string{"user:" + name, "ip:" + source}
	if locked, _ := lock.Locked(keys...); locked {
		return redact.Secret{}, Session{}, ErrLocked
	}
	u, exists := s.User(name)
	if exists && (u.Directory != nil || s.cfg.Directory && !s.BreakGlass(name)) {
		// A directory user has no password here; with a directory configured, only the
		// break-glass users log in with one.
		exists = false
	}
	hash := s.dummyHash()
	if exists {
		hash = u.PasswordHash
	}
	ok, rehash, err := VerifyPassword(password, hash, s.cfg.Argon2)
	if err != nil || !ok || !exists || u.Disabled {
		lock.Fail(keys...)
		return redact.Secret{}, Session{}, ErrBadCredentials
	}
	mfa := false
	if err := s.secondFactor(ctx, lock, keys, u, code, &mfa); err != nil {
		return redact.Secret{}, Session{}, err
	}
	lock.Succeed("user:" + name)
	if rehash {
		if h, err := HashPassword(password, s.cfg.Argon2); err == nil {
			if _, err := s.updateUser(ctx, name, func(u *User) error { u.PasswordHash = h; return nil }); err != nil {
				s.log.Warn("upgrade password hash", "user", name, "error", err)
			}
		}
	}
	return s.newSession(ctx, name, mfa)
}

// secondFactor asks a user with a confirmed TOTP enrolment for its code, unless *mfa says one
// was already checked (by the directory); a good code sets *mfa.
func (s *Store) secondFactor(ctx context.Context, lock *Lockout, keys []string, u User, code string, mfa *bool) error {
	if *mfa || u.MFA == nil || !u.MFA.Confirmed {
		return nil
	}
	if code == "" {
		return ErrMFARequired
	}
	if err := s.checkCode(ctx, u.Name, code); err != nil {
		lock.Fail(keys...)
		return err
	}
	*mfa = true
	return nil
}

// checkCode accepts a TOTP code (once per step) or a recovery code (once).
func (s *Store) checkCode(ctx context.Context, name, code string) error {
	_, err := s.updateUser(ctx, name, func(u *User) error {
		if u.MFA == nil {
			return ErrBadCode
		}
		if strings.Contains(code, "-") {
			left, err := UseRecoveryCode(u.MFA.Recovery, code)
			if err != nil {
				return ErrBadCode
			}
			u.MFA.Recovery = left
			return nil
		}
		secret, err := s.keys.Unseal(ctx, platformScope, "totp", u.Name, u.MFA.SealedSecret)
		if err != nil {
			return err
		}
		step, err := VerifyTOTP(redact.NewSecret(string(secret)), code, s.cfg.Now(), u.MFA.LastStep)
		clear(secret)
		if err != nil {
			return ErrBadCode
		}
		u.MFA.LastStep = step
		return nil
	})
	return err
}

// EnrolMFA starts a TOTP enrolment (replacing an unconfirmed one); it takes effect once
// ConfirmMFA sees a valid code. A confirmed enrolment cannot be replaced this way.
func (s *Store) EnrolMFA(ctx context.Context, name string) (Enrolment, error) {
	e, err := EnrolTOTP(name)
	if err != nil {
		return Enrolment{}, err
	}
	sealed, err := s.keys.Seal(ctx, platformScope, "totp", name, []byte(e.Secret.Reveal()))
	if err != nil {
		return Enrolment{}, err
	}
	_, err = s.updateUser(ctx, name, func(u *User) error {
		if u.MFA != nil && u.MFA.Confirmed {
			return invalidf("a second factor is already enrolled")
		}
		u.MFA = &MFA{SealedSecret: sealed, Recovery: e.RecoveryHash}
		return nil
	})
	return e, err
}

// ConfirmMFA completes an enrolment with a first valid code, under the lockout.
func (s *Store) ConfirmMFA(ctx context.Context, lock *Lockout, name, code string) error {
	if locked, _ := lock.Locked("user:" + name); locked {
		return ErrLocked
	}
	if err := s.checkCode(ctx, name, code); err != nil {
		lock.Fail("user:" + name)
		return err
	}
	_, err := s.updateUser(ctx, name, func(u *User) error { u.MFA.Confirmed = true; return nil })
	return err
}

// MFARequired reports whether a user must have a second factor: platform admins and tenant
// owners always, everyone with Config.MFAForAll.
func (s *Store) MFARequired(name string) bool {
	return s.MFARequiredFor(s.Principal("user:" + name).Bindings)
}

// MFARequiredFor reports whether a user with these bindings must have a second factor.
func (s *Store) MFARequiredFor(bindings []authz.Binding) bool {
	if s.cfg.MFAForAll {
		return true
	}
	for _, b := range bindings {
		if b.Role == authz.PlatformAdmin || b.Role == authz.Owner {
			return true
		}
	}
	return false
}

// CheckUserName refuses a name no user can have.
func CheckUserName(name string) error { return checkName("user", name) }

// dummyHash is verified against when a user does not exist, so a login for a missing user
// costs what one for an existing user does and does not reveal that it is missing.
func (s *Store) dummyHash() string {
	s.dummyOnce.Do(func() {
		s.dummy, _ = HashPassword(redact.NewSecret("no such user, no such password"), s.cfg.Argon2)
	})
	return s.dummy
}
