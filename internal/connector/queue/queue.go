// Package queue is the Penstock queue connector: a source that consumes one of the pipeline's
// application's queues (acknowledging each batch once the sink committed it) and a sink that
// publishes to one. It reaches only the queues of the application it is handed.
package queue

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/penstock/penstock/internal/connector"
	"github.com/penstock/penstock/internal/names"
)

// Plugin is the queue connector.
var Plugin = connector.Plugin{
	Name:   "queue",
	Doc:    "Penstock queues of the pipeline's application: JSON records",
	Source: newSource,
	Sink:   newSink,
}

type config struct {
	Queue string `json:"queue" required:"true"`
}

func decode(path string, cfg map[string]any) (config, error) {
	var c config
	if _, err := connector.Decode(path, cfg, &c); err != nil {
		return c, err
	}
	if err := names.Check("queue", c.Queue); err != nil {
		return c, fmt.Errorf("%s.queue: %v", path, err)
	}
	return c, nil
}

// Source consumes a queue. A message that is a JSON object is that record; anything else is
// the record {"data": "<the payload as text>"}.
type Source struct {
	cfg config
	res connector.Resources
}

var _ connector.Source = (*Source)(nil)

func newSource(path string, cfg map[string]any, res connector.Resources) (connector.Source, connector.Refs, error) {
	c, err := decode(path, cfg)
	return &Source{cfg: c, res: res}, connector.Refs{}, err
}

// Connect checks the queues are there.
func (s *Source) Connect(context.Context) error {
	if s.res.Queues == nil {
		return fmt.Errorf("queue: no queues")
	}
	return nil
}

// Read consumes up to max messages, waiting up to the queue's long-poll for the first.
func (s *Source) Read(ctx context.Context, max int) ([]connector.Record, connector.AckFunc, error) {
	data, settle, err := s.res.Queues.Consume(ctx, s.cfg.Queue, max)
	if err != nil {
		return nil, nil, err
	}
	if len(data) == 0 {
		return nil, nil, connector.ErrEndOfInput
	}
	out := make([]connector.Record, len(data))
	for i, d := range data {
		var r connector.Record
		if json.Unmarshal(d, &r) != nil || r == nil {
			r = connector.Record{"data": string(d)}
		}
		out[i] = r
	}
	return out, connector.AckFunc(settle), nil
}

// Close does nothing: the queues belong to the application.
func (s *Source) Close(context.Context) error { return nil }

// Sink publishes records as JSON, one message each, the batch atomically.
type Sink struct {
	cfg config
	res connector.Resources
}

var _ connector.Sink = (*Sink)(nil)

func newSink(path string, cfg map[string]any, res connector.Resources) (connector.Sink, connector.Refs, error) {
	c, err := decode(path, cfg)
	return &Sink{cfg: c, res: res}, connector.Refs{}, err
}

// Connect checks the queues are there.
func (s *Sink) Connect(context.Context) error {
	if s.res.Queues == nil {
		return fmt.Errorf("queue: no queues")
	}
	return nil
}

// Write publishes the batch.
func (s *Sink) Write(ctx context.Context, batch []connector.Record) error {
	msgs := make([][]byte, len(batch))
	bad := connector.RecordErrors{}
	for i, r := range batch {
		b, err := json.Marshal(r)
		if err != nil {
			bad[i] = err
			continue
		}
		msgs[i] = b
	}
	if len(bad) > 0 {
		// Publish the rest on their own.
		var ok [][]byte
		for i, m := range msgs {
			if _, isBad := bad[i]; !isBad {
				ok = append(ok, m)
			}
		}
		msgs = ok
	}
	if len(msgs) > 0 {
		if err := s.res.Queues.Publish(ctx, s.cfg.Queue, msgs, nil); err != nil {
			return err
		}
	}
	if len(bad) > 0 {
		return bad
	}
	return nil
}

// Close does nothing.
func (s *Sink) Close(context.Context) error { return nil }
