package identity

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"

	"github.com/penstock/penstock/internal/authz"
	"github.com/penstock/penstock/internal/egress"
	"github.com/penstock/penstock/internal/keyring"
	"github.com/penstock/penstock/internal/names"
)

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

func checkName(kind, n string) error {
	if err := names.Check(kind, n); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return nil
}

// CheckTenantName refuses a tenant name that is not a valid name or is reserved.
func CheckTenantName(name string) error {
	if err := checkName("tenant", name); err != nil {
		return err
	}
	if slices.Contains(ReservedTenants, name) {
		return invalidf("tenant name %q is reserved", name)
	}
	return nil
}

// CheckName refuses an environment or application name that is not a valid name.
func CheckName(kind, name string) error { return checkName(kind, name) }

// CreateTenant creates a tenant with the default environments.
func (s *Store) CreateTenant(ctx context.Context, name string) (Tenant, error) {
	if err := CheckTenantName(name); err != nil {
		return Tenant{}, err
	}
	if s.hidden(authz.Scope{Tenant: name}) {
		return Tenant{}, fmt.Errorf("tenant %s: %w", name, ErrDeleting)
	}
	if gone, err := s.keys.IsDestroyed(ctx, keyring.Scope{Tenant: name}); err != nil {
		return Tenant{}, err
	} else if gone {
		return Tenant{}, invalidf("tenant name %q belonged to a deleted tenant and cannot be used again", name)
	}
	t := Tenant{ID: NewID("ten_"), Name: name, Environments: slices.Clone(DefaultEnvironments), Created: s.cfg.Now().UTC()}
	return t, s.put(ctx, "tenant."+name, t, 0)
}

// Tenant returns a tenant by name; a tenant being deleted is not found, and an environment
// being deleted is not among its environments.
func (s *Store) Tenant(name string) (Tenant, bool) {
	t, ok := s.storedTenant(name)
	if !ok || s.hidden(authz.Scope{Tenant: name}) {
		return Tenant{}, false
	}
	return s.visible(t), true
}

// Tenants lists tenants by name, without those being deleted.
func (s *Store) Tenants() []Tenant {
	var out []Tenant
	for _, t := range list[Tenant](s, "tenant.") {
		if !s.hidden(authz.Scope{Tenant: t.Name}) {
			out = append(out, s.visible(t))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// SetAllowList replaces a tenant's source allow-list; an empty list allows every address.
func (s *Store) SetAllowList(ctx context.Context, tenant string, cidrs []string) (Tenant, error) {
	var t Tenant
	rev, ok := s.get("tenant."+tenant, &t)
	if !ok {
		return Tenant{}, ErrNotFound
	}
	for i, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return Tenant{}, invalidf("cidrs[%d]: %q is not a CIDR such as 192.0.2.0/24", i, c)
		}
		cidrs[i] = p.Masked().String()
	}
	t.AllowList = cidrs
	return t, s.put(ctx, "tenant."+tenant, t, rev)
}

// SetEgress replaces the destinations a tenant's connectors may reach beyond the default egress
// policy; an empty list leaves just the default.
func (s *Store) SetEgress(ctx context.Context, tenant string, rules []string) (Tenant, error) {
	var t Tenant
	rev, ok := s.get("tenant."+tenant, &t)
	if !ok {
		return Tenant{}, ErrNotFound
	}
	if len(rules) > 256 {
		return Tenant{}, invalidf("rules: at most 256")
	}
	for i, r := range rules {
		parsed, err := egress.ParseRule(r)
		if err != nil {
			return Tenant{}, invalidf("rules[%d]: %v", i, err)
		}
		rules[i] = parsed.String()
	}
	t.Egress = rules
	return t, s.put(ctx, "tenant."+tenant, t, rev)
}

// EgressPolicy returns the policy a tenant's connectors dial under.
func (s *Store) EgressPolicy(tenant string) egress.Policy {
	p := egress.Policy{Tenant: tenant}
	t, _ := s.Tenant(tenant)
	for _, r := range t.Egress {
		if parsed, err := egress.ParseRule(r); err == nil {
			p.Rules = append(p.Rules, parsed)
		}
	}
	return p
}

func appKey(t, e, a string) string { return "app." + t + "." + e + "." + a }

// CreateApp creates an application in a tenant's environment.
func (s *Store) CreateApp(ctx context.Context, tenant, env, name string) (Application, error) {
	t, ok := s.Tenant(tenant)
	if !ok || !slices.Contains(t.Environments, env) {
		return Application{}, ErrNotFound
	}
	if err := checkName("application", name); err != nil {
		return Application{}, err
	}
	if s.hidden(authz.Scope{Tenant: tenant, Environment: env, Application: name}) {
		return Application{}, fmt.Errorf("application %s/%s/%s: %w", tenant, env, name, ErrDeleting)
	}
	if gone, err := s.keys.IsDestroyed(ctx, keyring.Scope{Tenant: tenant, Environment: env, Application: name}); err != nil {
		return Application{}, err
	} else if gone {
		return Application{}, invalidf("application name %q belonged to a deleted application and cannot be used again", name)
	}
	a := Application{ID: NewID("app_"), Tenant: tenant, Environment: env, Name: name, Created: s.cfg.Now().UTC()}
	return a, s.put(ctx, appKey(tenant, env, name), a, 0)
}

// App returns an application; one being deleted (or in a tenant or environment being
// deleted) is not found.
func (s *Store) App(tenant, env, name string) (Application, bool) {
	s.mu.RLock()
	a, ok := s.apps[appKey(tenant, env, name)]
	s.mu.RUnlock()
	if !ok || s.hidden(authz.Scope{Tenant: tenant, Environment: env, Application: name}) {
		return Application{}, false
	}
	return a, true
}

// Apps lists a tenant's applications, in one environment or (env "") all, without those being
// deleted.
func (s *Store) Apps(tenant, env string) []Application {
	prefix := "app." + tenant + "."
	if env != "" {
		prefix += env + "."
	}
	out := slices.DeleteFunc(list[Application](s, prefix), func(a Application) bool {
		return a.Tenant != tenant || env != "" && a.Environment != env ||
			s.hidden(authz.Scope{Tenant: a.Tenant, Environment: a.Environment, Application: a.Name})
	})
	sort.Slice(out, func(i, j int) bool {
		return out[i].Environment+"/"+out[i].Name < out[j].Environment+"/"+out[j].Name
	})
	return out
}

// AddEnvironment adds an environment to a tenant.
func (s *Store) AddEnvironment(ctx context.Context, tenant, env string) (Tenant, error) {
	if err := checkName("environment", env); err != nil {
		return Tenant{}, err
	}
	for range 5 {
		var t Tenant
		rev, ok := s.get("tenant."+tenant, &t)
		if !ok {
			return Tenant{}, ErrNotFound
		}
		if s.hidden(authz.Scope{Tenant: tenant}) {
			return Tenant{}, ErrNotFound
		}
		if s.hidden(authz.Scope{Tenant: tenant, Environment: env}) {
			return Tenant{}, fmt.Errorf("environment %s/%s: %w", tenant, env, ErrDeleting)
		}
		if slices.Contains(t.Environments, env) {
			return Tenant{}, ErrExists
		}
		t.Environments = append(t.Environments, env)
		if err := s.put(ctx, "tenant."+tenant, t, rev); err == nil {
			return s.visible(t), nil
		}
		if e, err := s.kv.Get(ctx, "tenant."+tenant); err == nil {
			s.apply(e)
		}
	}
	return Tenant{}, errors.New("identity: tenant changed concurrently; try again")
}
