// Package lifecycle owns the life of tenants, environments and applications: creating them,
// and deleting them with everything they hold (pipelines, native connections, queues and
// exchanges, keys, records) in an order that a crash at any step resumes instead of leaving
// part of it usable. Handlers and the retention purge call it; nothing else orchestrates a
// deletion. It never deletes anything outside the scope it was given.
package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/penstock/penstock/internal/audit"
	"github.com/penstock/penstock/internal/authz"
	"github.com/penstock/penstock/internal/crashpoint"
	"github.com/penstock/penstock/internal/engine"
	"github.com/penstock/penstock/internal/fabric"
	"github.com/penstock/penstock/internal/identity"
	"github.com/penstock/penstock/internal/keyring"
	"github.com/penstock/penstock/internal/pipeline"
)

// Auditor appends audit events.
type Auditor interface {
	Append(ctx context.Context, e audit.Event) (audit.Event, error)
}

// Options are the subsystems a lifecycle change reaches.
type Options struct {
	Identity  *identity.Store
	Keyring   *keyring.Keyring
	Fabric    *fabric.Service
	Pipelines *pipeline.Service
	// Engine closes native connections; nil (or an external engine) has none of ours.
	Engine *engine.Engine
	Audit  Auditor
	// FilesRoot holds one directory per tenant for file connectors ("" when they are off).
	FilesRoot string
	// OnDeleted is told of every scope deleted, once its deletion is complete (retention
	// forgets its activity and warnings); nil is nobody.
	OnDeleted func(authz.Scope)
	Logger    *slog.Logger
}

// Service creates and deletes tenants, environments and applications.
type Service struct {
	o Options
	// Lifecycle changes of one tenant run one at a time in this process: a creation never
	// runs in the middle of a deletion of the same name. Tenants do not wait for each other
	// (a deletion can wait up to pipelines.drain_timeout for a pipeline to stop).
	mu      sync.Mutex
	tenants map[string]*sync.Mutex
}

// lockTenant serializes the lifecycle changes of one tenant; it returns the unlock.
func (s *Service) lockTenant(tenant string) func() {
	s.mu.Lock()
	if s.tenants == nil {
		s.tenants = map[string]*sync.Mutex{}
	}
	m := s.tenants[tenant]
	if m == nil {
		m = &sync.Mutex{}
		s.tenants[tenant] = m
	}
	s.mu.Unlock()
	m.Lock()
	return m.Unlock
}

// New returns the lifecycle service. Call Resume before serving.
func New(o Options) *Service {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return &Service{o: o}
}

func keyScope(sc authz.Scope) keyring.Scope {
	return keyring.Scope{Tenant: sc.Tenant, Environment: sc.Environment, Application: sc.Application}
}

// CreateTenant creates a tenant with the default environments. A name that belonged to a
// deleted tenant gets fresh keys and nothing of the old tenant.
func (s *Service) CreateTenant(ctx context.Context, name string) (identity.Tenant, error) {
	if err := identity.CheckTenantName(name); err != nil {
		return identity.Tenant{}, err
	}
	defer s.lockTenant(name)()
	if err := s.free(ctx, authz.Scope{Tenant: name}); err != nil {
		return identity.Tenant{}, err
	}
	return s.o.Identity.CreateTenant(ctx, name)
}

// CreateEnvironment adds an environment to a tenant.
func (s *Service) CreateEnvironment(ctx context.Context, tenant, env string) (identity.Tenant, error) {
	if err := identity.CheckName("environment", env); err != nil {
		return identity.Tenant{}, err
	}
	defer s.lockTenant(tenant)()
	if _, ok := s.o.Identity.Tenant(tenant); !ok {
		return identity.Tenant{}, identity.ErrNotFound
	}
	if err := s.free(ctx, authz.Scope{Tenant: tenant, Environment: env}); err != nil {
		return identity.Tenant{}, err
	}
	return s.o.Identity.AddEnvironment(ctx, tenant, env)
}

// CreateApplication creates an application in a tenant's environment.
func (s *Service) CreateApplication(ctx context.Context, tenant, env, name string) (identity.Application, error) {
	if err := identity.CheckName("application", name); err != nil {
		return identity.Application{}, err
	}
	defer s.lockTenant(tenant)()
	if t, ok := s.o.Identity.Tenant(tenant); !ok || !slices.Contains(t.Environments, env) {
		return identity.Application{}, identity.ErrNotFound
	}
	if err := s.free(ctx, authz.Scope{Tenant: tenant, Environment: env, Application: name}); err != nil {
		return identity.Application{}, err
	}
	return s.o.Identity.CreateApp(ctx, tenant, env, name)
}

// free readies a name for a new scope: refused while a deletion of it (or above it) is under
// way, or while it exists; otherwise a destroyed scope of that name is released, so the new
// one starts with new keys and no records.
func (s *Service) free(ctx context.Context, sc authz.Scope) error {
	for _, d := range s.o.Identity.Deletions() {
		if d.Scope.Contains(sc) {
			return fmt.Errorf("%s: %w", sc, identity.ErrDeleting)
		}
	}
	if s.exists(sc) {
		return identity.ErrExists
	}
	// A request that was past its checks when the old scope was marked may have made a queue
	// after the queues were deleted: whatever streams the name still has are leftovers.
	if sc.Environment == "" {
		for _, env := range identity.DefaultEnvironments {
			if err := s.deleteQueues(ctx, authz.Scope{Tenant: sc.Tenant, Environment: env}); err != nil {
				return err
			}
		}
	} else if err := s.deleteQueues(ctx, sc); err != nil {
		return err
	}
	return s.o.Keyring.Release(ctx, keyScope(sc))
}

// exists reports whether the scope's own record is stored.
func (s *Service) exists(sc authz.Scope) bool { return s.o.Identity.Stored(sc) }

// Delete deletes a tenant, an environment or an application and everything in it; actor is
// who asked, for the audit log. It returns identity.ErrNotFound for a scope that neither
// exists nor is being deleted. A deletion that was started and interrupted is finished by
// calling Delete again, or by Resume.
func (s *Service) Delete(ctx context.Context, actor string, sc authz.Scope) error {
	return s.DeleteFor(ctx, actor, "", sc)
}

// DeleteFor is Delete with the reason the audit event gives (the retention run's).
func (s *Service) DeleteFor(ctx context.Context, actor, reason string, sc authz.Scope) error {
	if sc.Tenant == "" || sc.Validate() != nil {
		return fmt.Errorf("%w: scope %q: a tenant, environment or application", identity.ErrInvalid, sc.String())
	}
	defer s.lockTenant(sc.Tenant)()
	d, pending := s.o.Identity.Deletion(sc)
	if !pending {
		if !s.exists(sc) || !s.visible(sc) {
			return identity.ErrNotFound
		}
		var err error
		if d, err = s.o.Identity.MarkDeletion(ctx, identity.Deletion{Scope: sc, Actor: actor, Reason: reason}); err != nil {
			return err
		}
	}
	return s.finish(ctx, d, pending)
}

// visible reports whether no scope above sc is being deleted (that deletion covers sc).
func (s *Service) visible(sc authz.Scope) bool {
	for _, d := range s.o.Identity.Deletions() {
		if d.Scope.Contains(sc) && d.Scope != sc {
			return false
		}
	}
	return true
}

// Resume finishes every deletion a crash or an error interrupted, outermost first. It runs at
// start, before anything is served.
func (s *Service) Resume(ctx context.Context) error {
	for {
		pending := s.o.Identity.Deletions()
		if len(pending) == 0 {
			return nil
		}
		d := pending[0]
		s.o.Logger.Info("resuming an interrupted deletion", "scope", d.Scope.String())
		unlock := s.lockTenant(d.Scope.Tenant)
		err := s.finish(ctx, d, true)
		unlock()
		if err != nil {
			return fmt.Errorf("resume deletion of %s: %w", d.Scope, err)
		}
	}
}

// kind names a scope's level, for crash points and audit actions.
func kind(sc authz.Scope) string {
	switch {
	case sc.Application != "":
		return "app"
	case sc.Environment != "":
		return "env"
	}
	return "tenant"
}

// finish runs a marked deletion to its end. Every step can run again after a crash: it skips
// what is gone already. The order: pipelines stop first (nothing of the scope writes any
// more), then native connections close (its clients cannot reach it, and their keys no longer
// authenticate since the mark), then its queues and exchanges go (with their engine
// encryption keys), then its data keys are destroyed (every sealed record and every backup of
// it is unreadable from here), then its records are purged and its control-plane entries
// removed, the audit event is written, and the mark goes last.
func (s *Service) finish(ctx context.Context, d identity.Deletion, resumed bool) error {
	sc, step := d.Scope, "delete-"+kind(d.Scope)+"/"
	crashpoint.Hit(step + "marked")

	s.o.Pipelines.StopScope(keyScope(sc))
	crashpoint.Hit(step + "pipelines-stopped")

	closed := s.closeConnections(sc)
	crashpoint.Hit(step + "connections-closed")

	if err := s.deleteQueues(ctx, sc); err != nil {
		return err
	}
	crashpoint.Hit(step + "queues-deleted")

	if sc.Environment == "" && s.o.FilesRoot != "" {
		if err := os.RemoveAll(filepath.Join(s.o.FilesRoot, sc.Tenant)); err != nil {
			return fmt.Errorf("delete the tenant's files: %w", err)
		}
		crashpoint.Hit(step + "files-deleted")
	}

	if err := s.o.Keyring.Destroy(ctx, keyScope(sc)); err != nil {
		return err
	}
	crashpoint.Hit(step + "keys-destroyed")

	if err := s.o.Keyring.PurgeRecords(ctx, keyScope(sc)); err != nil {
		return err
	}
	crashpoint.Hit(step + "records-purged")

	if err := s.o.Identity.RemoveScope(ctx, sc); err != nil {
		return err
	}
	crashpoint.Hit(step + "identity-removed")

	if !d.Audited {
		details := map[string]string{"resumed": fmt.Sprint(resumed), "started": d.Started.Format("2006-01-02T15:04:05Z07:00")}
		if closed > 0 {
			details["native_connections_closed"] = fmt.Sprint(closed)
		}
		if d.Reason != "" {
			details["reason"] = d.Reason
		}
		if _, err := s.o.Audit.Append(ctx, audit.Event{Actor: d.Actor, Tenant: sc.Tenant, Environment: sc.Environment,
			Application: sc.Application, Action: map[string]string{"app": "application", "env": "environment", "tenant": "tenant"}[kind(sc)] + ".deleted",
			Target: sc.String(), Result: audit.ResultOK, Details: details}); err != nil {
			return err
		}
		if err := s.o.Identity.SetAudited(ctx, sc); err != nil {
			return err
		}
	}
	crashpoint.Hit(step + "audited")

	// Deletions of scopes inside this one (started before it) are complete with it.
	for _, inner := range s.o.Identity.Deletions() {
		if sc.Contains(inner.Scope) && inner.Scope != sc {
			if err := s.o.Identity.Unmark(ctx, inner.Scope); err != nil {
				return err
			}
		}
	}
	if err := s.o.Identity.Unmark(ctx, sc); err != nil {
		return err
	}
	if s.o.OnDeleted != nil {
		s.o.OnDeleted(sc)
	}
	s.o.Logger.Info("deleted", "scope", sc.String(), "resumed", resumed)
	return nil
}

// closeConnections closes the native connections that can reach the scope: those of every key
// whose grant in an environment of the scope covers one of its applications. Each such key
// has one account per environment, named by fabric.Grant. Keys scoped inside the scope do
// not authenticate since the mark, and a key of a wider scope reconnects without the deleted
// applications, so a closed client cannot come back to it.
func (s *Service) closeConnections(sc authz.Scope) int {
	if s.o.Engine == nil {
		return 0
	}
	id := s.o.Identity
	envs := []string{sc.Environment}
	if sc.Environment == "" {
		envs = id.StoredEnvironments(sc.Tenant)
	}
	n := 0
	for _, env := range envs {
		var apps []string
		if sc.Application != "" {
			apps = []string{sc.Application}
		} else {
			for _, a := range id.StoredApps(authz.Scope{Tenant: sc.Tenant, Environment: env}) {
				apps = append(apps, a.Name)
			}
		}
		for _, k := range id.StoredKeys(authz.Scope{Tenant: sc.Tenant}) {
			g, ok := fabric.Grant(identity.KeyPrincipal(k), k.ID, sc.Tenant, env, apps)
			if !ok {
				continue
			}
			c, err := s.o.Engine.DisconnectAccount(g.Account)
			if err != nil {
				// The fabric's sweep closes it within a second all the same.
				s.o.Logger.Warn("close native connections", "scope", sc.String(), "error", err)
			}
			n += c
		}
	}
	return n
}

// deleteQueues deletes the scope's queues, dead-letter queues and exchanges.
func (s *Service) deleteQueues(ctx context.Context, sc authz.Scope) error {
	f := s.o.Fabric
	if sc.Application != "" {
		if err := f.DeleteApplication(ctx, fabric.Ref{Tenant: sc.Tenant, Environment: sc.Environment, Application: sc.Application}); err != nil {
			return fmt.Errorf("delete the queues of %s: %w", sc, err)
		}
		return nil
	}
	envs := []string{sc.Environment}
	if sc.Environment == "" {
		envs = s.o.Identity.StoredEnvironments(sc.Tenant)
	}
	for _, env := range envs {
		if err := f.DeleteEnvironment(ctx, sc.Tenant, env); err != nil && !errors.Is(err, fabric.ErrNotFound) {
			return fmt.Errorf("delete the queues of %s/%s: %w", sc.Tenant, env, err)
		}
	}
	return nil
}
