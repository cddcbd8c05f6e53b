// Package connector owns the contract between a pipeline and the systems it reads and writes:
// the Source and Sink interfaces, the registry of connectors, their configuration decoding, and
// the resources a connector is handed. A connector reaches the network only through the egress
// dialer it is given and reads credentials only through the secrets it is given; it must never
// open sockets or read secrets any other way.
package connector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"time"

	"github.com/penstock/penstock/internal/egress"
	"github.com/penstock/penstock/internal/redact"
)

// Record is one record: field names to JSON-like values (string, float64, int64, bool, nil,
// []any, map[string]any, time.Time).
type Record = map[string]any

// AckFunc settles a batch read from a source: nil after the sink durably committed it (the
// source deletes it or advances its cursor), or the error that stopped it (the source keeps it
// for another read).
type AckFunc func(ctx context.Context, err error) error

// ErrEndOfInput is returned by Read when a bounded source has nothing more for this run.
var ErrEndOfInput = errors.New("end of input")

// Source reads records.
type Source interface {
	// Connect opens the source; ctx bounds the connect phase only.
	Connect(ctx context.Context) error
	// Read returns up to max records and the function that settles them. It returns
	// ErrEndOfInput when a bounded run is done; a continuous source waits instead.
	Read(ctx context.Context, max int) ([]Record, AckFunc, error)
	Close(ctx context.Context) error
}

// Sink writes records.
type Sink interface {
	Connect(ctx context.Context) error
	// Write commits a batch durably, or fails it as a whole.
	Write(ctx context.Context, batch []Record) error
	Close(ctx context.Context) error
}

// State is a pipeline's checkpoint, kept in its application's store.
type State interface {
	Load(ctx context.Context) ([]byte, error)
	Save(ctx context.Context, b []byte) error
}

// Secrets reads the application's secrets.
type Secrets interface {
	Secret(ctx context.Context, name string) (redact.Secret, error)
}

// Queues is the fabric as a connector sees it: one application's queues.
type Queues interface {
	Publish(ctx context.Context, queue string, batch [][]byte, ids []string) error
	Consume(ctx context.Context, queue string, max int) (data [][]byte, settle func(ctx context.Context, err error) error, err error)
}

// Resources is everything a connector may use, scoped to one pipeline of one application.
type Resources struct {
	Logger  *slog.Logger
	Dialer  *egress.Dialer
	Secrets Secrets
	State   State
	Queues  Queues
	// Files is the tenant's root directory for file connectors ("" when none is configured).
	Files string
	// Pipeline names the pipeline, for connectors that keep names per pipeline.
	Pipeline string
}

// Kind is what a connector does.
type Kind string

// The kinds.
const (
	SourceKind Kind = "source"
	SinkKind   Kind = "sink"
)

// Plugin describes one connector: its name, and constructors that decode their configuration
// (returning errors that name the field path) and build it with the resources given.
type Plugin struct {
	Name string
	Doc  string
	// Source and Sink are nil where the connector does not read or write.
	Source func(path string, cfg map[string]any, res Resources) (Source, Refs, error)
	Sink   func(path string, cfg map[string]any, res Resources) (Sink, Refs, error)
}

// Refs is what a configuration refers to beyond itself, for validation before it is accepted.
type Refs struct {
	// Secrets are the secret names it reads, by field path.
	Secrets map[string]string
	// Dials are the host:port addresses it connects to, by field path.
	Dials map[string]string
}

// Merge adds o's references to r.
func (r *Refs) Merge(o Refs) {
	for k, v := range o.Secrets {
		if r.Secrets == nil {
			r.Secrets = map[string]string{}
		}
		r.Secrets[k] = v
	}
	for k, v := range o.Dials {
		if r.Dials == nil {
			r.Dials = map[string]string{}
		}
		r.Dials[k] = v
	}
}

// Registry holds the connectors, built explicitly by the application.
type Registry struct{ plugins map[string]Plugin }

// NewRegistry builds a registry of plugins.
func NewRegistry(plugins ...Plugin) *Registry {
	r := &Registry{plugins: map[string]Plugin{}}
	for _, p := range plugins {
		if _, dup := r.plugins[p.Name]; dup {
			panic("connector " + p.Name + " registered twice")
		}
		r.plugins[p.Name] = p
	}
	return r
}

// Lookup finds a connector that can act as kind.
func (r *Registry) Lookup(name string, kind Kind) (Plugin, error) {
	p, ok := r.plugins[name]
	if !ok || kind == SourceKind && p.Source == nil || kind == SinkKind && p.Sink == nil {
		return Plugin{}, fmt.Errorf("unknown %s connector %q (have: %v)", kind, name, r.Names(kind))
	}
	return p, nil
}

// Names lists the connectors that can act as kind.
func (r *Registry) Names(kind Kind) []string {
	var out []string
	for n, p := range r.plugins {
		if kind == SourceKind && p.Source != nil || kind == SinkKind && p.Sink != nil {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

// RecordErrors is what a sink returns when it committed a batch except some records that it
// cannot write as they are (by index in the batch): retrying will not help them, so the
// pipeline sends them to its dead-letter queue.
type RecordErrors map[int]error

func (e RecordErrors) Error() string {
	idx := make([]int, 0, len(e))
	for i := range e {
		idx = append(idx, i)
	}
	sort.Ints(idx)
	return fmt.Sprintf("%d records not written; first, record %d: %v", len(e), idx[0], e[idx[0]])
}

// RetryError asks for the write to be tried again no sooner than After (0: the pipeline's
// backoff decides).
type RetryError struct {
	Err   error
	After time.Duration
}

func (e *RetryError) Error() string { return e.Err.Error() }
func (e *RetryError) Unwrap() error { return e.Err }
