package api

import (
	"bytes"
	"context"
	"crypto/subtle"
	"errors"
	"html/template"
	"net/http"
	"net/netip"

	"github.com/danielgtaylor/huma/v2"

	"github.com/penstock/penstock/internal/audit"
	"github.com/penstock/penstock/internal/authz"
	"github.com/penstock/penstock/internal/identity"
	"github.com/penstock/penstock/internal/keyring"
	"github.com/penstock/penstock/internal/notify"
)

// tenantQuery names the tenant whose channels, rules or alerts a call is about; without it,
// the platform's (platform administrators).
type tenantQuery struct {
	Tenant string `query:"tenant" doc:"the tenant; empty means the platform's own (platform administrators)" pattern:"^[a-z0-9][a-z0-9-]{0,62}$"`
}

func (q tenantQuery) scope() authz.Scope { return backupScope(q.Tenant) }

// huma reads parameters from one struct level only: each input repeats the tenant.
func (q notifyName) scope() authz.Scope      { return backupScope(q.Tenant) }
func (q channelPutInput) scope() authz.Scope { return backupScope(q.Tenant) }
func (q rulePutInput) scope() authz.Scope    { return backupScope(q.Tenant) }
func (q alertsInput) scope() authz.Scope     { return backupScope(q.Tenant) }
func (q alertInput) scope() authz.Scope      { return backupScope(q.Tenant) }

type notifyName struct {
	Tenant string `query:"tenant" doc:"the tenant; empty means the platform's own (platform administrators)" pattern:"^[a-z0-9][a-z0-9-]{0,62}$"`
	Name   string `path:"name" doc:"channel or rule name" pattern:"^[a-z0-9][a-z0-9-]{0,62}$"`
}

type channelPutInput struct {
	Tenant string `query:"tenant" doc:"the tenant; empty means the platform's own (platform administrators)" pattern:"^[a-z0-9][a-z0-9-]{0,62}$"`
	Name   string `path:"name" doc:"channel name" pattern:"^[a-z0-9][a-z0-9-]{0,62}$"`
	Body   notify.Input
}

type channelOutput struct{ Body notify.View }

type channelsOutput struct {
	Body struct {
		Channels []notify.View `json:"channels"`
	}
}

type rulePutInput struct {
	Tenant string `query:"tenant" doc:"the tenant; empty means the platform's own (platform administrators)" pattern:"^[a-z0-9][a-z0-9-]{0,62}$"`
	Name   string `path:"name" doc:"rule name" pattern:"^[a-z0-9][a-z0-9-]{0,62}$"`
	Body   notify.Rule
}

type ruleOutput struct{ Body notify.Rule }

type rulesOutput struct {
	Body struct {
		Rules []notify.Rule `json:"rules"`
	}
}

type alertsInput struct {
	Tenant string `query:"tenant" doc:"the tenant; empty means the platform's own (platform administrators)" pattern:"^[a-z0-9][a-z0-9-]{0,62}$"`
	State  string `query:"state" enum:"firing,resolved,unacknowledged," doc:"only alerts in this state"`
}

type alertInput struct {
	Tenant string `query:"tenant" doc:"the tenant; empty means the platform's own (platform administrators)" pattern:"^[a-z0-9][a-z0-9-]{0,62}$"`
	ID     string `path:"id" pattern:"^a-[0-9a-f]{16}$"`
}

type alertOutput struct{ Body notify.Alert }

type alertsOutput struct {
	Body struct {
		Alerts []notify.Alert `json:"alerts"`
	}
}

type eventsOutput struct {
	Body struct {
		Events []notify.Kind `json:"events"`
	}
}

type testOutput struct {
	Body struct {
		Delivered bool `json:"delivered"`
	}
}

func registerNotify(g gate, hapi huma.API, o Options) {
	n := o.Notify
	tags := []string{"notifications"}
	register(g, hapi, Route{Action: authz.TenantRead, Listing: true}, huma.Operation{
		OperationID: "notify-events", Method: http.MethodGet, Path: "/v1/notify/events",
		Summary: "List the built-in events rules can watch", Tags: tags,
	}, nil, func(context.Context, *caller, *struct{}) (*eventsOutput, error) {
		out := &eventsOutput{}
		out.Body.Events = notify.Kinds
		return out, nil
	})

	register(g, hapi, Route{Action: authz.NotifyManage}, huma.Operation{
		OperationID: "channel-put", Method: http.MethodPut, Path: "/v1/notify/channels/{name}",
		Summary: "Create or replace a notification channel (credentials are write-only; left out, they keep their stored values)", Tags: tags,
	}, func(in *channelPutInput) authz.Scope { return in.scope() }, func(ctx context.Context, _ *caller, in *channelPutInput) (*channelOutput, error) {
		c := in.Body.Channel()
		c.Name = in.Name
		v, err := n.PutChannel(ctx, in.Tenant, c)
		if err != nil {
			return nil, notifyError(o, "put channel", err, "channel "+in.Name)
		}
		return &channelOutput{Body: v}, nil
	})
	register(g, hapi, Route{Action: authz.TenantRead}, huma.Operation{
		OperationID: "channel-list", Method: http.MethodGet, Path: "/v1/notify/channels",
		Summary: "List notification channels (never their credentials)", Tags: tags,
	}, func(in *tenantQuery) authz.Scope { return in.scope() }, func(ctx context.Context, _ *caller, in *tenantQuery) (*channelsOutput, error) {
		list, err := n.Channels(ctx, in.Tenant)
		if err != nil {
			return nil, notifyError(o, "list channels", err, "")
		}
		out := &channelsOutput{}
		out.Body.Channels = list
		return out, nil
	})
	register(g, hapi, Route{Action: authz.TenantRead}, huma.Operation{
		OperationID: "channel-get", Method: http.MethodGet, Path: "/v1/notify/channels/{name}",
		Summary: "Show a notification channel (never its credentials)", Tags: tags,
	}, func(in *notifyName) authz.Scope { return in.scope() }, func(ctx context.Context, _ *caller, in *notifyName) (*channelOutput, error) {
		c, err := n.Channel(ctx, in.Tenant, in.Name)
		if err != nil {
			return nil, notifyError(o, "get channel", err, "channel "+in.Name)
		}
		return &channelOutput{Body: c.View()}, nil
	})
	register(g, hapi, Route{Action: authz.NotifyManage}, huma.Operation{
		OperationID: "channel-delete", Method: http.MethodDelete, Path: "/v1/notify/channels/{name}",
		Summary: "Delete a notification channel", Tags: tags, DefaultStatus: http.StatusNoContent,
	}, func(in *notifyName) authz.Scope { return in.scope() }, func(ctx context.Context, _ *caller, in *notifyName) (*struct{}, error) {
		return nil, notifyError(o, "delete channel", n.DeleteChannel(ctx, in.Tenant, in.Name), "channel "+in.Name)
	})
	register(g, hapi, Route{Action: authz.NotifyManage}, huma.Operation{
		OperationID: "channel-test", Method: http.MethodPost, Path: "/v1/notify/channels/{name}/test",
		Summary: "Send a test notice through a channel now", Tags: tags, Errors: []int{http.StatusBadGateway},
	}, func(in *notifyName) authz.Scope { return in.scope() }, func(ctx context.Context, _ *caller, in *notifyName) (*testOutput, error) {
		err := n.TestChannel(ctx, in.Tenant, in.Name)
		if errors.Is(err, notify.ErrNotFound) {
			return nil, notifyError(o, "test channel", err, "channel "+in.Name)
		}
		if err != nil {
			return nil, NewError(http.StatusBadGateway, "notify.channel_failed", "the channel did not take the test notice: "+err.Error())
		}
		out := &testOutput{}
		out.Body.Delivered = true
		return out, nil
	})

	register(g, hapi, Route{Action: authz.NotifyManage}, huma.Operation{
		OperationID: "rule-put", Method: http.MethodPut, Path: "/v1/notify/rules/{name}",
		Summary: "Create or replace an alerting rule", Tags: tags,
	}, func(in *rulePutInput) authz.Scope { return in.scope() }, func(ctx context.Context, _ *caller, in *rulePutInput) (*ruleOutput, error) {
		r := in.Body
		r.Name = in.Name
		r, err := n.PutRule(ctx, in.Tenant, r)
		if err != nil {
			return nil, notifyError(o, "put rule", err, "rule "+in.Name)
		}
		return &ruleOutput{Body: r}, nil
	})
	register(g, hapi, Route{Action: authz.TenantRead}, huma.Operation{
		OperationID: "rule-list", Method: http.MethodGet, Path: "/v1/notify/rules",
		Summary: "List alerting rules", Tags: tags,
	}, func(in *tenantQuery) authz.Scope { return in.scope() }, func(ctx context.Context, _ *caller, in *tenantQuery) (*rulesOutput, error) {
		list, err := n.Rules(ctx, in.Tenant)
		if err != nil {
			return nil, notifyError(o, "list rules", err, "")
		}
		out := &rulesOutput{}
		out.Body.Rules = list
		return out, nil
	})
	register(g, hapi, Route{Action: authz.NotifyManage}, huma.Operation{
		OperationID: "rule-delete", Method: http.MethodDelete, Path: "/v1/notify/rules/{name}",
		Summary: "Delete an alerting rule (its open alerts resolve)", Tags: tags, DefaultStatus: http.StatusNoContent,
	}, func(in *notifyName) authz.Scope { return in.scope() }, func(ctx context.Context, _ *caller, in *notifyName) (*struct{}, error) {
		return nil, notifyError(o, "delete rule", n.DeleteRule(ctx, in.Tenant, in.Name), "rule "+in.Name)
	})

	register(g, hapi, Route{Action: authz.TenantRead}, huma.Operation{
		OperationID: "alert-list", Method: http.MethodGet, Path: "/v1/alerts",
		Summary: "List alerts, newest first", Tags: tags,
	}, func(in *alertsInput) authz.Scope { return in.scope() }, func(ctx context.Context, _ *caller, in *alertsInput) (*alertsOutput, error) {
		list, err := n.Alerts(ctx, in.Tenant, in.State)
		if err != nil {
			return nil, notifyError(o, "list alerts", err, "")
		}
		out := &alertsOutput{}
		out.Body.Alerts = make([]notify.Alert, len(list))
		for i, a := range list {
			out.Body.Alerts[i] = a.Public()
		}
		return out, nil
	})
	register(g, hapi, Route{Action: authz.TenantRead}, huma.Operation{
		OperationID: "alert-get", Method: http.MethodGet, Path: "/v1/alerts/{id}",
		Summary: "Show an alert and the delivery of each of its notices", Tags: tags,
	}, func(in *alertInput) authz.Scope { return in.scope() }, func(ctx context.Context, _ *caller, in *alertInput) (*alertOutput, error) {
		a, err := n.Alert(ctx, in.Tenant, in.ID)
		if err != nil {
			return nil, notifyError(o, "get alert", err, "alert "+in.ID)
		}
		return &alertOutput{Body: a.Public()}, nil
	})
	register(g, hapi, Route{Action: authz.AlertAck}, huma.Operation{
		OperationID: "alert-ack", Method: http.MethodPost, Path: "/v1/alerts/{id}/ack",
		Summary: "Acknowledge an alert: its escalation stops", Tags: tags,
	}, func(in *alertInput) authz.Scope { return in.scope() }, func(ctx context.Context, c *caller, in *alertInput) (*alertOutput, error) {
		a, err := n.Ack(ctx, in.Tenant, in.ID, c.principal.Kind+":"+c.principal.Name)
		if err != nil {
			return nil, notifyError(o, "ack alert", err, "alert "+in.ID)
		}
		return &alertOutput{Body: a.Public()}, nil
	})
	registerAckLink(g, hapi, o)
}

// ackLinkInput is the acknowledgement link a notice carries: the alert's tenant ("platform"
// for the platform's), its id and the link's secret. The secret is the credential.
type ackLinkInput struct {
	Scope string `path:"scope" pattern:"^[a-z0-9][a-z0-9-]{0,62}$"`
	ID    string `path:"id" pattern:"^a-[0-9a-f]{16}$"`
	Key   string `path:"key" pattern:"^[0-9a-f]{64}$"`
}

func (in ackLinkInput) tenant() string {
	if in.Scope == notify.PlatformTenant {
		return ""
	}
	return in.Scope
}

// ackPage is the page an acknowledgement link opens: a button, so that mail scanners that
// follow links do not acknowledge anything by looking.
var ackPage = template.Must(template.New("ack").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>Penstock alert {{.ID}}</title></head>
<body><h1>{{.Subject}}</h1><p>{{.State}}{{if .Acked}}, acknowledged by {{.AckedBy}}{{end}}</p>
{{if not .Acked}}<form method="post"><button type="submit">Acknowledge</button></form>{{end}}
</body></html>`))

type ackPageData struct {
	ID, Subject, State, AckedBy string
	Acked                       bool
}

func registerAckLink(g gate, hapi huma.API, o Options) {
	n := o.Notify
	page := func(a notify.Alert) (*docsOutput, error) {
		var b bytes.Buffer
		if err := ackPage.Execute(&b, ackPageData{ID: a.ID, Subject: a.Subject(notify.Raised), State: a.State, AckedBy: a.AckedBy,
			Acked: !a.Acked.IsZero()}); err != nil {
			return nil, err
		}
		return &docsOutput{ContentType: "text/html; charset=utf-8", CSP: "default-src 'none'; form-action 'self'", Body: b.Bytes()}, nil
	}
	register(g, hapi, Route{Action: Public}, huma.Operation{
		OperationID: "alert-ack-link", Method: http.MethodGet, Path: "/v1/ack/{scope}/{id}/{key}",
		Summary: "The page of an alert's acknowledgement link (a notice carries it when notify.public_url is set)", Tags: []string{"notifications"},
	}, nil, func(ctx context.Context, _ *caller, in *ackLinkInput) (*docsOutput, error) {
		a, err := n.Alert(ctx, in.tenant(), in.ID)
		if err != nil || subtle.ConstantTimeCompare([]byte(a.AckKey), []byte(in.Key)) != 1 || !linkAllowedFrom(o, in.tenant(), requestFrom(ctx).source) {
			return nil, notFound()
		}
		return page(a)
	})
	register(g, hapi, Route{Action: Public}, huma.Operation{
		OperationID: "alert-ack-link-post", Method: http.MethodPost, Path: "/v1/ack/{scope}/{id}/{key}",
		Summary: "Acknowledge an alert through its link", Tags: []string{"notifications"},
	}, nil, func(ctx context.Context, _ *caller, in *ackLinkInput) (*docsOutput, error) {
		ri := requestFrom(ctx)
		ev := audit.Event{Actor: "ack-link", Action: string(authz.AlertAck), Target: "alert/" + in.ID, Source: ri.source, RequestID: ri.id}
		a, err := n.Alert(ctx, in.tenant(), in.ID)
		if err != nil || subtle.ConstantTimeCompare([]byte(a.AckKey), []byte(in.Key)) != 1 || !linkAllowedFrom(o, in.tenant(), ri.source) {
			// A refused link names no chain: its tenant is only what the request said.
			ev.Result, ev.Code = "denied", "not_found"
			if _, aerr := o.Audit.Append(ctx, ev); aerr != nil {
				return nil, internalError(o, "audit ack link", aerr)
			}
			return nil, notFound()
		}
		if !a.Acked.IsZero() || a.State != notify.Firing {
			return page(a) // nothing to change: nothing written, nothing audited
		}
		// Audited before it happens, as every change is: no audit, no acknowledgement.
		ev.Tenant, ev.Result = in.tenant(), "started"
		if _, err := o.Audit.Append(ctx, ev); err != nil {
			return nil, internalError(o, "audit ack link", err)
		}
		a, err = n.AckWithKey(ctx, in.tenant(), in.ID, in.Key)
		ev.Result = "ok"
		if err != nil {
			ev.Result, ev.Code = "error", "notify"
			err = notifyError(o, "ack alert by link", err, "alert "+in.ID)
		}
		if _, aerr := o.Audit.Append(ctx, ev); aerr != nil && err == nil {
			return nil, internalError(o, "audit ack link", aerr)
		}
		if err != nil {
			return nil, err
		}
		return page(a)
	})
}

// linkAllowedFrom applies the tenant's source allow-list to an acknowledgement link, as to
// every other call about the tenant.
func linkAllowedFrom(o Options, tenant, source string) bool {
	if tenant == "" {
		return true
	}
	t, ok := o.Identity.Tenant(tenant)
	if !ok {
		return false
	}
	addr, err := netip.ParseAddr(source)
	return err == nil && identity.AllowedFrom(t.AllowList, addr) || len(t.AllowList) == 0
}

func notifyError(o Options, op string, err error, what string) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, notify.ErrNotFound):
		return NewError(http.StatusNotFound, "notify.not_found", "no such "+what)
	case errors.Is(err, notify.ErrInvalid):
		return NewError(http.StatusUnprocessableEntity, "notify.invalid", err.Error())
	case errors.Is(err, notify.ErrConflict):
		return NewError(http.StatusConflict, "notify.conflict", what+" changed concurrently; try again")
	case errors.Is(err, keyring.ErrDestroyed):
		return keyError(o, op, err)
	}
	return internalError(o, op, err)
}
