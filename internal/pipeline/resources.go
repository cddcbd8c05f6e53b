package pipeline

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/penstock/penstock/internal/connector"
	"github.com/penstock/penstock/internal/fabric"
	"github.com/penstock/penstock/internal/keyring"
	"github.com/penstock/penstock/internal/redact"
)

// These adapters are what makes a pipeline run as its application: each is bound to one
// application's scope, so a connector handed them cannot name another application's secrets,
// queues or state.

type appSecrets struct {
	s   SecretReader
	app keyring.Scope
}

// SecretReader reads an application's secrets.
type SecretReader func(ctx context.Context, app keyring.Scope, name string) (redact.Secret, error)

func (a appSecrets) Secret(ctx context.Context, name string) (redact.Secret, error) {
	v, err := a.s(ctx, a.app, name)
	if errors.Is(err, keyring.ErrNotFound) {
		return redact.Secret{}, fmt.Errorf("secret %q does not exist in application %s", name, a.app)
	}
	return v, err
}

type pipelineState struct {
	sealed *keyring.Sealed
	app    keyring.Scope
	name   string
}

func (p pipelineState) Load(ctx context.Context) ([]byte, error) {
	b, _, err := p.sealed.Get(ctx, p.app, p.name)
	if errors.Is(err, keyring.ErrNotFound) {
		return nil, nil
	}
	return b, err
}

func (p pipelineState) Save(ctx context.Context, b []byte) error {
	_, err := p.sealed.Put(ctx, p.app, p.name, b)
	return err
}

// AppQueues is the fabric as one application's connectors see it: its queues only.
func AppQueues(f *fabric.Service, app keyring.Scope) connector.Queues { return appQueues{f, app} }

type appQueues struct {
	f   *fabric.Service
	app keyring.Scope
}

func (q appQueues) ref(name string) fabric.Ref {
	return fabric.Ref{Tenant: q.app.Tenant, Environment: q.app.Environment, Application: q.app.Application, Name: name}
}

func (q appQueues) Publish(ctx context.Context, queue string, batch [][]byte, ids []string) error {
	const chunk = 500
	for len(batch) > 0 {
		n := min(chunk, len(batch))
		msgs := make([]fabric.Message, n)
		for i := range n {
			msgs[i] = fabric.Message{Data: batch[i]}
			if ids != nil {
				msgs[i].ID = ids[i]
			}
		}
		if _, err := q.f.Publish(ctx, fabric.Target{Ref: q.ref(queue)}, msgs); err != nil {
			return err
		}
		batch = batch[n:]
		if ids != nil {
			ids = ids[n:]
		}
	}
	return nil
}

func (q appQueues) Consume(ctx context.Context, queue string, max int) ([][]byte, func(context.Context, error) error, error) {
	ds, err := q.f.Consume(ctx, q.ref(queue), min(max, 1000), 2*time.Second)
	if err != nil {
		return nil, nil, err
	}
	data := make([][]byte, len(ds))
	tokens := make([]string, len(ds))
	for i, d := range ds {
		data[i], tokens[i] = d.Data, d.AckToken
	}
	settle := func(ctx context.Context, err error) error {
		if len(tokens) == 0 {
			return nil
		}
		if err != nil {
			return q.f.Settle(ctx, q.ref(queue), tokens, fabric.Nack, time.Second)
		}
		return q.f.Settle(ctx, q.ref(queue), tokens, fabric.Ack, 0)
	}
	return data, settle, nil
}
