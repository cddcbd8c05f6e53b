package keyring

import (
	"strings"

	"github.com/penstock/penstock/internal/names"
)

// Scope is what a data key belongs to: a tenant, a tenant's environment, or an application in
// one. Destroying a scope destroys the scopes under it.
type Scope struct {
	Tenant, Environment, Application string
}

// ParseScope reads "tenant", "tenant/environment" or "tenant/environment/application".
func ParseScope(s string) (Scope, error) {
	parts := strings.Split(s, "/")
	if len(parts) > 3 {
		return Scope{}, invalid("scope %q: at most tenant/environment/application", s)
	}
	var sc Scope
	for i, p := range parts {
		if p == "" {
			return Scope{}, invalid("scope %q: empty segment", s)
		}
		switch i {
		case 0:
			sc.Tenant = p
		case 1:
			sc.Environment = p
		case 2:
			sc.Application = p
		}
	}
	return sc, sc.Validate()
}

// Validate checks every segment: 1-63 of a-z, 0-9 and -, starting with a letter or digit.
func (s Scope) Validate() error {
	segs := s.segments()
	if len(segs) == 0 || s.Environment == "" && s.Application != "" {
		return invalid("scope %q: needs a tenant, then optionally an environment and an application", s.String())
	}
	for _, seg := range segs {
		if !names.Valid(seg, "-") {
			return invalid("scope %q: segment %q must be 1-63 of a-z, 0-9 and -, starting with a letter or digit", s.String(), seg)
		}
	}
	return nil
}

func (s Scope) segments() []string {
	var out []string
	for _, seg := range []string{s.Tenant, s.Environment, s.Application} {
		if seg == "" {
			break
		}
		out = append(out, seg)
	}
	return out
}

// String is the scope as people write it: acme/production/billing.
func (s Scope) String() string { return strings.Join(s.segments(), "/") }

// key is the scope in KV keys: acme.production.billing (segments hold no dots).
func (s Scope) key() string { return strings.Join(s.segments(), ".") }

// ancestors are the scopes above s, outermost first.
func (s Scope) ancestors() []Scope {
	var out []Scope
	if s.Environment != "" {
		out = append(out, Scope{Tenant: s.Tenant})
	}
	if s.Application != "" {
		out = append(out, Scope{Tenant: s.Tenant, Environment: s.Environment})
	}
	return out
}

func scopeFromKey(k string) (Scope, error) { return ParseScope(strings.ReplaceAll(k, ".", "/")) }
