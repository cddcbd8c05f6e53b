package identity

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/penstock/penstock/internal/authz"
	"github.com/penstock/penstock/internal/directory"
	"github.com/penstock/penstock/internal/redact"
)

// syncedKey records when every directory user was last re-checked.
const syncedKey = "directory.synced"

// ErrDirectoryUnavailable means the directory could not be asked; the login may be tried
// again. It says nothing of the user.
var ErrDirectoryUnavailable = errors.New("the directory cannot be reached; try again later")

// Authenticator checks a directory user's password, and finds a user without one.
type Authenticator interface {
	Authenticate(ctx context.Context, name string, password redact.Secret) (directory.Entry, error)
	Lookup(ctx context.Context, name string) (directory.Entry, error)
}

// Refresher reads an OpenID Connect user's claims again with its refresh token.
type Refresher interface {
	Refresh(ctx context.Context, refresh string) (directory.Claims, string, error)
}

// DirectoryChange is what a re-check changed for one user.
type DirectoryChange struct {
	User          string
	Before, After []authz.Binding
	Gone          bool   // gone from the directory: withheld (Error says why), or forgotten when another entry has the name
	Error         string // the user could not be read: its roles are withheld
}

// directoryFreshLocked reports whether a directory user's groups still hold; s.mu is held.
func (s *Store) directoryFreshLocked(d *DirectoryUser) bool {
	if d.Gone || d.Error != "" {
		return false
	}
	last := d.Checked
	// A round of re-checks covers every user it can read: not an OpenID Connect user without
	// a refresh token, whose roles hold from its login only.
	if s.synced.After(last) && (d.Source != "oidc" || len(d.SealedRefresh) > 0) {
		last = s.synced
	}
	return s.cfg.Now().Sub(last) <= s.cfg.DirectoryValidFor
}

// directoryBindingsLocked maps normalized group DNs to bindings; s.mu is held. It runs on
// every request of a directory user: a lookup per group in the index of the mappings.
func (s *Store) directoryBindingsLocked(groups []string) []authz.Binding {
	var out []authz.Binding
	for _, g := range groups {
		for _, b := range s.groupIndex[g] {
			if !slices.Contains(out, b) {
				out = append(out, b)
			}
		}
	}
	return out
}

// reindexGroupsLocked rebuilds the index of mappings by group, in the order DirectoryMappings
// lists them; s.mu is held for writing.
func (s *Store) reindexGroupsLocked() {
	idx := map[string][]authz.Binding{}
	add := func(m DirectoryMapping) {
		b := authz.Binding{Role: m.Role, Scope: m.Scope}
		if !slices.Contains(idx[m.Group], b) {
			idx[m.Group] = append(idx[m.Group], b)
		}
	}
	for _, m := range s.cfgMaps {
		add(m)
	}
	api := make([]DirectoryMapping, 0, len(s.dirmaps))
	for _, m := range s.dirmaps {
		api = append(api, m)
	}
	slices.SortFunc(api, func(a, b DirectoryMapping) int {
		if c := a.Created.Compare(b.Created); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	for _, m := range api {
		add(m)
	}
	s.groupIndex = idx
}

// DirectoryRoles is what a member of groups (DNs) gets through the mappings.
func (s *Store) DirectoryRoles(groups []string) []authz.Binding {
	norm := normalizeAll(groups)
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.directoryBindingsLocked(norm)
}

func normalizeAll(dns []string) []string {
	out := make([]string, 0, len(dns))
	for _, g := range dns {
		out = append(out, directory.NormalizeDN(g))
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// BreakGlass reports whether a local user may log in with a password while a directory is
// configured.
func (s *Store) BreakGlass(name string) bool {
	return s.cfg.Directory && slices.Contains(s.cfg.BreakGlass, name)
}

// LoginDirectory logs a directory user in: the password is checked by the directory, the
// user's record (made at its first login) takes its DN and groups, and the second factor is
// asked as for a local user, unless the directory says it checked one. Wrong password,
// unknown user, a name no user can have and a local user's name all give ErrBadCredentials.
func (s *Store) LoginDirectory(ctx context.Context, lock *Lockout, dir Authenticator, name string, password redact.Secret, code, source string) (redact.Secret, Session, error) {
	name = strings.ToLower(name)
	keys := []string{"user:" + name, "ip:" + source}
	if locked, _ := lock.Locked(keys...); locked {
		return redact.Secret{}, Session{}, ErrLocked
	}
	if CheckUserName(name) != nil {
		// Not a name Penstock can hold ("bob ", full-width letters, a filter): the directory
		// might still match an entry with it, so it never sees it; the same work is done for
		// a name that matches nothing.
		_, _ = dir.Authenticate(ctx, "", password)
		lock.Fail(keys...)
		return redact.Secret{}, Session{}, ErrBadCredentials
	}
	e, err := dir.Authenticate(ctx, name, password)
	switch {
	case errors.Is(err, directory.ErrUnavailable), errors.Is(err, directory.ErrUnreadable):
		// The directory's trouble, never a wrong password: no lockout, and the cause logged.
		return redact.Secret{}, Session{}, fmt.Errorf("%w: %v", ErrDirectoryUnavailable, err)
	case err != nil:
		if errors.Is(err, directory.ErrAmbiguous) {
			s.log.Warn("directory login refused", "user", name, "error", err)
		}
		lock.Fail(keys...)
		return redact.Secret{}, Session{}, ErrBadCredentials
	}
	u, exists := s.User(name)
	if exists && u.Directory != nil && u.Directory.Source == "oidc" {
		// An OpenID Connect user of this name: not the LDAP entry's to take over.
		lock.Fail(keys...)
		s.log.Warn("directory login refused: an OpenID Connect user has this name", "user", name)
		return redact.Secret{}, Session{}, ErrBadCredentials
	}
	if exists && u.Directory != nil && u.Directory.EntryID != "" && u.Directory.EntryID != e.ID {
		// Another entry now has this name (the user left, a new one came): nothing of the
		// departed user's passes to it.
		s.log.Warn("directory user's entry changed: the old user's keys, grants and sessions are removed", "user", name)
		if err := s.ForgetDirectoryUser(ctx, name); err != nil {
			return redact.Secret{}, Session{}, err
		}
		u, exists = User{}, false
	}
	if exists && (u.Directory == nil || u.Disabled) {
		// A name Penstock cannot hold, a local user of the same name (a directory user
		// does not take its roles over), or a user disabled in Penstock.
		lock.Fail(keys...)
		if exists && u.Directory == nil {
			s.log.Warn("directory login refused: a local user has this name", "user", name)
		}
		return redact.Secret{}, Session{}, ErrBadCredentials
	}
	d := &DirectoryUser{Source: "ldap", DN: e.DN, EntryID: e.ID, Groups: normalizeAll(e.Groups), MFA: e.MFA, Checked: s.cfg.Now().UTC()}
	if !exists {
		u = User{ID: NewID("usr_"), Name: name, Created: s.cfg.Now().UTC(), Directory: d}
		if err := s.put(ctx, "user."+name, u, 0); err != nil && !errors.Is(err, ErrExists) {
			return redact.Secret{}, Session{}, err
		}
	}
	if u, err = s.updateUser(ctx, name, func(u *User) error {
		if u.Directory == nil {
			return ErrBadCredentials
		}
		u.Directory = d
		return nil
	}); err != nil {
		return redact.Secret{}, Session{}, err
	}
	// d.MFA is only ever set when the operator names the attribute (directory.ldap.mfa_attribute).
	mfa := d.MFA
	if err := s.secondFactor(ctx, lock, keys, u, code, &mfa); err != nil {
		return redact.Secret{}, Session{}, err
	}
	lock.Succeed("user:" + name)
	return s.newSession(ctx, name, mfa)
}

// DirectoryUsers lists the users who log in through the directory.
func (s *Store) DirectoryUsers() []User {
	var out []User
	for _, u := range s.Users() {
		if u.Directory != nil {
			out = append(out, u)
		}
	}
	return out
}

// RecheckDirectory reads every directory user's groups again. A user the directory no longer
// has (or whose name another entry now has) is forgotten: its sessions end, its API keys are
// revoked, its grants removed and its record deleted, so a later user of the same name starts
// with nothing. A user whose groups changed gets the new roles at once (on every node, through
// the store). A user that cannot be read (a group search the server refuses) has its roles
// withheld until it can. Once every user is read, the time is recorded: roles hold for
// Config.DirectoryValidFor from it. The directory being unreachable stops the round (nothing
// recorded, so the roles lapse if it lasts).
func (s *Store) RecheckDirectory(ctx context.Context, dir Authenticator, op Refresher) ([]DirectoryChange, error) {
	start := s.cfg.Now().UTC()
	var changes []DirectoryChange
	for _, u := range s.DirectoryUsers() {
		if u.Directory.Source == "oidc" {
			c, err := s.recheckOIDC(ctx, op, u, start)
			if err != nil {
				return changes, err
			}
			if c != nil {
				changes = append(changes, *c)
			}
			continue
		}
		if dir == nil {
			continue // no LDAP directory any more: the roles lapse with their freshness
		}
		e, err := dir.Lookup(ctx, u.Name)
		if errors.Is(err, directory.ErrUnavailable) {
			return changes, fmt.Errorf("%w: %v", ErrDirectoryUnavailable, err)
		}
		old := *u.Directory
		before := s.Principal("user:" + u.Name).Bindings
		if err == nil && old.EntryID != "" && e.ID != old.EntryID {
			// Another entry has the name now: the user left and someone new came.
			forgotten, err := s.forgetIfUnchanged(ctx, u.Name, old.EntryID, start)
			if err != nil {
				return changes, err
			}
			if forgotten {
				changes = append(changes, DirectoryChange{User: u.Name, Before: before, Gone: true})
			}
			continue
		}
		if errors.Is(err, directory.ErrNotFound) || errors.Is(err, directory.ErrAmbiguous) {
			// The directory has no such user (or two): everything it held is withheld and its
			// sessions end, but nothing is destroyed (a mistake in the directory or its ACLs
			// must not wipe users out); the same entry coming back gets it all back.
			if old.Gone {
				continue
			}
			if _, uerr := s.updateUser(ctx, u.Name, func(u *User) error {
				if u.Directory == nil || u.Directory.Checked.After(start) {
					return nil
				}
				d := *u.Directory
				d.Gone, d.Checked = true, start
				u.Directory = &d
				return nil
			}); uerr != nil {
				return changes, uerr
			}
			if uerr := s.EndSessions(ctx, u.Name); uerr != nil {
				return changes, uerr
			}
			changes = append(changes, DirectoryChange{User: u.Name, Before: before, Gone: true, Error: err.Error()})
			continue
		}
		next := DirectoryUser{Source: "ldap", DN: e.DN, EntryID: e.ID, Groups: normalizeAll(e.Groups), MFA: e.MFA}
		if err != nil {
			next = old
			next.Error = err.Error()
		}
		if old.DN == next.DN && old.EntryID == next.EntryID && old.MFA == next.MFA && old.Error == next.Error && old.Gone == next.Gone &&
			slices.Equal(old.Groups, next.Groups) {
			continue
		}
		if _, err := s.updateUser(ctx, u.Name, func(u *User) error {
			if u.Directory == nil || u.Directory.Checked.After(start) {
				// A login since this round began wrote a newer answer: keep it.
				return nil
			}
			next.Checked = start
			u.Directory = &next
			return nil
		}); err != nil {
			return changes, err
		}
		changes = append(changes, DirectoryChange{User: u.Name, Before: before, After: s.Principal("user:" + u.Name).Bindings, Error: next.Error})
	}
	var cur struct{ At time.Time }
	rev, _ := s.get(syncedKey, &cur)
	cur.At = start
	if err := s.put(ctx, syncedKey, cur, rev); err != nil && rev != 0 {
		// Another node recorded its round meanwhile: that is as good.
		if _, ok := s.get(syncedKey, &cur); !ok {
			return changes, err
		}
	} else if err != nil {
		return changes, err
	}
	return changes, nil
}

// recheckOIDC reads an OpenID Connect user's groups again with its refresh token. A user the
// issuer refuses is not forgotten (an issuer also refuses after a password change there): its
// roles are withheld until its next login.
func (s *Store) recheckOIDC(ctx context.Context, op Refresher, u User, start time.Time) (*DirectoryChange, error) {
	old := *u.Directory
	if op == nil || len(old.SealedRefresh) == 0 {
		return nil, nil // nothing to ask with: its roles hold from its login only
	}
	before := s.Principal("user:" + u.Name).Bindings
	refresh, err := s.keys.Unseal(ctx, platformScope, "oidc-refresh", u.Name, old.SealedRefresh)
	var c directory.Claims
	var next string
	if err == nil {
		c, next, err = op.Refresh(ctx, string(refresh))
		clear(refresh)
	}
	if errors.Is(err, directory.ErrUnavailable) {
		return nil, fmt.Errorf("%w: %v", ErrDirectoryUnavailable, err)
	}
	refused := errors.Is(err, directory.ErrNotFound) || errors.Is(err, directory.ErrInvalidCredentials) || err == nil && c.Subject != old.EntryID
	nd := old
	switch {
	case refused:
		// The issuer no longer honours the refresh token (the user removed or disabled
		// there, its sessions revoked): everything it holds is withheld and its sessions end
		// until it logs in again.
		nd.Error, nd.SealedRefresh, nd.Gone = "the OpenID provider refused the refresh token: the user must log in again", nil, true
	case err != nil:
		nd.Error = err.Error()
	default:
		sealed, serr := s.keys.Seal(ctx, platformScope, "oidc-refresh", u.Name, []byte(next))
		if serr != nil {
			return nil, serr
		}
		nd.Groups, nd.MFA, nd.Error, nd.SealedRefresh = normalizeAll(c.Groups), c.MFA, "", sealed
	}
	if _, err := s.updateUser(ctx, u.Name, func(u *User) error {
		if u.Directory == nil || u.Directory.Checked.After(start) {
			return nil
		}
		nd.Checked = start
		u.Directory = &nd
		return nil
	}); err != nil {
		return nil, err
	}
	if nd.Gone {
		if err := s.EndSessions(ctx, u.Name); err != nil {
			return nil, err
		}
		return &DirectoryChange{User: u.Name, Before: before, Gone: true, Error: nd.Error}, nil
	}
	if slices.Equal(old.Groups, nd.Groups) && old.MFA == nd.MFA && old.Error == nd.Error {
		return nil, nil // the same; only the refresh token turned over
	}
	return &DirectoryChange{User: u.Name, Before: before, After: s.Principal("user:" + u.Name).Bindings, Error: nd.Error}, nil
}

// LoginOIDC logs in a user the OpenID provider vouched for (its ID token checked): the user's
// record (made at its first login) takes its groups, and its refresh token, sealed, for the
// re-checks. The name comes from the configured claim; a name Penstock cannot hold, a local or
// LDAP user of that name, or another subject than the one the name was first seen with are
// refused. The session needs a TOTP code (mfa/verify) when the roles need a second factor,
// unless the ID token says one was used and the configuration trusts it.
func (s *Store) LoginOIDC(ctx context.Context, c directory.Claims, refresh string, ldap Authenticator) (redact.Secret, Session, error) {
	name := c.Name
	if CheckUserName(name) != nil || slices.Contains(s.cfg.BreakGlass, name) {
		s.log.Warn("OpenID Connect login refused: the username claim is not a Penstock user name, or names a break-glass user", "subject", c.Subject)
		return redact.Secret{}, Session{}, ErrBadCredentials
	}
	if _, exists := s.User(name); !exists && ldap != nil {
		// With an LDAP directory too, a name it has is its user's, even before that user's
		// first login: an OpenID provider user must not take it.
		_, err := ldap.Lookup(ctx, name)
		switch {
		case err == nil || errors.Is(err, directory.ErrAmbiguous):
			s.log.Warn("OpenID Connect login refused: the LDAP directory has a user of this name", "user", name, "subject", c.Subject)
			return redact.Secret{}, Session{}, ErrBadCredentials
		case !errors.Is(err, directory.ErrNotFound):
			return redact.Secret{}, Session{}, fmt.Errorf("%w: %v", ErrDirectoryUnavailable, err)
		}
	}
	u, exists := s.User(name)
	if exists && (u.Directory == nil || u.Directory.Source != "oidc" || u.Directory.EntryID != c.Subject || u.Disabled) {
		s.log.Warn("OpenID Connect login refused: another user has this name, or it is disabled", "user", name, "subject", c.Subject)
		return redact.Secret{}, Session{}, ErrBadCredentials
	}
	d := &DirectoryUser{Source: "oidc", DN: c.Subject, EntryID: c.Subject, Groups: normalizeAll(c.Groups), MFA: c.MFA, Checked: s.cfg.Now().UTC()}
	if refresh != "" {
		sealed, err := s.keys.Seal(ctx, platformScope, "oidc-refresh", name, []byte(refresh))
		if err != nil {
			return redact.Secret{}, Session{}, err
		}
		d.SealedRefresh = sealed
	}
	if !exists {
		u = User{ID: NewID("usr_"), Name: name, Created: s.cfg.Now().UTC(), Directory: d}
		if err := s.put(ctx, "user."+name, u, 0); err != nil && !errors.Is(err, ErrExists) {
			return redact.Secret{}, Session{}, err
		}
	}
	if _, err := s.updateUser(ctx, name, func(u *User) error {
		if u.Directory == nil || u.Directory.Source != "oidc" || u.Directory.EntryID != c.Subject {
			return ErrBadCredentials
		}
		u.Directory = d
		return nil
	}); err != nil {
		return redact.Secret{}, Session{}, err
	}
	return s.newSession(ctx, name, c.MFA)
}

// forgetIfUnchanged forgets a directory user whose record still names the entry a re-check
// judged gone and was not written by a login since the round began.
func (s *Store) forgetIfUnchanged(ctx context.Context, name, entryID string, start time.Time) (bool, error) {
	cur, ok := s.User(name)
	if !ok || cur.Directory == nil || cur.Directory.EntryID != entryID || cur.Directory.Checked.After(start) {
		return false, nil
	}
	return true, s.ForgetDirectoryUser(ctx, name)
}

// ForgetDirectoryUser removes what a directory user had in Penstock: its sessions end, the
// API keys it owns are revoked, its grants are removed, and its record is deleted.
func (s *Store) ForgetDirectoryUser(ctx context.Context, name string) error {
	if err := s.EndSessions(ctx, name); err != nil {
		return err
	}
	for _, k := range s.APIKeys("user:" + name) {
		if !k.Revoked {
			if err := s.RevokeAPIKey(ctx, k.ID); err != nil {
				return err
			}
		}
	}
	for _, b := range s.Bindings("user:" + name) {
		if err := s.Revoke(ctx, b.ID); err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
	}
	return s.delIfPresent(ctx, "user."+name)
}

// DirectoryMappings lists the mappings: the configuration's, then those made through the API.
func (s *Store) DirectoryMappings() []DirectoryMapping {
	out := slices.Clone(s.cfg.DirectoryMappings)
	api := list[DirectoryMapping](s, "dirmap.")
	slices.SortFunc(api, func(a, b DirectoryMapping) int { return a.Created.Compare(b.Created) })
	return append(out, api...)
}

// AddDirectoryMapping gives the members of group a role at scope.
func (s *Store) AddDirectoryMapping(ctx context.Context, group string, role authz.Role, scope authz.Scope) (DirectoryMapping, error) {
	group = strings.TrimSpace(group)
	if group == "" || len(group) > 1024 || strings.ContainsAny(group, "\x00\n\r") {
		return DirectoryMapping{}, invalidf("group: a group DN such as cn=ops,ou=groups,dc=example,dc=org (at most 1024 characters)")
	}
	if err := authz.CheckGrant(role, scope); err != nil {
		return DirectoryMapping{}, invalidf("%v", err)
	}
	if err := s.scopeExists(scope); err != nil {
		return DirectoryMapping{}, err
	}
	norm := directory.NormalizeDN(group)
	for _, m := range s.DirectoryMappings() {
		if directory.NormalizeDN(m.Group) == norm && m.Role == role && m.Scope == scope {
			return m, nil
		}
	}
	m := DirectoryMapping{ID: NewID("dm_"), Group: group, Role: role, Scope: scope, Source: "api", Created: s.cfg.Now().UTC()}
	return m, s.put(ctx, "dirmap."+m.ID, m, 0)
}

// RemoveDirectoryMapping removes a mapping made through the API.
func (s *Store) RemoveDirectoryMapping(ctx context.Context, id string) error {
	var m DirectoryMapping
	if _, ok := s.get("dirmap."+id, &m); !ok {
		for _, c := range s.cfg.DirectoryMappings {
			if c.ID == id {
				return invalidf("mapping %s is in the configuration (directory.mappings): change it there", id)
			}
		}
		return ErrNotFound
	}
	return s.del(ctx, "dirmap."+id)
}
