package api

import (
	"context"
	"errors"
	"net/http"

	"github.com/danielgtaylor/huma/v2"

	"github.com/penstock/penstock/internal/authz"
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
		out.Body.Alerts = list
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
		return &alertOutput{Body: a}, nil
	})
	register(g, hapi, Route{Action: authz.AlertAck}, huma.Operation{
		OperationID: "alert-ack", Method: http.MethodPost, Path: "/v1/alerts/{id}/ack",
		Summary: "Acknowledge an alert: its escalation stops", Tags: tags,
	}, func(in *alertInput) authz.Scope { return in.scope() }, func(ctx context.Context, c *caller, in *alertInput) (*alertOutput, error) {
		a, err := n.Ack(ctx, in.Tenant, in.ID, c.principal.Kind+":"+c.principal.Name)
		if err != nil {
			return nil, notifyError(o, "ack alert", err, "alert "+in.ID)
		}
		return &alertOutput{Body: a}, nil
	})
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
