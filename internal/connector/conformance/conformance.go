// Package conformance is the test suite every connector passes: open, read everything in
// batches and acknowledge it, resume from the checkpoint without rereading, reread what was
// not acknowledged, write batches durably, keep working after its peer restarts, and fail
// clearly on bad credentials. It is used from tests only.
package conformance

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/penstock/penstock/internal/connector"
	"github.com/penstock/penstock/internal/egress"
	"github.com/penstock/penstock/internal/redact"
)

// State is a checkpoint kept in memory, standing in for the application's store (whose
// persistence the pipeline tests cover) so a suite can reopen a source with the same state.
type State struct {
	mu sync.Mutex
	b  []byte
}

// Load returns the saved checkpoint.
func (s *State) Load(context.Context) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.b), nil
}

// Save replaces the checkpoint.
func (s *State) Save(_ context.Context, b []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b = slices.Clone(b)
	return nil
}

// Secrets is a fixed set of secrets.
type Secrets map[string]string

// Secret returns a secret or says it does not exist.
func (s Secrets) Secret(_ context.Context, name string) (redact.Secret, error) {
	v, ok := s[name]
	if !ok {
		return redact.Secret{}, fmt.Errorf("secret %q does not exist", name)
	}
	return redact.NewSecret(v), nil
}

// Resources are a test tenant's: loopback allowed by its egress policy, as the tests
// allow it explicitly.
func Resources(secrets Secrets, files string) connector.Resources {
	return connector.Resources{
		Dialer: &egress.Dialer{Policy: egress.Policy{Tenant: "acme", Rules: []egress.Rule{
			{Prefix: netip.MustParsePrefix("127.0.0.0/8")}}}},
		Secrets: secrets, State: &State{}, Files: files, Pipeline: "conformance",
	}
}

// Source describes a source connector under test.
type Source struct {
	// New builds the source from its plugin and settings with res.
	New func(res connector.Resources) connector.Source
	// Seed adds records (each has a unique integer "id") to what the source reads.
	Seed func(t *testing.T, ids []int)
	// ID reads a record's id back.
	ID func(connector.Record) int
	// Restart restarts the peer or cuts the connector's connections (nil: no peer).
	Restart func(t *testing.T)
	// Bad builds a source whose credentials are wrong, and the text its error must contain.
	Bad     func(res connector.Resources) connector.Source
	BadWant string
}

// RunSource runs the source suite.
func RunSource(t *testing.T, s Source, res connector.Resources) {
	ctx := context.Background()
	open := func() connector.Source {
		t.Helper()
		src := s.New(res)
		if err := src.Connect(ctx); err != nil {
			t.Fatalf("connect: %v", err)
		}
		return src
	}
	readAll := func(src connector.Source, ack bool) []int {
		t.Helper()
		var ids []int
		for range 1000 {
			recs, settle, err := src.Read(ctx, 7)
			if errors.Is(err, connector.ErrEndOfInput) {
				return ids
			}
			if err != nil {
				t.Fatalf("read: %v", err)
			}
			for _, r := range recs {
				ids = append(ids, s.ID(r))
			}
			var aerr error
			if !ack {
				aerr = errors.New("not committed")
			}
			if err := settle(ctx, aerr); err != nil {
				t.Fatalf("ack: %v", err)
			}
			if !ack {
				return ids
			}
		}
		t.Fatal("the source never ended")
		return nil
	}
	want := func(from, to int) []int {
		var out []int
		for i := from; i <= to; i++ {
			out = append(out, i)
		}
		return out
	}

	t.Run("read and acknowledge", func(t *testing.T) {
		s.Seed(t, want(1, 20))
		src := open()
		got := readAll(src, true)
		src.Close(ctx)
		slices.Sort(got)
		if !slices.Equal(got, want(1, 20)) {
			t.Fatalf("read %v", got)
		}
	})
	t.Run("resume from the checkpoint", func(t *testing.T) {
		src := open()
		if got := readAll(src, true); len(got) != 0 {
			t.Fatalf("reread acknowledged records %v", got)
		}
		src.Close(ctx)
		s.Seed(t, want(21, 25))
		src = open()
		got := readAll(src, true)
		src.Close(ctx)
		slices.Sort(got)
		if !slices.Equal(got, want(21, 25)) {
			t.Fatalf("after the checkpoint: %v", got)
		}
	})
	t.Run("reread what was not acknowledged", func(t *testing.T) {
		s.Seed(t, want(26, 30))
		src := open()
		first := readAll(src, false)
		src.Close(ctx)
		if len(first) == 0 {
			t.Fatal("nothing read")
		}
		// A queue redelivers a nacked message after a moment.
		deadline := time.Now().Add(30 * time.Second)
		var got []int
		for {
			src = open()
			got = append(got, readAll(src, true)...)
			src.Close(ctx)
			if len(got) >= 5 || time.Now().After(deadline) {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		slices.Sort(got)
		if !slices.Equal(got, want(26, 30)) {
			t.Fatalf("after a failed batch: %v (first read %v)", got, first)
		}
	})
	if s.Restart != nil {
		t.Run("reconnect after the peer restarts", func(t *testing.T) {
			src := open()
			defer src.Close(ctx)
			s.Seed(t, want(31, 33))
			s.Restart(t)
			var got []int
			deadline := time.Now().Add(20 * time.Second)
			for len(got) < 3 && time.Now().Before(deadline) {
				recs, settle, err := src.Read(ctx, 10)
				if err != nil && !errors.Is(err, connector.ErrEndOfInput) {
					time.Sleep(100 * time.Millisecond) // the first read after a restart may fail
					continue
				}
				for _, r := range recs {
					got = append(got, s.ID(r))
				}
				if settle != nil {
					if err := settle(ctx, nil); err != nil {
						t.Fatalf("ack after restart: %v", err)
					}
				}
			}
			slices.Sort(got)
			if !slices.Equal(got, want(31, 33)) {
				t.Fatalf("after the restart: %v", got)
			}
		})
	}
	if s.Bad != nil {
		t.Run("bad credentials", func(t *testing.T) {
			src := s.Bad(res)
			err := src.Connect(ctx)
			if err == nil {
				_, _, err = src.Read(ctx, 1)
			}
			if err == nil || !strings.Contains(err.Error(), s.BadWant) {
				t.Fatalf("bad credentials: %v, want %q", err, s.BadWant)
			}
			src.Close(ctx)
		})
	}
}

// Sink describes a sink connector under test.
type Sink struct {
	New func(res connector.Resources) connector.Sink
	// Stored returns the ids the sink's system holds, as many times as it holds each.
	Stored  func(t *testing.T) []int
	Restart func(t *testing.T)
	Bad     func(res connector.Resources) connector.Sink
	BadWant string
}

func records(from, to int) []connector.Record {
	var out []connector.Record
	for i := from; i <= to; i++ {
		out = append(out, connector.Record{"id": int64(i), "name": fmt.Sprintf("record %d", i)})
	}
	return out
}

// RunSink runs the sink suite.
func RunSink(t *testing.T, s Sink, res connector.Resources) {
	ctx := context.Background()
	sink := s.New(res)
	if err := sink.Connect(ctx); err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer sink.Close(ctx)
	t.Run("write batches", func(t *testing.T) {
		for _, b := range [][2]int{{1, 10}, {11, 11}, {12, 30}} {
			if err := sink.Write(ctx, records(b[0], b[1])); err != nil {
				t.Fatalf("write %v: %v", b, err)
			}
		}
		got := s.Stored(t)
		slices.Sort(got)
		var want []int
		for i := 1; i <= 30; i++ {
			want = append(want, i)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("stored %v", got)
		}
	})
	if s.Restart != nil {
		t.Run("reconnect after the peer restarts", func(t *testing.T) {
			s.Restart(t)
			// As the pipeline retries a failed write; the peer may take a while to come back.
			var err error
			for deadline := time.Now().Add(20 * time.Second); ; {
				if err = sink.Write(ctx, records(31, 32)); err == nil || time.Now().After(deadline) {
					break
				}
				time.Sleep(200 * time.Millisecond)
			}
			if err != nil {
				t.Fatalf("write after the restart: %v", err)
			}
			if got := s.Stored(t); !slices.Contains(got, 31) || !slices.Contains(got, 32) {
				t.Fatalf("after the restart: %v", got)
			}
		})
	}
	if s.Bad != nil {
		t.Run("bad credentials", func(t *testing.T) {
			bad := s.Bad(res)
			err := bad.Connect(ctx)
			if err == nil {
				err = bad.Write(ctx, records(100, 100))
			}
			if err == nil || !strings.Contains(err.Error(), s.BadWant) {
				t.Fatalf("bad credentials: %v, want %q", err, s.BadWant)
			}
			bad.Close(ctx)
		})
	}
}
