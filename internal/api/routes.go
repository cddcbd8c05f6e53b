package api

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"strings"

	"github.com/danielgtaylor/huma/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/penstock/penstock/internal/authz"
	"github.com/penstock/penstock/internal/identity"
)

// Public marks routes anyone may call (health, login).
const Public authz.Action = "public"

// Route is one registered operation and what it requires; the route x role x scope test walks
// them.
type Route struct {
	Method, Path, OperationID string
	Action                    authz.Action
	// Listing routes filter what they return item by item instead of being refused.
	Listing bool
	// DataPlane routes (publish, consume, acknowledge) are too frequent to audit one by one:
	// their denials are audited, their successes are counted in metrics.
	DataPlane bool
	// AccountSetup routes are the only ones a session that must change its password or enrol
	// a second factor may call.
	AccountSetup bool
	// Deletion routes reach a scope that is being deleted (to finish the deletion); every
	// other route answers 404 for anything in such a scope, from the moment it is marked.
	Deletion bool
}

type routes struct{ list []Route }

// gate holds what register needs to authorize a call.
type gate struct {
	o   Options
	reg *routes
	// auditFailures counts outcomes the audit log could not take: each is an alert.
	auditFailures prometheus.Counter
}

// register adds an operation whose calls need action on the scope resource derives from the
// input. Public operations take any caller; the others need an authenticated one for whom
// authz.Decide allows the action, within the tenant's source allow-list.
func register[I, O any](g gate, hapi huma.API, r Route, op huma.Operation, resource func(*I) authz.Scope,
	h func(context.Context, *caller, *I) (*O, error)) {
	if r.Action == "" {
		panic(fmt.Sprintf("route %s %s declares no action", op.Method, op.Path))
	}
	r.Method, r.Path, r.OperationID = op.Method, op.Path, op.OperationID
	g.reg.list = append(g.reg.list, r)
	describeAccess(&op, r.Action)
	// Every body is read in full before the operation runs (strictJSONText), under the
	// server's api.limits.read_timeout. huma would otherwise set a read deadline of its own
	// (5 s by default) on the connection at this point and never lift it: net/http, already
	// waiting for the connection's next bytes once the body was read, then fails that read when
	// the deadline passes and cancels the request's context, so any change that took longer
	// (two argon2id hashes on a busy machine) failed with "context canceled" and a 500.
	// -1 tells huma to lift any deadline instead.
	if op.BodyReadTimeout == 0 {
		op.BodyReadTimeout = -1
	}
	if r.Action != Public {
		op.Security = []map[string][]string{{"session": {}}, {"apiKey": {}}, {"signature": {}}}
		op.Errors = append(op.Errors, http.StatusUnauthorized, http.StatusForbidden, http.StatusNotFound)
	}
	huma.Register(hapi, op, func(ctx context.Context, in *I) (*O, error) {
		c, _ := callerFrom(ctx)
		if r.Action == Public {
			return h(ctx, c, in)
		}
		if c == nil {
			return nil, NewError(http.StatusUnauthorized, "unauthenticated", "credentials are required")
		}
		if c.restricted != "" && !r.AccountSetup {
			err := NewError(http.StatusForbidden, "auth.mfa_required", "enrol a second factor first (POST /v1/auth/mfa/enrol)")
			if c.restricted == "password" {
				err = NewError(http.StatusForbidden, "auth.password_change_required", "change your password first (POST /v1/auth/password)")
			}
			g.record(ctx, c, r, authz.Platform, err)
			return nil, err
		}
		sc := authz.Platform
		if !r.Listing && !r.AccountSetup {
			sc = resource(in)
			// Every name a request gives is checked here, once, before it names anything.
			// A resource function's own markers for "no such thing" or "unparsable" (a tenant
			// starting with NUL) go on to the 404 or 422 they stand for.
			if err := sc.Validate(); err != nil && !strings.HasPrefix(sc.Tenant, "\x00") {
				err := NewError(http.StatusBadRequest, "name.invalid", err.Error())
				g.record(ctx, c, r, sc, err)
				return nil, err
			}
			if err := g.authorize(c, r.Action, sc); err != nil {
				g.record(ctx, c, r, sc, err)
				return nil, err
			}
			// Nothing is done inside a scope that does not exist (or is being deleted): a
			// queue, a message or a secret of an application that was never created, or was
			// deleted, would be stored where no listing shows it and a new application of
			// that name would inherit it. The deletion routes finish what they find; the audit
			// routes read what a deleted tenant left (for the platform's auditors).
			if !r.Deletion && r.Action != authz.AuditRead && g.o.Identity != nil && !strings.HasPrefix(sc.Tenant, "\x00") &&
				(g.o.Identity.Deleting(sc) || !g.o.Identity.Exists(sc)) {
				err := missing(sc)
				g.record(ctx, c, r, sc, err)
				return nil, err
			}
			if !r.Deletion {
				noteUse(ctx, g.o, c, sc)
			}
		}
		if op.Method == http.MethodGet || r.DataPlane {
			return h(ctx, c, in)
		}
		// A change is audited before and after: if its first event cannot be written, it does
		// not happen.
		if err := g.started(ctx, c, r, sc); err != nil {
			return nil, err
		}
		out, err := h(ctx, c, in)
		g.record(ctx, c, r, sc, err)
		return out, err
	})
}

// authorize applies the policy decision and the tenant's allow-list. A principal with nothing
// in the resource's tenant gets the same 404 as for a tenant that does not exist.
func (g gate) authorize(c *caller, a authz.Action, sc authz.Scope) error {
	d := authz.Decide(c.principal, a, sc)
	if d.Hidden {
		return notFound()
	}
	if !d.Allow {
		g.o.Logger.Info("denied", "principal", c.principal.Kind+":"+c.principal.Name, "action", a, "scope", sc.String(), "reason", d.Reason)
		return NewError(http.StatusForbidden, "forbidden", fmt.Sprintf("%s is not allowed at %s", a, sc))
	}
	if sc.Tenant != "" {
		if t, ok := g.o.Identity.Tenant(sc.Tenant); ok && !identity.AllowedFrom(t.AllowList, c.source) {
			return NewError(http.StatusForbidden, "auth.ip_not_allowed", "this address is not in the tenant's allow-list")
		}
	}
	return nil
}

// fromAllowed reports whether the caller's address is in the tenant's allow-list (true for
// the platform itself, tenant ""): listings leave out what the caller could not read directly.
func (g gate) fromAllowed(c *caller, tenant string) bool {
	if tenant == "" {
		return true
	}
	t, ok := g.o.Identity.Tenant(tenant)
	return !ok || identity.AllowedFrom(t.AllowList, c.source)
}

// member reports whether the caller has a role in the tenant (or a platform role) and calls
// from an address the tenant allows: what listing tenants shows.
func (g gate) member(c *caller, t identity.Tenant) bool {
	return !authz.Decide(c.principal, authz.TenantRead, authz.Scope{Tenant: t.Name}).Hidden &&
		identity.AllowedFrom(t.AllowList, c.source)
}

func notFound() error { return NewError(http.StatusNotFound, "not_found", "no such resource") }

// missing names the scope a request is about that does not exist (said only to a caller
// allowed in it: one with nothing in the tenant gets notFound, as for a tenant that does not
// exist).
func missing(sc authz.Scope) error {
	what := "tenant " + sc.Tenant
	switch {
	case sc.Application != "":
		what = "application " + sc.String()
	case sc.Environment != "":
		what = "environment " + sc.String()
	}
	return NewError(http.StatusNotFound, "not_found", "no such "+what)
}

// check fails if an operation of the API was registered without going through register.
func (reg *routes) check(hapi huma.API) {
	known := map[string]bool{}
	for _, r := range reg.list {
		known[r.OperationID] = true
	}
	var missing []string
	for path, item := range hapi.OpenAPI().Paths {
		for _, op := range []*huma.Operation{item.Get, item.Put, item.Post, item.Delete, item.Patch, item.Head, item.Options} {
			if op != nil && !known[op.OperationID] {
				missing = append(missing, op.Method+" "+path)
			}
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		panic(fmt.Sprintf("routes without a declared action: %v", missing))
	}
}
