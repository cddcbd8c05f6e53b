package identity

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/penstock/penstock/internal/authz"
	"github.com/penstock/penstock/internal/directory"
	"github.com/penstock/penstock/internal/engine"
	"github.com/penstock/penstock/internal/keyring"
)

// Bucket holds the control plane: tenants, applications, users, role bindings, API keys and
// sessions, one JSON record per key, in the platform account.
const Bucket = "penstock_identity"

// Errors the API maps to stable codes.
var (
	ErrNotFound  = errors.New("not found")
	ErrExists    = errors.New("already exists")
	ErrInvalid   = errors.New("invalid")
	ErrForbidden = errors.New("forbidden")
)

// Store is the control plane. Writes go to the KV bucket; every process keeps an in-memory view
// that a KV watch keeps current, so lookups and authorization are local and a change made by
// any process (a revocation) reaches every other within the watch's delivery time.
type Store struct {
	kv   jetstream.KeyValue
	keys *keyring.Keyring
	log  *slog.Logger
	cfg  Config

	mu   sync.RWMutex
	view map[string]jetstream.KeyValueEntry // by KV key
	// apiKeys, bindings (by subject, then id) and users are decoded once, as they arrive:
	// they are on every request's path, which must not parse JSON or scan the whole view.
	apiKeys  map[string]APIKey
	bindings map[string]map[string]RoleBinding
	users    map[string]User
	// tenants and apps (by KV key) are decoded as they arrive too: every request with a key
	// looks its tenant and application up.
	tenants map[string]Tenant
	apps    map[string]Application
	// dirmaps are the directory mappings made through the API (by id); synced is when every
	// directory user was last re-checked.
	dirmaps map[string]DirectoryMapping
	synced  time.Time
	cfgMaps []DirectoryMapping // cfg.DirectoryMappings with their groups normalized
	// groupIndex holds every mapping's binding by normalized group (reindexGroupsLocked).
	groupIndex map[string][]authz.Binding
	// gone holds, for keys this process deleted, the last revision it knew: a put of that
	// revision or older that the watch delivers late must not bring the key back.
	gone map[string]uint64

	stop    context.CancelFunc
	watched chan struct{}

	dummyOnce sync.Once
	dummy     string
}

// Config holds identity settings.
type Config struct {
	Argon2 Argon2Params
	Policy PasswordPolicy
	// MFAForAll requires a second factor of every user, not just platform admins and owners.
	MFAForAll bool
	// SessionIdle and SessionMax bound a session's life without and with activity.
	SessionIdle, SessionMax time.Duration
	Now                     func() time.Time
	// Directory is set when users log in through a directory: local users then log in only
	// if named in BreakGlass.
	Directory  bool
	BreakGlass []string
	// DirectoryValidFor is how long a directory user's groups hold without a re-check;
	// DirectoryMappings are those of the configuration (the API adds more).
	DirectoryValidFor time.Duration
	DirectoryMappings []DirectoryMapping
}

// DefaultConfig: DefaultArgon2, DefaultPolicy, sessions idle 30 minutes, at most 12 hours.
func DefaultConfig() Config {
	return Config{Argon2: DefaultArgon2, Policy: DefaultPolicy, SessionIdle: 30 * time.Minute, SessionMax: 12 * time.Hour, Now: time.Now}
}

// Policy is what a new password must satisfy.
func (s *Store) Policy() PasswordPolicy { return s.cfg.Policy }

// Open opens the bucket and starts the watch that keeps the view current; it returns once the
// view holds everything stored.
func Open(ctx context.Context, plat *engine.Account, keys *keyring.Keyring, cfg Config, log *slog.Logger) (*Store, error) {
	kv, err := plat.KeyValue(ctx, jetstream.KeyValueConfig{Bucket: Bucket, History: 1,
		Description: "tenants, applications, users, role bindings, API keys, sessions"})
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	wctx, cancel := context.WithCancel(context.Background())
	w, err := kv.WatchAll(wctx)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("identity: watch: %w", err)
	}
	s := &Store{kv: kv, keys: keys, log: log, cfg: cfg, view: map[string]jetstream.KeyValueEntry{}, apiKeys: map[string]APIKey{},
		bindings: map[string]map[string]RoleBinding{}, users: map[string]User{}, gone: map[string]uint64{},
		tenants: map[string]Tenant{}, apps: map[string]Application{}, dirmaps: map[string]DirectoryMapping{},
		stop: cancel, watched: make(chan struct{})}
	for _, m := range cfg.DirectoryMappings {
		m.Group = directory.NormalizeDN(m.Group)
		s.cfgMaps = append(s.cfgMaps, m)
	}
	s.reindexGroupsLocked()
	s.dummyHash() // now, so the first login for a missing user costs what any other does
	ready := make(chan struct{})
	go s.follow(w, ready)
	select {
	case <-ready:
	case <-ctx.Done():
		s.Close()
		return nil, ctx.Err()
	}
	return s, nil
}

// follow applies the watch's entries to the view until the store closes.
func (s *Store) follow(w jetstream.KeyWatcher, ready chan struct{}) {
	defer close(s.watched)
	defer w.Stop()
	initial := true
	for e := range w.Updates() {
		if e == nil {
			if initial {
				initial = false
				close(ready)
			}
			continue
		}
		s.apply(e)
	}
}

// apply puts an entry in the view unless the view already has a newer revision of the key.
func (s *Store) apply(e jetstream.KeyValueEntry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	key := e.Key()
	if cur, ok := s.view[key]; ok && cur.Revision() >= e.Revision() {
		return
	}
	if rev, ok := s.gone[key]; ok && e.Revision() <= rev {
		return
	}
	// Deletes and purges stay in the view as markers, so an older put cannot bring a key back.
	s.view[key] = e
	live := e.Operation() == jetstream.KeyValuePut
	switch {
	case strings.HasPrefix(key, "apikey."):
		var k APIKey
		if live && json.Unmarshal(e.Value(), &k) == nil {
			s.apiKeys[k.ID] = k
		} else {
			delete(s.apiKeys, key[len("apikey."):])
		}
	case strings.HasPrefix(key, "tenant."):
		var t Tenant
		if live && json.Unmarshal(e.Value(), &t) == nil {
			s.tenants[key] = t
		} else {
			delete(s.tenants, key)
		}
	case strings.HasPrefix(key, "app."):
		var a Application
		if live && json.Unmarshal(e.Value(), &a) == nil {
			s.apps[key] = a
		} else {
			delete(s.apps, key)
		}
	case strings.HasPrefix(key, "user."):
		var u User
		if live && json.Unmarshal(e.Value(), &u) == nil {
			s.users[u.Name] = u
		} else {
			delete(s.users, key[len("user."):])
		}
	case strings.HasPrefix(key, "dirmap."):
		var m DirectoryMapping
		if live && json.Unmarshal(e.Value(), &m) == nil {
			m.Group = directory.NormalizeDN(m.Group)
			s.dirmaps[m.ID] = m
		} else {
			delete(s.dirmaps, key[len("dirmap."):])
		}
		s.reindexGroupsLocked()
	case key == syncedKey:
		var v struct{ At time.Time }
		if live && json.Unmarshal(e.Value(), &v) == nil {
			s.synced = v.At
		}
	case strings.HasPrefix(key, "binding."):
		s.unindexBindingLocked(key[len("binding."):])
		var b RoleBinding
		if live && json.Unmarshal(e.Value(), &b) == nil {
			if s.bindings[b.Subject] == nil {
				s.bindings[b.Subject] = map[string]RoleBinding{}
			}
			s.bindings[b.Subject][b.ID] = b
		}
	}
}

// unindexBindingLocked removes a binding from the subject index; s.mu must be held.
func (s *Store) unindexBindingLocked(id string) {
	for subj, m := range s.bindings {
		if _, ok := m[id]; ok {
			delete(m, id)
			if len(m) == 0 {
				delete(s.bindings, subj)
			}
			return
		}
	}
}

// Close stops the watch.
func (s *Store) Close() {
	s.stop()
	<-s.watched
}

// get decodes the view's record of key into v.
func (s *Store) get(key string, v any) (uint64, bool) {
	s.mu.RLock()
	e, ok := s.view[key]
	s.mu.RUnlock()
	if !ok || e.Operation() != jetstream.KeyValuePut {
		return 0, false
	}
	if json.Unmarshal(e.Value(), v) != nil {
		return 0, false
	}
	return e.Revision(), true
}

// list decodes every live record whose key starts with prefix.
func list[T any](s *Store, prefix string) []T {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []T
	for k, e := range s.view {
		if !strings.HasPrefix(k, prefix) || e.Operation() != jetstream.KeyValuePut {
			continue
		}
		var v T
		if json.Unmarshal(e.Value(), &v) == nil {
			out = append(out, v)
		}
	}
	return out
}

// put writes v at key: created if rev is 0, else updated from rev. The write is applied to the
// view at once, so the writer reads its own write.
func (s *Store) put(ctx context.Context, key string, v any, rev uint64) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	var newRev uint64
	if rev == 0 {
		newRev, err = s.kv.Create(ctx, key, b)
		if errors.Is(err, jetstream.ErrKeyExists) {
			return ErrExists
		}
	} else {
		newRev, err = s.kv.Update(ctx, key, b, rev)
	}
	if err != nil {
		return fmt.Errorf("identity: write %s: %w", strings.SplitN(key, ".", 2)[0], err)
	}
	if e, err := s.kv.GetRevision(ctx, key, newRev); err == nil {
		s.apply(e)
	}
	return nil
}

func (s *Store) del(ctx context.Context, key string) error {
	if err := s.kv.Purge(ctx, key); err != nil {
		return fmt.Errorf("identity: delete: %w", err)
	}
	// The purge marker reaches the view through the watch; drop the key now for this process,
	// and remember its revision so a late copy of the deleted value is not applied.
	s.mu.Lock()
	if cur, ok := s.view[key]; ok {
		s.gone[key] = cur.Revision()
	}
	delete(s.view, key)
	delete(s.tenants, key)
	delete(s.apps, key)
	switch {
	case strings.HasPrefix(key, "apikey."):
		delete(s.apiKeys, key[len("apikey."):])
	case strings.HasPrefix(key, "user."):
		delete(s.users, key[len("user."):])
	case strings.HasPrefix(key, "dirmap."):
		delete(s.dirmaps, key[len("dirmap."):])
		s.reindexGroupsLocked()
	case strings.HasPrefix(key, "binding."):
		s.unindexBindingLocked(key[len("binding."):])
	}
	s.mu.Unlock()
	return nil
}

// Principal collects a subject's ("user:alice", "apikey:<id>") role bindings: those granted
// in Penstock and, for a directory user, those its groups map to while the directory's answer
// is recent.
func (s *Store) Principal(subject string) authz.Principal {
	kind, name, _ := strings.Cut(subject, ":")
	p := authz.Principal{Kind: kind, Name: name}
	s.mu.RLock()
	for _, b := range s.bindings[subject] {
		p.Bindings = append(p.Bindings, authz.Binding{Role: b.Role, Scope: b.Scope})
	}
	if kind == "user" {
		if u, ok := s.users[name]; ok && u.Directory != nil && u.Directory.Gone {
			// Gone from the directory: nothing, not even what was granted in Penstock.
			p.Bindings = nil
		} else if ok && u.Directory != nil && s.directoryFreshLocked(u.Directory) {
			p.Bindings = append(p.Bindings, s.directoryBindingsLocked(u.Directory.Groups)...)
		}
	}
	s.mu.RUnlock()
	return p
}
