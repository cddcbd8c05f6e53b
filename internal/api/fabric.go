package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/danielgtaylor/huma/v2"

	"github.com/penstock/penstock/internal/authz"
	"github.com/penstock/penstock/internal/engine"
	"github.com/penstock/penstock/internal/fabric"
	"github.com/penstock/penstock/internal/keyring"
)

const appBase = "/v1/tenants/{tenant}/environments/{environment}/applications/{application}"

// appParams are the path parameters of everything inside an application. Huma reads
// parameters from one struct level only, so the other inputs repeat these fields and convert
// with app().
type appParams struct {
	Tenant      string `path:"tenant" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Tenant"`
	Environment string `path:"environment" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Environment"`
	Application string `path:"application" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Application"`
}

func (p appParams) scope() authz.Scope {
	return authz.Scope{Tenant: p.Tenant, Environment: p.Environment, Application: p.Application}
}

// keyScope is the application's keyring scope.
func (p appParams) keyScope() keyring.Scope {
	return keyring.Scope{Tenant: p.Tenant, Environment: p.Environment, Application: p.Application}
}

func (p appParams) ref(name string) fabric.Ref {
	return fabric.Ref{Tenant: p.Tenant, Environment: p.Environment, Application: p.Application, Name: name}
}

type queueParams struct {
	Tenant      string `path:"tenant" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Tenant"`
	Environment string `path:"environment" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Environment"`
	Application string `path:"application" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Application"`
	Queue       string `path:"queue" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Queue"`
}

func (p *queueParams) app() appParams { return appParams{p.Tenant, p.Environment, p.Application} }

type exchangeParams struct {
	Tenant      string `path:"tenant" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Tenant"`
	Environment string `path:"environment" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Environment"`
	Application string `path:"application" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Application"`
	Exchange    string `path:"exchange" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Exchange"`
}

func (p *exchangeParams) app() appParams { return appParams{p.Tenant, p.Environment, p.Application} }

type queueSpecBody struct {
	Name            string `json:"name" pattern:"^[a-z0-9][a-z0-9-]{0,62}$"`
	MaxAge          string `json:"max_age,omitempty" doc:"duration, e.g. 72h (default fabric.max_age)"`
	MaxMessages     int64  `json:"max_messages,omitempty" minimum:"-1" doc:"-1 or 0: no limit"`
	MaxBytes        int64  `json:"max_bytes,omitempty" minimum:"-1" doc:"-1 or 0: no limit"`
	MaxDeliveries   int    `json:"max_deliveries,omitempty" minimum:"0" maximum:"1000"`
	AckWait         string `json:"ack_wait,omitempty" doc:"duration, e.g. 30s"`
	DuplicateWindow string `json:"duplicate_window,omitempty" doc:"duration, e.g. 2m"`
}

func (b queueSpecBody) spec() (fabric.QueueSpec, error) {
	s := fabric.QueueSpec{MaxMessages: b.MaxMessages, MaxBytes: b.MaxBytes, MaxDeliveries: b.MaxDeliveries}
	for _, d := range []struct {
		path, v string
		to      *time.Duration
	}{{"body.max_age", b.MaxAge, &s.MaxAge}, {"body.ack_wait", b.AckWait, &s.AckWait}, {"body.duplicate_window", b.DuplicateWindow, &s.DuplicateWindow}} {
		if d.v == "" {
			continue
		}
		v, err := time.ParseDuration(d.v)
		if err != nil || v <= 0 {
			return s, NewError(http.StatusUnprocessableEntity, "invalid_request", d.path+": a positive duration such as 30s or 72h")
		}
		*d.to = v
	}
	return s, nil
}

type createQueueInput struct {
	Tenant      string `path:"tenant" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Tenant"`
	Environment string `path:"environment" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Environment"`
	Application string `path:"application" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Application"`
	Body        queueSpecBody
}

type queueView struct {
	Name  string            `json:"name"`
	Spec  map[string]any    `json:"spec"`
	Stats fabric.QueueStats `json:"stats"`
}

func viewQueue(q fabric.Queue) queueView {
	return queueView{Name: q.Name, Stats: q.Stats, Spec: map[string]any{
		"max_age": q.Spec.MaxAge.String(), "max_messages": q.Spec.MaxMessages, "max_bytes": q.Spec.MaxBytes,
		"max_deliveries": q.Spec.MaxDeliveries, "ack_wait": q.Spec.AckWait.String(), "duplicate_window": q.Spec.DuplicateWindow.String(),
	}}
}

type queueOutput struct{ Body queueView }

type queuesOutput struct {
	Body struct {
		Queues []queueView `json:"queues"`
	}
}

type messageIn struct {
	ID         string            `json:"id,omitempty" maxLength:"256" doc:"makes the publish idempotent within the duplicate window"`
	Data       string            `json:"data,omitempty" doc:"the payload as text (UTF-8)"`
	DataBase64 []byte            `json:"data_base64,omitempty" doc:"the payload as base64, for binary data; not with data"`
	Headers    map[string]string `json:"headers,omitempty" doc:"metadata; names starting Nats- or Penstock- are reserved"`
	RoutingKey string            `json:"routing_key,omitempty" doc:"for exchanges: dot-separated words"`
}

type publishBody struct {
	Messages []messageIn `json:"messages" minItems:"1" doc:"1 to fabric.max_publish_batch messages, stored all or none"`
}

type publishQueueInput struct {
	Tenant      string `path:"tenant" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Tenant"`
	Environment string `path:"environment" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Environment"`
	Application string `path:"application" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Application"`
	Queue       string `path:"queue" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Queue"`
	Body        publishBody
}

type publishExchangeInput struct {
	Tenant      string `path:"tenant" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Tenant"`
	Environment string `path:"environment" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Environment"`
	Application string `path:"application" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Application"`
	Exchange    string `path:"exchange" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Exchange"`
	Body        publishBody
}

type publishOutput struct {
	Body struct {
		Receipts []fabric.Receipt `json:"receipts"`
	}
}

func toMessages(in []messageIn, exchange bool) ([]fabric.Message, error) {
	out := make([]fabric.Message, len(in))
	for i, m := range in {
		if m.Data != "" && len(m.DataBase64) > 0 {
			return nil, NewError(http.StatusUnprocessableEntity, "invalid_request", "body.messages["+strconv.Itoa(i)+"]: set data or data_base64, not both")
		}
		if !exchange && m.RoutingKey != "" {
			return nil, NewError(http.StatusUnprocessableEntity, "invalid_request", "body.messages["+strconv.Itoa(i)+"].routing_key: only for exchanges")
		}
		data := m.DataBase64
		if m.Data != "" {
			data = []byte(m.Data)
		}
		out[i] = fabric.Message{ID: m.ID, Headers: m.Headers, Data: data, RoutingKey: m.RoutingKey}
	}
	return out, nil
}

type consumeInput struct {
	Tenant      string `path:"tenant" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Tenant"`
	Environment string `path:"environment" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Environment"`
	Application string `path:"application" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Application"`
	Queue       string `path:"queue" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Queue"`
	Body        struct {
		Max    int `json:"max,omitempty" minimum:"0" maximum:"1000" doc:"most messages to return (default 1)"`
		WaitMS int `json:"wait_ms,omitempty" minimum:"0" maximum:"30000" doc:"long-poll: how long to wait for the first message"`
	}
}

type deliveryView struct {
	fabric.Delivery
	Data       *string `json:"data,omitempty" doc:"the payload, when it is valid UTF-8"`
	DataBase64 []byte  `json:"data_base64,omitempty" doc:"the payload, when it is not"`
}

func viewPayload(b []byte) (*string, []byte) {
	if utf8.Valid(b) {
		s := string(b)
		return &s, nil
	}
	return nil, b
}

type consumeOutput struct {
	Body struct {
		Messages []deliveryView `json:"messages"`
	}
}

type settleInput struct {
	Tenant      string `path:"tenant" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Tenant"`
	Environment string `path:"environment" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Environment"`
	Application string `path:"application" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Application"`
	Queue       string `path:"queue" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Queue"`
	Body        struct {
		Tokens  []string `json:"tokens" minItems:"1" maxItems:"1000" doc:"ack_token of each delivery"`
		DelayMS int64    `json:"delay_ms,omitempty" minimum:"0" maximum:"43200000" doc:"nack only: wait this long before redelivery"`
	}
}

type deadListInput struct {
	Tenant      string `path:"tenant" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Tenant"`
	Environment string `path:"environment" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Environment"`
	Application string `path:"application" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Application"`
	Queue       string `path:"queue" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Queue"`
	From        uint64 `query:"from" doc:"first dead-letter sequence to return"`
	Limit       int    `query:"limit" default:"100" minimum:"1" maximum:"1000"`
}

type deadView struct {
	fabric.DeadLetter
	Data       *string `json:"data,omitempty"`
	DataBase64 []byte  `json:"data_base64,omitempty"`
}

func viewDead(d fabric.DeadLetter) deadView {
	v := deadView{DeadLetter: d}
	v.Data, v.DataBase64 = viewPayload(d.Data)
	return v
}

type deadListOutput struct {
	Body struct {
		DeadLetters []deadView `json:"dead_letters"`
		Next        uint64     `json:"next,omitempty" doc:"pass as from for the next page; absent at the end"`
	}
}

type deadGetInput struct {
	Tenant      string `path:"tenant" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Tenant"`
	Environment string `path:"environment" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Environment"`
	Application string `path:"application" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Application"`
	Queue       string `path:"queue" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Queue"`
	Seq         uint64 `path:"seq" minimum:"1"`
}

type deadOutput struct{ Body deadView }

type replayInput struct {
	Tenant      string `path:"tenant" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Tenant"`
	Environment string `path:"environment" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Environment"`
	Application string `path:"application" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Application"`
	Queue       string `path:"queue" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Queue"`
	Body        struct {
		Seqs []uint64 `json:"seqs,omitempty" maxItems:"10000" doc:"dead letters to replay; empty replays all"`
	}
}

type countOutput struct {
	Body struct {
		Count uint64 `json:"count"`
	}
}

type createExchangeInput struct {
	Tenant      string `path:"tenant" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Tenant"`
	Environment string `path:"environment" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Environment"`
	Application string `path:"application" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Application"`
	Body        struct {
		Name string              `json:"name" pattern:"^[a-z0-9][a-z0-9-]{0,62}$"`
		Type fabric.ExchangeType `json:"type" enum:"direct,fanout,topic"`
	}
}

type exchangeOutput struct{ Body fabric.Exchange }

type exchangesOutput struct {
	Body struct {
		Exchanges []fabric.Exchange `json:"exchanges"`
	}
}

type bindInput struct {
	Tenant      string `path:"tenant" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Tenant"`
	Environment string `path:"environment" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Environment"`
	Application string `path:"application" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Application"`
	Exchange    string `path:"exchange" pattern:"^[a-z0-9][a-z0-9-]{0,62}$" doc:"Exchange"`
	Body        fabric.QueueBinding
}

func registerFabric(g gate, hapi huma.API, o Options) {
	f := o.Fabric
	tags := []string{"queues"}
	appScope := func(in *appParams) authz.Scope { return in.app().scope() }
	qScope := func(in *queueParams) authz.Scope { return in.app().scope() }
	xScope := func(in *exchangeParams) authz.Scope { return in.app().scope() }
	fail := func(op string, err error, about ...thing) error { return fabricError(o, op, err, about...) }

	register(g, hapi, Route{Action: authz.QueueManage}, huma.Operation{
		OperationID: "queue-create", Method: http.MethodPost, Path: appBase + "/queues",
		Summary: "Create a queue (with its dead-letter queue)", Tags: tags, DefaultStatus: http.StatusCreated,
		Errors: []int{http.StatusConflict, http.StatusUnprocessableEntity},
	}, func(in *createQueueInput) authz.Scope { return in.app().scope() }, func(ctx context.Context, _ *caller, in *createQueueInput) (*queueOutput, error) {
		spec, err := in.Body.spec()
		if err != nil {
			return nil, err
		}
		q, err := f.CreateQueue(ctx, in.app().ref(in.Body.Name), spec)
		if err != nil {
			return nil, fail("create queue", err, in.app().thing("queue", in.Body.Name), in.app().application())
		}
		return &queueOutput{Body: viewQueue(q)}, nil
	})
	register(g, hapi, Route{Action: authz.TenantRead}, huma.Operation{
		OperationID: "queue-list", Method: http.MethodGet, Path: appBase + "/queues",
		Summary: "List an application's queues with their settings and state", Tags: tags,
	}, appScope, func(ctx context.Context, _ *caller, in *appParams) (*queuesOutput, error) {
		qs, err := f.Queues(ctx, in.app().ref(""))
		if err != nil {
			return nil, fail("list queues", err, in.app().application())
		}
		out := &queuesOutput{}
		out.Body.Queues = []queueView{}
		for _, q := range qs {
			out.Body.Queues = append(out.Body.Queues, viewQueue(q))
		}
		return out, nil
	})
	register(g, hapi, Route{Action: authz.TenantRead}, huma.Operation{
		OperationID: "queue-get", Method: http.MethodGet, Path: appBase + "/queues/{queue}",
		Summary: "A queue's settings and stats: depth, in flight, dead letters, rates", Tags: tags,
	}, qScope, func(ctx context.Context, _ *caller, in *queueParams) (*queueOutput, error) {
		q, err := f.Queue(ctx, in.app().ref(in.Queue))
		if err != nil {
			return nil, fail("get queue", err, in.queue())
		}
		return &queueOutput{Body: viewQueue(q)}, nil
	})
	register(g, hapi, Route{Action: authz.QueueManage}, huma.Operation{
		OperationID: "queue-delete", Method: http.MethodDelete, Path: appBase + "/queues/{queue}",
		Summary: "Delete a queue, its messages, dead letters and bindings", Tags: tags, DefaultStatus: http.StatusNoContent,
	}, qScope, func(ctx context.Context, _ *caller, in *queueParams) (*struct{}, error) {
		return nil, fail("delete queue", f.DeleteQueue(ctx, in.app().ref(in.Queue)), in.queue())
	})
	register(g, hapi, Route{Action: authz.QueuePublish, DataPlane: true}, huma.Operation{
		OperationID: "queue-publish", Method: http.MethodPost, Path: appBase + "/queues/{queue}/messages",
		Summary: "Publish messages; answered once they are durable", Tags: tags,
		Errors: []int{http.StatusConflict, http.StatusRequestEntityTooLarge, http.StatusTooManyRequests, http.StatusInsufficientStorage},
	}, func(in *publishQueueInput) authz.Scope { return in.app().scope() }, func(ctx context.Context, _ *caller, in *publishQueueInput) (*publishOutput, error) {
		msgs, err := toMessages(in.Body.Messages, false)
		if err != nil {
			return nil, err
		}
		rec, err := f.Publish(ctx, fabric.Target{Ref: in.app().ref(in.Queue)}, msgs)
		if err != nil {
			return nil, fail("publish", err, in.app().thing("queue", in.Queue))
		}
		out := &publishOutput{}
		out.Body.Receipts = rec
		return out, nil
	})
	register(g, hapi, Route{Action: authz.QueueConsume, DataPlane: true}, huma.Operation{
		OperationID: "queue-consume", Method: http.MethodPost, Path: appBase + "/queues/{queue}/consume",
		Summary: "Take messages (long-poll with wait_ms); each must be acknowledged within the ack wait", Tags: tags,
	}, func(in *consumeInput) authz.Scope { return in.app().scope() }, func(ctx context.Context, _ *caller, in *consumeInput) (*consumeOutput, error) {
		n := max(in.Body.Max, 1)
		ds, err := f.Consume(ctx, in.app().ref(in.Queue), n, time.Duration(in.Body.WaitMS)*time.Millisecond)
		if err != nil {
			return nil, fail("consume", err, in.app().thing("queue", in.Queue))
		}
		out := &consumeOutput{}
		out.Body.Messages = make([]deliveryView, len(ds))
		for i, d := range ds {
			out.Body.Messages[i] = deliveryView{Delivery: d}
			out.Body.Messages[i].Data, out.Body.Messages[i].DataBase64 = viewPayload(d.Data)
		}
		return out, nil
	})
	for _, s := range []struct {
		op, summary string
		how         fabric.Settlement
		action      authz.Action
	}{
		{"ack", "Acknowledge deliveries: the messages are deleted", fabric.Ack, authz.QueueConsume},
		{"nack", "Negatively acknowledge: deliver again, after delay_ms", fabric.Nack, authz.QueueConsume},
		{"extend", "Still working: restart the deliveries' ack wait", fabric.Extend, authz.QueueConsume},
		{"reject", "Reject deliveries: straight to the dead-letter queue", fabric.Reject, authz.QueueConsume},
	} {
		register(g, hapi, Route{Action: s.action, DataPlane: true}, huma.Operation{
			OperationID: "queue-" + s.op, Method: http.MethodPost, Path: appBase + "/queues/{queue}/" + s.op,
			Summary: s.summary, Tags: tags, DefaultStatus: http.StatusNoContent,
		}, func(in *settleInput) authz.Scope { return in.app().scope() }, func(ctx context.Context, _ *caller, in *settleInput) (*struct{}, error) {
			return nil, fail(s.op, f.Settle(ctx, in.app().ref(in.Queue), in.Body.Tokens, s.how, time.Duration(in.Body.DelayMS)*time.Millisecond), in.app().thing("queue", in.Queue))
		})
	}
	register(g, hapi, Route{Action: authz.QueueConsume}, huma.Operation{
		OperationID: "dead-letter-list", Method: http.MethodGet, Path: appBase + "/queues/{queue}/dead-letters",
		Summary: "List a queue's dead letters with their reason, deliveries and original metadata", Tags: tags,
	}, func(in *deadListInput) authz.Scope { return in.app().scope() }, func(ctx context.Context, _ *caller, in *deadListInput) (*deadListOutput, error) {
		ds, next, err := f.DeadLetters(ctx, in.app().ref(in.Queue), in.From, in.Limit)
		if err != nil {
			return nil, fail("list dead letters", err, in.app().thing("queue", in.Queue))
		}
		out := &deadListOutput{}
		out.Body.DeadLetters = []deadView{}
		for _, d := range ds {
			out.Body.DeadLetters = append(out.Body.DeadLetters, viewDead(d))
		}
		out.Body.Next = next
		return out, nil
	})
	register(g, hapi, Route{Action: authz.QueueConsume}, huma.Operation{
		OperationID: "dead-letter-get", Method: http.MethodGet, Path: appBase + "/queues/{queue}/dead-letters/{seq}",
		Summary: "Inspect one dead letter", Tags: tags,
	}, func(in *deadGetInput) authz.Scope { return in.app().scope() }, func(ctx context.Context, _ *caller, in *deadGetInput) (*deadOutput, error) {
		d, err := f.DeadLetter(ctx, in.app().ref(in.Queue), in.Seq)
		if err != nil {
			return nil, fail("get dead letter", err, in.app().thing("queue", in.Queue),
				thing{"dead letter", fmt.Sprintf("dead letter %d of queue %q in %s", in.Seq, in.Queue, in.app().scope())})
		}
		return &deadOutput{Body: viewDead(d)}, nil
	})
	register(g, hapi, Route{Action: authz.QueueManage}, huma.Operation{
		OperationID: "dead-letter-replay", Method: http.MethodPost, Path: appBase + "/queues/{queue}/dead-letters/replay",
		Summary: "Move dead letters back to the queue (all, or the listed seqs)", Tags: tags,
	}, func(in *replayInput) authz.Scope { return in.app().scope() }, func(ctx context.Context, _ *caller, in *replayInput) (*countOutput, error) {
		n, err := f.Replay(ctx, in.app().ref(in.Queue), in.Body.Seqs)
		if err != nil {
			return nil, fail("replay", err, in.app().thing("queue", in.Queue))
		}
		out := &countOutput{}
		out.Body.Count = uint64(n)
		return out, nil
	})
	register(g, hapi, Route{Action: authz.QueueManage}, huma.Operation{
		OperationID: "dead-letter-purge", Method: http.MethodDelete, Path: appBase + "/queues/{queue}/dead-letters",
		Summary: "Delete every dead letter of a queue", Tags: tags,
	}, qScope, func(ctx context.Context, _ *caller, in *queueParams) (*countOutput, error) {
		n, err := f.PurgeDeadLetters(ctx, in.app().ref(in.Queue))
		if err != nil {
			return nil, fail("purge dead letters", err, in.queue())
		}
		out := &countOutput{}
		out.Body.Count = n
		return out, nil
	})

	xtags := []string{"exchanges"}
	register(g, hapi, Route{Action: authz.QueueManage}, huma.Operation{
		OperationID: "exchange-create", Method: http.MethodPost, Path: appBase + "/exchanges",
		Summary: "Create an exchange: direct, fanout or topic", Tags: xtags, DefaultStatus: http.StatusCreated,
		Errors: []int{http.StatusConflict},
	}, func(in *createExchangeInput) authz.Scope { return in.app().scope() }, func(ctx context.Context, _ *caller, in *createExchangeInput) (*exchangeOutput, error) {
		x, err := f.CreateExchange(ctx, in.app().ref(in.Body.Name), in.Body.Type)
		if err != nil {
			return nil, fail("create exchange", err, in.app().thing("exchange", in.Body.Name), in.app().application())
		}
		return &exchangeOutput{Body: x}, nil
	})
	register(g, hapi, Route{Action: authz.TenantRead}, huma.Operation{
		OperationID: "exchange-list", Method: http.MethodGet, Path: appBase + "/exchanges",
		Summary: "List an application's exchanges with their bindings", Tags: xtags,
	}, appScope, func(ctx context.Context, _ *caller, in *appParams) (*exchangesOutput, error) {
		xs, err := f.Exchanges(ctx, in.app().ref(""))
		if err != nil {
			return nil, fail("list exchanges", err, in.app().application())
		}
		out := &exchangesOutput{}
		out.Body.Exchanges = append([]fabric.Exchange{}, xs...)
		return out, nil
	})
	register(g, hapi, Route{Action: authz.TenantRead}, huma.Operation{
		OperationID: "exchange-get", Method: http.MethodGet, Path: appBase + "/exchanges/{exchange}",
		Summary: "An exchange and its bindings", Tags: xtags,
	}, xScope, func(ctx context.Context, _ *caller, in *exchangeParams) (*exchangeOutput, error) {
		x, err := f.GetExchange(ctx, in.app().ref(in.Exchange))
		if err != nil {
			return nil, fail("get exchange", err, in.exchange())
		}
		return &exchangeOutput{Body: x}, nil
	})
	register(g, hapi, Route{Action: authz.QueueManage}, huma.Operation{
		OperationID: "exchange-delete", Method: http.MethodDelete, Path: appBase + "/exchanges/{exchange}",
		Summary: "Delete an exchange and its bindings", Tags: xtags, DefaultStatus: http.StatusNoContent,
	}, xScope, func(ctx context.Context, _ *caller, in *exchangeParams) (*struct{}, error) {
		return nil, fail("delete exchange", f.DeleteExchange(ctx, in.app().ref(in.Exchange)), in.exchange())
	})
	register(g, hapi, Route{Action: authz.QueueManage}, huma.Operation{
		OperationID: "exchange-bind", Method: http.MethodPost, Path: appBase + "/exchanges/{exchange}/bind",
		Summary: "Bind a queue of the same application (idempotent)", Tags: xtags,
	}, func(in *bindInput) authz.Scope { return in.app().scope() }, func(ctx context.Context, _ *caller, in *bindInput) (*exchangeOutput, error) {
		x, err := f.Bind(ctx, in.app().ref(in.Exchange), in.Body)
		if err != nil {
			return nil, fail("bind", err, in.binding()...)
		}
		return &exchangeOutput{Body: x}, nil
	})
	register(g, hapi, Route{Action: authz.QueueManage}, huma.Operation{
		OperationID: "exchange-unbind", Method: http.MethodPost, Path: appBase + "/exchanges/{exchange}/unbind",
		Summary: "Remove a binding", Tags: xtags,
	}, func(in *bindInput) authz.Scope { return in.app().scope() }, func(ctx context.Context, _ *caller, in *bindInput) (*exchangeOutput, error) {
		x, err := f.Unbind(ctx, in.app().ref(in.Exchange), in.Body)
		if err != nil {
			return nil, fail("unbind", err, in.binding()...)
		}
		return &exchangeOutput{Body: x}, nil
	})
	register(g, hapi, Route{Action: authz.QueuePublish, DataPlane: true}, huma.Operation{
		OperationID: "exchange-publish", Method: http.MethodPost, Path: appBase + "/exchanges/{exchange}/messages",
		Summary: "Publish messages to an exchange, routed by each one's routing_key; answered once durable", Tags: xtags,
		Errors: []int{http.StatusRequestEntityTooLarge, http.StatusTooManyRequests, http.StatusInsufficientStorage},
	}, func(in *publishExchangeInput) authz.Scope { return in.app().scope() }, func(ctx context.Context, _ *caller, in *publishExchangeInput) (*publishOutput, error) {
		msgs, err := toMessages(in.Body.Messages, true)
		if err != nil {
			return nil, err
		}
		rec, err := f.Publish(ctx, fabric.Target{Ref: in.app().ref(in.Exchange), Exchange: true}, msgs)
		if err != nil {
			return nil, fail("publish", err, in.app().thing("exchange", in.Exchange))
		}
		out := &publishOutput{}
		out.Body.Receipts = rec
		return out, nil
	})
}

// thing is something a request names, as an answer names it that says it is missing or
// exists already. Its kind is matched with a fabric.Missing's.
type thing struct{ kind, desc string }

func (p appParams) thing(kind, name string) thing {
	return thing{kind, fmt.Sprintf("%s %q in %s", kind, name, p.scope())}
}

func (p appParams) application() thing {
	return thing{"application", "application " + p.scope().String()}
}

func (p *queueParams) queue() thing { return p.app().thing("queue", p.Queue) }

func (p *exchangeParams) exchange() thing { return p.app().thing("exchange", p.Exchange) }

// binding is what a bind or unbind names: the exchange, the queue, the binding of the two.
func (in *bindInput) binding() []thing {
	return []thing{in.app().thing("exchange", in.Exchange), in.app().thing("queue", in.Body.Queue),
		{"binding", fmt.Sprintf("binding of queue %q with key %q to exchange %q in %s", in.Body.Queue, in.Body.Key, in.Exchange, in.app().scope())}}
}

// which is the thing of about that err says is missing: the one of the kind a fabric.Missing
// gives, else the first. It echoes only what the request named.
func which(err error, about []thing) (thing, bool) {
	var m *fabric.Missing
	if !errors.As(err, &m) {
		if len(about) == 0 {
			return thing{}, false
		}
		return about[0], true
	}
	for _, t := range about {
		if t.kind == m.Kind {
			return t, true
		}
	}
	return thing{}, false
}

// fabricError maps the fabric's errors to the API's codes. A missing or existing thing is
// named from about, the things the request names (the first is what it is about).
func fabricError(o Options, op string, err error, about ...thing) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, fabric.ErrNotFound):
		t, ok := which(err, about)
		if !ok {
			return notFound()
		}
		return NewError(http.StatusNotFound, "not_found", "no such "+t.desc)
	case errors.Is(err, fabric.ErrExists):
		if len(about) > 0 {
			return NewError(http.StatusConflict, "conflict", about[0].desc+" already exists")
		}
		return NewError(http.StatusConflict, "conflict", "it already exists")
	case errors.Is(err, fabric.ErrInvalid):
		return NewError(http.StatusUnprocessableEntity, "invalid_request", err.Error())
	case errors.Is(err, fabric.ErrQueueFull):
		return NewError(http.StatusConflict, "queue.full", "the queue holds its maximum messages or bytes; nothing was stored")
	case errors.Is(err, fabric.ErrUnsettled):
		return NewError(http.StatusConflict, "delivery.unknown", err.Error())
	case errors.Is(err, fabric.ErrPayloadLimit):
		return NewError(http.StatusRequestEntityTooLarge, "quota.payload", err.Error())
	case errors.Is(err, fabric.ErrRateLimited):
		return NewError(http.StatusTooManyRequests, "quota.publish_rate", "the tenant-environment's publish-rate quota is spent; nothing was stored")
	case errors.Is(err, fabric.ErrStorageQuota):
		return NewError(http.StatusInsufficientStorage, "quota.storage", "the tenant-environment's storage quota is full; nothing was stored")
	case errors.Is(err, engine.ErrAccountUnavailable):
		return NewError(http.StatusNotImplemented, "fabric.unavailable", "queues need the embedded engine or an operator-managed NATS with tenant accounts")
	case errors.Is(err, fabric.ErrNotDurable):
		return NewError(http.StatusServiceUnavailable, "not_durable", "the engine applied the request but the disk did not confirm it, and cannot be trusted to until Penstock is restarted on a sound disk; the request may have taken effect (a publish retried with the same message id afterwards is stored once)")
	case errors.Is(err, fabric.ErrInDoubt):
		return NewError(http.StatusServiceUnavailable, "in_doubt", "the queue's leader changed while the publish was in flight, so it may or may not be stored; retry (a message retried with the same id is stored once)")
	case errors.Is(err, fabric.ErrClosed):
		return NewError(http.StatusServiceUnavailable, "unavailable", "publishing stopped (the queue was deleted or the server is stopping); retry, with message ids to stay idempotent")
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return NewError(http.StatusServiceUnavailable, "timeout", "the engine did not answer in time; publishes with an id can be retried safely")
	}
	return internalError(o, op, err)
}

func (in *createQueueInput) app() appParams {
	return appParams{in.Tenant, in.Environment, in.Application}
}

func (in *publishQueueInput) app() appParams {
	return appParams{in.Tenant, in.Environment, in.Application}
}

func (in *publishExchangeInput) app() appParams {
	return appParams{in.Tenant, in.Environment, in.Application}
}

func (in *consumeInput) app() appParams { return appParams{in.Tenant, in.Environment, in.Application} }

func (in *settleInput) app() appParams { return appParams{in.Tenant, in.Environment, in.Application} }

func (in *deadListInput) app() appParams { return appParams{in.Tenant, in.Environment, in.Application} }

func (in *deadGetInput) app() appParams { return appParams{in.Tenant, in.Environment, in.Application} }

func (in *replayInput) app() appParams { return appParams{in.Tenant, in.Environment, in.Application} }

func (in *createExchangeInput) app() appParams {
	return appParams{in.Tenant, in.Environment, in.Application}
}

func (in *bindInput) app() appParams { return appParams{in.Tenant, in.Environment, in.Application} }

func (p *appParams) app() appParams { return *p }
