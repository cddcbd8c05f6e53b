package identity

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/penstock/penstock/internal/authz"
)

// ErrDeleting means the tenant, environment or application is being deleted: it cannot be
// created again, or changed, until its deletion has finished.
var ErrDeleting = errors.New("being deleted")

// Deletion is the durable intent to delete a tenant, an environment or an application. It is
// written before anything of the scope is touched and removed when nothing of it is left;
// while it exists the scope and everything under it are invisible (not listed, not found) and
// unusable (API keys scoped inside it do not authenticate), on every process.
type Deletion struct {
	Scope   authz.Scope `json:"scope"`
	Actor   string      `json:"actor"`
	Started time.Time   `json:"started"`
	// Audited is set once the deletion's audit event is written, so a resumed deletion does
	// not write it twice.
	Audited bool `json:"audited,omitempty"`
	// Reason says why, for the audit event ("inactive since ...": the retention run).
	Reason string `json:"reason,omitempty"`
}

func deletionKey(sc authz.Scope) string {
	k := "deleting." + sc.Tenant
	if sc.Environment != "" {
		k += "." + sc.Environment
		if sc.Application != "" {
			k += "." + sc.Application
		}
	}
	return k
}

// MarkDeletion records the intent to delete d.Scope, unless it is recorded already; it returns
// the intent as stored (the first one, when a deletion was already under way).
func (s *Store) MarkDeletion(ctx context.Context, d Deletion) (Deletion, error) {
	if d.Scope.Tenant == "" || d.Scope.Validate() != nil {
		return Deletion{}, invalidf("scope %q: a tenant, environment or application", d.Scope.String())
	}
	if cur, ok := s.Deletion(d.Scope); ok {
		return cur, nil
	}
	d.Started = s.cfg.Now().UTC()
	if err := s.put(ctx, deletionKey(d.Scope), d, 0); err != nil && !errors.Is(err, ErrExists) {
		return Deletion{}, err
	}
	cur, _ := s.Deletion(d.Scope)
	return cur, nil
}

// Deletion returns the intent recorded for exactly sc.
func (s *Store) Deletion(sc authz.Scope) (Deletion, bool) {
	var d Deletion
	_, ok := s.get(deletionKey(sc), &d)
	return d, ok
}

// SetAudited notes that a deletion's audit event is written.
func (s *Store) SetAudited(ctx context.Context, sc authz.Scope) error {
	var d Deletion
	rev, ok := s.get(deletionKey(sc), &d)
	if !ok {
		return ErrNotFound
	}
	d.Audited = true
	return s.put(ctx, deletionKey(sc), d, rev)
}

// Deletions lists the deletions under way, outermost scopes first.
func (s *Store) Deletions() []Deletion {
	out := list[Deletion](s, "deleting.")
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i].Scope, out[j].Scope
		if la, lb := depth(a), depth(b); la != lb {
			return la < lb
		}
		return a.String() < b.String()
	})
	return out
}

func depth(sc authz.Scope) int {
	switch {
	case sc.Application != "":
		return 3
	case sc.Environment != "":
		return 2
	}
	return 1
}

// Unmark removes a finished deletion's intent: the name can be used again.
func (s *Store) Unmark(ctx context.Context, sc authz.Scope) error {
	return s.del(ctx, deletionKey(sc))
}

// Deleting reports whether sc, or a scope above it, is being deleted.
func (s *Store) Deleting(sc authz.Scope) bool { return s.hidden(sc) }

// Exists reports whether the tenant, environment or application sc names exists (and is not
// being deleted); the platform always does.
func (s *Store) Exists(sc authz.Scope) bool {
	if sc.Tenant == "" {
		return true
	}
	t, ok := s.Tenant(sc.Tenant)
	switch {
	case !ok:
		return false
	case sc.Environment == "":
		return true
	case !slices.Contains(t.Environments, sc.Environment):
		return false
	case sc.Application == "":
		return true
	}
	_, ok = s.App(sc.Tenant, sc.Environment, sc.Application)
	return ok
}

// hidden reports whether sc, or a scope above it, is being deleted.
func (s *Store) hidden(sc authz.Scope) bool {
	if sc.Tenant == "" {
		return false
	}
	keys := []string{deletionKey(authz.Scope{Tenant: sc.Tenant})}
	if sc.Environment != "" {
		keys = append(keys, deletionKey(authz.Scope{Tenant: sc.Tenant, Environment: sc.Environment}))
		if sc.Application != "" {
			keys = append(keys, deletionKey(sc))
		}
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, k := range keys {
		if e, ok := s.view[k]; ok && e.Operation() == jetstream.KeyValuePut {
			return true
		}
	}
	return false
}

// storedTenant reads a tenant's record whether or not it is being deleted.
func (s *Store) storedTenant(name string) (Tenant, bool) {
	s.mu.RLock()
	t, ok := s.tenants["tenant."+name]
	s.mu.RUnlock()
	// A copy the caller may change: the decoded record's lists are shared otherwise.
	t.Environments, t.AllowList, t.Egress = slices.Clone(t.Environments), slices.Clone(t.AllowList), slices.Clone(t.Egress)
	return t, ok
}

// visible is t as the rest of Penstock sees it: without environments being deleted.
func (s *Store) visible(t Tenant) Tenant {
	t.Environments = slices.DeleteFunc(slices.Clone(t.Environments), func(e string) bool {
		return s.hidden(authz.Scope{Tenant: t.Name, Environment: e})
	})
	return t
}

// StoredApps lists every stored application inside sc (a tenant or an environment), those
// being deleted included: the lifecycle must find all it removes.
func (s *Store) StoredApps(sc authz.Scope) []Application {
	prefix := "app." + sc.Tenant + "."
	if sc.Environment != "" {
		prefix += sc.Environment + "."
	}
	var out []Application
	for _, a := range list[Application](s, prefix) {
		if sc.Contains(authz.Scope{Tenant: a.Tenant, Environment: a.Environment, Application: a.Name}) {
			out = append(out, a)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].Environment+"/"+out[i].Name < out[j].Environment+"/"+out[j].Name
	})
	return out
}

// StoredEnvironments lists a tenant's environments, those being deleted included.
func (s *Store) StoredEnvironments(tenant string) []string {
	t, _ := s.storedTenant(tenant)
	return t.Environments
}

// StoredKeys lists the API keys scoped inside sc (service keys of its applications included).
func (s *Store) StoredKeys(sc authz.Scope) []APIKey {
	var out []APIKey
	for _, k := range list[APIKey](s, "apikey.") {
		if sc.Contains(k.Scope) {
			out = append(out, k)
		}
	}
	return out
}

// RemoveScope deletes the control-plane records of sc: role bindings and API keys scoped inside
// it, its applications, and the scope's own record (the tenant, or the environment's entry in
// its tenant). It does not touch keys, queues or pipelines (the lifecycle does, before), and it
// can be run again after a crash: what is gone already is skipped.
func (s *Store) RemoveScope(ctx context.Context, sc authz.Scope) error {
	if sc.Tenant == "" || sc.Validate() != nil {
		return invalidf("scope %q: a tenant, environment or application", sc.String())
	}
	for _, b := range list[RoleBinding](s, "binding.") {
		if sc.Contains(b.Scope) {
			if err := s.del(ctx, "binding."+b.ID); err != nil {
				return err
			}
		}
	}
	for _, k := range s.StoredKeys(sc) {
		if err := s.del(ctx, "apikey."+k.ID); err != nil {
			return err
		}
	}
	// Directory mappings made through the API into the scope go with it: a new tenant of the
	// same name starts with none (those of the configuration are the operator's, by name).
	for _, m := range list[DirectoryMapping](s, "dirmap.") {
		if sc.Contains(m.Scope) {
			if err := s.del(ctx, "dirmap."+m.ID); err != nil {
				return err
			}
		}
	}
	if sc.Application != "" {
		return s.delIfPresent(ctx, appKey(sc.Tenant, sc.Environment, sc.Application))
	}
	for _, a := range s.StoredApps(sc) {
		if err := s.del(ctx, appKey(a.Tenant, a.Environment, a.Name)); err != nil {
			return err
		}
	}
	if sc.Environment == "" {
		return s.delIfPresent(ctx, "tenant."+sc.Tenant)
	}
	for range 5 {
		var t Tenant
		rev, ok := s.get("tenant."+sc.Tenant, &t)
		if !ok || !slices.Contains(t.Environments, sc.Environment) {
			return nil
		}
		t.Environments = slices.DeleteFunc(t.Environments, func(e string) bool { return e == sc.Environment })
		if err := s.put(ctx, "tenant."+sc.Tenant, t, rev); err == nil {
			return nil
		}
		if e, err := s.kv.Get(ctx, "tenant."+sc.Tenant); err == nil {
			s.apply(e)
		}
	}
	return fmt.Errorf("identity: tenant %s changed concurrently; try again", sc.Tenant)
}

func (s *Store) delIfPresent(ctx context.Context, key string) error {
	s.mu.RLock()
	e, ok := s.view[key]
	s.mu.RUnlock()
	if !ok || e.Operation() != jetstream.KeyValuePut {
		return nil
	}
	return s.del(ctx, key)
}

// Stored reports whether the record of exactly sc (a tenant, an environment or an application)
// is stored, being deleted or not.
func (s *Store) Stored(sc authz.Scope) bool {
	t, ok := s.storedTenant(sc.Tenant)
	switch {
	case !ok:
		return false
	case sc.Application != "":
		var a Application
		_, ok := s.get(appKey(sc.Tenant, sc.Environment, sc.Application), &a)
		return ok
	case sc.Environment != "":
		return slices.Contains(t.Environments, sc.Environment)
	}
	return true
}
