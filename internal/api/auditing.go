package api

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"io"
	"strings"
	"time"

	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/http"
	"net/netip"
	"strconv"

	"github.com/danielgtaylor/huma/v2"

	"github.com/penstock/penstock/internal/audit"
	"github.com/penstock/penstock/internal/authz"
)

// auditLog is what the API needs of the audit log.
type auditLog interface {
	Append(ctx context.Context, e audit.Event) (audit.Event, error)
	Records(ctx context.Context, from uint64, fn func(audit.Record) bool) error
	VerifyAll(ctx context.Context) (audit.Report, error)
	PublicKey() ed25519.PublicKey
	Export(ctx context.Context, w io.Writer, tenant string, since, until time.Time) error
}

type requestKey struct{}

// requestInfo is what every audit event says of its request.
type requestInfo struct {
	id, path, source string
	// header is the response's, for what a handler adds before it answers.
	header http.Header
}

// loggedPath is a request's path as logs and audit events keep it: an acknowledgement link's
// secret (its last segment) is left out.
func loggedPath(p string) string {
	if rest, ok := strings.CutPrefix(p, "/v1/ack/"); ok {
		parts := strings.SplitN(rest, "/", 3)
		if len(parts) == 3 {
			return "/v1/ack/" + parts[0] + "/" + parts[1] + "/[redacted]"
		}
		return "/v1/ack/[redacted]"
	}
	return p
}

func requestFrom(ctx context.Context) requestInfo {
	ri, _ := ctx.Value(requestKey{}).(requestInfo)
	return ri
}

// withRequest gives each request an id (also sent back as X-Request-Id) and notes its path
// and source address for the audit log and the lockouts.
func withRequest(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b := make([]byte, 8)
		_, _ = rand.Read(b)
		ri := requestInfo{id: hex.EncodeToString(b), path: loggedPath(r.URL.Path), source: r.RemoteAddr, header: w.Header()}
		if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
			ri.source = ap.Addr().Unmap().String()
		}
		w.Header().Set("X-Request-Id", ri.id)
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), requestKey{}, ri)))
	})
}

func (c *caller) actor() string { return c.principal.Kind + ":" + c.principal.Name }

func (g gate) event(ctx context.Context, c *caller, r Route, sc authz.Scope) audit.Event {
	ri := requestFrom(ctx)
	at, own := g.auditScope(c, sc)
	e := audit.Event{Actor: c.actor(), Tenant: at.Tenant, Environment: at.Environment, Application: at.Application,
		Action: string(r.Action), Target: ri.path, Source: ri.source, RequestID: ri.id,
		Details: map[string]string{"operation": r.OperationID}}
	if !own {
		e.Details["requested_scope"] = clip(strconv.Quote(sc.String()), 200)
	}
	return e
}

// auditScope is where an event about sc is recorded: sc itself when its names are valid and
// its tenant exists (or it is the platform); otherwise the caller's own tenant, or the
// platform. A request can never start an audit chain, so chains are bounded by the tenants
// that exist, and a chain's name is never a string a caller chose.
func (g gate) auditScope(c *caller, sc authz.Scope) (authz.Scope, bool) {
	if sc.Validate() == nil {
		if _, ok := g.o.Identity.Tenant(sc.Tenant); ok || sc.Tenant == "" {
			return sc, true
		}
	}
	home := ""
	for _, b := range c.principal.Bindings {
		switch {
		case b.Scope.Tenant == "":
			return authz.Platform, false
		case home == "":
			home = b.Scope.Tenant
		case home != b.Scope.Tenant:
			return authz.Platform, false
		}
	}
	if _, ok := g.o.Identity.Tenant(home); ok {
		return authz.Scope{Tenant: home}, false
	}
	return authz.Platform, false
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// auditWait bounds how long a change's audit events may take to write once the caller has
// gone: they are written whether or not the caller still waits.
const auditWait = 30 * time.Second

// untilAudited is ctx without its cancellation (a caller that goes away does not stop an audit
// write), bounded by auditWait.
func untilAudited(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), auditWait)
}

// started records that a change is about to happen; its error, if any, is the answer.
func (g gate) started(ctx context.Context, c *caller, r Route, sc authz.Scope) error {
	e := g.event(ctx, c, r, sc)
	e.Result = "started"
	actx, cancel := untilAudited(ctx)
	defer cancel()
	if _, err := g.o.Audit.Append(actx, e); err != nil {
		g.auditFailed()
		g.o.Logger.Error("audit log unavailable: refusing the change", "operation", r.OperationID, "error", err)
		return NewError(http.StatusServiceUnavailable, "audit.unavailable", "the audit log cannot be written, so the change was not made")
	}
	return nil
}

// record writes the outcome of an action (ok, denied or error with its code).
func (g gate) record(ctx context.Context, c *caller, r Route, sc authz.Scope, err error) {
	e := g.event(ctx, c, r, sc)
	e.Result = audit.ResultOK
	var apiErr *Error
	if err != nil {
		e.Result, e.Code = audit.ResultError, "internal"
		if errors.As(err, &apiErr) {
			e.Code = apiErr.Code
			if apiErr.Status == http.StatusForbidden || apiErr.Status == http.StatusNotFound && apiErr.Code == "not_found" ||
				apiErr.Code == "name.invalid" {
				e.Result = audit.ResultDenied
			}
		}
	}
	// The outcome of a change is written even when its caller has gone: the change happened.
	actx, cancel := untilAudited(ctx)
	defer cancel()
	if _, aerr := g.o.Audit.Append(actx, e); aerr != nil {
		g.auditFailed()
		g.o.Logger.Error("audit log: outcome not written", "operation", r.OperationID, "error", aerr)
	}
}

func (g gate) auditFailed() {
	if g.auditFailures != nil {
		g.auditFailures.Inc()
	}
}

// recordAuth writes an authentication event: a login, a refused credential.
func recordAuth(ctx context.Context, o Options, actor, action, result, code string) error {
	return recordAuthDetails(ctx, o, actor, action, result, code, nil)
}

func recordAuthDetails(ctx context.Context, o Options, actor, action, result, code string, details map[string]string) error {
	ri := requestFrom(ctx)
	_, err := o.Audit.Append(ctx, audit.Event{Actor: actor, Action: action, Result: result, Code: code,
		Target: ri.path, Source: ri.source, RequestID: ri.id, Details: details})
	return err
}

type auditQuery struct {
	Tenant string    `query:"tenant" doc:"a tenant's events (required unless you read the platform's audit)" maxLength:"63"`
	Actor  string    `query:"actor" doc:"user:<name>, apikey:<id>, anonymous" maxLength:"100"`
	Action string    `query:"action" maxLength:"63"`
	Result string    `query:"result" enum:"ok,denied,error,started,"`
	Since  time.Time `query:"since"`
	Until  time.Time `query:"until"`
	Cursor uint64    `query:"cursor" doc:"next_cursor of the previous page"`
	Limit  int       `query:"limit" default:"100" minimum:"1" maximum:"1000"`
}

type auditPage struct {
	Body struct {
		Events     []audit.Event `json:"events"`
		NextCursor uint64        `json:"next_cursor,omitempty" doc:"pass as cursor for the next page; absent on the last"`
	}
}

type verifyOutput struct{ Body audit.Report }

func registerAudit(g gate, hapi huma.API, o Options) {
	register(g, hapi, Route{Action: authz.AuditRead}, huma.Operation{
		OperationID: "audit-list", Method: http.MethodGet, Path: "/v1/audit", Tags: []string{"audit"},
		Summary: "Audit events, filtered, oldest first, a page at a time; a tenant's auditors and owners see their tenant's",
	}, func(in *auditQuery) authz.Scope { return authz.Scope{Tenant: in.Tenant} },
		func(ctx context.Context, c *caller, in *auditQuery) (*auditPage, error) {
			in.Since = g.tenantHistoryFrom(c, in.Tenant, in.Since)
			out := &auditPage{}
			out.Body.Events = []audit.Event{}
			err := o.Audit.Records(ctx, in.Cursor+1, func(r audit.Record) bool {
				e := r.Event
				if e == nil {
					return true
				}
				switch {
				case in.Tenant != "" && e.Tenant != in.Tenant,
					in.Actor != "" && e.Actor != in.Actor,
					in.Action != "" && e.Action != in.Action,
					in.Result != "" && e.Result != in.Result,
					!in.Since.IsZero() && e.Time.Before(in.Since),
					!in.Until.IsZero() && !e.Time.Before(in.Until):
					return true
				}
				if len(out.Body.Events) == in.Limit {
					out.Body.NextCursor = out.Body.Events[len(out.Body.Events)-1].Seq
					return false
				}
				out.Body.Events = append(out.Body.Events, *e)
				return true
			})
			if err != nil {
				return nil, internalError(o, "audit list", err)
			}
			return out, nil
		})

	register(g, hapi, Route{Action: authz.AuditRead}, huma.Operation{
		OperationID: "audit-verify", Method: http.MethodGet, Path: "/v1/audit/verify", Tags: []string{"audit"},
		Summary: "Walk every chain and checkpoint and report the first break",
	}, platformScope[struct{}], func(ctx context.Context, _ *caller, _ *struct{}) (*verifyOutput, error) {
		rep, err := o.Audit.VerifyAll(ctx)
		if err != nil {
			return nil, internalError(o, "audit verify", err)
		}
		return &verifyOutput{Body: rep}, nil
	})
}

type exportQuery struct {
	Tenant string    `query:"tenant" maxLength:"63" doc:"one tenant's chain (tenant auditors and owners must give theirs)"`
	Since  time.Time `query:"since"`
	Until  time.Time `query:"until"`
}

type exportOutput struct {
	ContentType string `header:"Content-Type"`
	Body        []byte
}

type keyOutput struct {
	Body struct {
		PublicKey []byte `json:"public_key" doc:"Ed25519 key that signs checkpoints; give it to audit verify --file"`
	}
}

func registerAuditExport(g gate, hapi huma.API, o Options) {
	register(g, hapi, Route{Action: authz.AuditRead}, huma.Operation{
		OperationID: "audit-key", Method: http.MethodGet, Path: "/v1/audit/key", Tags: []string{"audit"},
		Summary: "The public key that signs audit checkpoints, to verify exports with",
	}, platformScope[struct{}], func(ctx context.Context, _ *caller, _ *struct{}) (*keyOutput, error) {
		out := &keyOutput{}
		out.Body.PublicKey = o.Audit.PublicKey()
		return out, nil
	})

	register(g, hapi, Route{Action: authz.AuditRead}, huma.Operation{
		OperationID: "audit-export", Method: http.MethodGet, Path: "/v1/audit/export", Tags: []string{"audit"},
		Summary: "Export events and checkpoints of a time range as NDJSON, with what verifying it on its own needs",
	}, func(in *exportQuery) authz.Scope { return authz.Scope{Tenant: in.Tenant} },
		func(ctx context.Context, c *caller, in *exportQuery) (*exportOutput, error) {
			in.Since = g.tenantHistoryFrom(c, in.Tenant, in.Since)
			var buf bytes.Buffer
			if err := o.Audit.Export(ctx, &buf, in.Tenant, in.Since, in.Until); err != nil {
				return nil, internalError(o, "audit export", err)
			}
			return &exportOutput{ContentType: "application/x-ndjson", Body: buf.Bytes()}, nil
		})
}

// tenantHistoryFrom is where a caller's reading of a tenant's audit starts: a tenant's own
// auditors and owners see the events of the tenant as it is now, from its creation, not those
// of an earlier tenant that had the same name and was deleted (the platform's auditors see
// everything).
func (g gate) tenantHistoryFrom(c *caller, tenant string, since time.Time) time.Time {
	if tenant == "" || authz.Decide(c.principal, authz.AuditRead, authz.Platform).Allow {
		return since
	}
	if t, ok := g.o.Identity.Tenant(tenant); ok && since.Before(t.Created) {
		return t.Created
	}
	return since
}
