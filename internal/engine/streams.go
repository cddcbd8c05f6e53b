package engine

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
)

// StreamState is what the embedded engine holds of one stream, as it reports it.
type StreamState struct {
	Account string `json:"account"`
	Stream  string `json:"stream"`
	First   uint64 `json:"first_seq"`
	Last    uint64 `json:"last_seq"`
	Msgs    uint64 `json:"messages"`
	// Created tells a stream from another of the same name made after it was deleted.
	Created time.Time `json:"created"`
	// FirstTime is when the first stored message was written; MaxAge is how long the stream
	// keeps messages (0: no limit). Messages older than MaxAge leave while the server is
	// stopped too.
	FirstTime time.Time     `json:"first_time"`
	MaxAge    time.Duration `json:"max_age,omitempty"`
	// Lost are sequences the engine found damaged and dropped while it recovered or read the
	// stream.
	Lost []uint64 `json:"lost,omitempty"`
}

// Streams lists every stream of every account of the embedded engine with its state. Every
// stored account is opened when the engine opens, so the list covers the whole store.
func (e *Engine) Streams() ([]StreamState, error) {
	if e.embedded == nil {
		return nil, ErrNotEmbedded
	}
	jsz, err := e.embedded.ns.Jsz(&server.JSzOptions{Accounts: true, Streams: true, Config: true, Limit: math.MaxInt32})
	if err != nil {
		return nil, fmt.Errorf("engine: list streams: %w", err)
	}
	var out []StreamState
	for _, a := range jsz.AccountDetails {
		for _, s := range a.Streams {
			st := StreamState{Account: a.Name, Stream: s.Name, First: s.State.FirstSeq, Last: s.State.LastSeq, Msgs: s.State.Msgs,
				Created: s.Created.UTC(), FirstTime: s.State.FirstTime.UTC()}
			if s.Config != nil {
				st.MaxAge = s.Config.MaxAge
			}
			if s.State.Lost != nil {
				st.Lost = append(st.Lost, s.State.Lost.Msgs...)
			}
			out = append(out, st)
		}
	}
	return out, nil
}

// ScanResult is what reading every stored message of a stream found.
type ScanResult struct {
	Read uint64 // messages that read back whole
	// Unreadable is how many messages the engine counts but could not return (damaged
	// records). Which ones cannot be told apart from deleted ones by reading.
	Unreadable uint64
	// Busy: the stream changed during every read, so nothing could be concluded.
	Busy bool
}

// readAll counts the messages from first to last that read back, skipping deleted sequences.
func readAll(ctx context.Context, s jetstream.Stream, first, last uint64) (uint64, error) {
	var n uint64
	for seq := first; seq <= last && last > 0; {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		m, err := s.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(">"))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return n, fmt.Errorf("at %d: %w", seq, err)
		}
		if m.Sequence > last {
			break
		}
		n++
		seq = m.Sequence + 1
	}
	return n, nil
}

// Scan reads every message of the stream once, in sequence order, skipping gaps left by
// deletions, and checks that as many read back as the engine counts. Reading is what makes
// the engine verify each record's checksum: a damaged record that an index still counts shows
// up here and nowhere else. It never changes the stream.
func (e *Engine) Scan(ctx context.Context, account, stream string) (ScanResult, error) {
	var res ScanResult
	a, err := e.Account(ctx, account)
	if err != nil {
		return res, err
	}
	s, err := a.JetStream().Stream(ctx, stream)
	if err != nil {
		return res, fmt.Errorf("engine: scan %s > %s: %w", account, stream, err)
	}
	// A stream that changes while it is read (consumed, overwritten, expired) cannot be
	// counted exactly: read again, and report nothing unreadable unless one whole read saw
	// the stream unchanged.
	for attempt := 0; attempt < 3; attempt++ {
		before, err := s.Info(ctx)
		if err != nil {
			return res, fmt.Errorf("engine: scan %s > %s: %w", account, stream, err)
		}
		read, err := readAll(ctx, s, before.State.FirstSeq, before.State.LastSeq)
		if err != nil {
			return res, fmt.Errorf("engine: scan %s > %s: %w", account, stream, err)
		}
		after, err := s.Info(ctx)
		if err != nil {
			return res, fmt.Errorf("engine: scan %s > %s: %w", account, stream, err)
		}
		b, a := before.State, after.State
		res.Read = read
		if b.Msgs == a.Msgs && b.FirstSeq == a.FirstSeq && b.LastSeq == a.LastSeq {
			if read < b.Msgs {
				res.Unreadable = b.Msgs - read
			}
			return res, nil
		}
	}
	res.Busy = true
	return res, nil
}

// QueueState is what a single-node embedded engine holds of one stream and its consumers,
// read without connecting to the stream's account.
type QueueState struct {
	Stream      string
	First, Msgs uint64
	Consumers   []ConsumerState
}

// ConsumerState is one consumer's delivery state.
type ConsumerState struct {
	Name string
	// AckPending: delivered, not acknowledged yet. Redelivered: waiting to be delivered again.
	// Waiting: pull requests waiting for a message.
	AckPending, Redelivered, Waiting int
	// Delivered is the last stream sequence delivered.
	Delivered uint64
}

// AccountStreams lists, by account, the streams of one account (or of every account, with
// "") of a single-node embedded engine with their consumers' delivery state (ErrNotEmbedded
// otherwise: a node of a cluster does not hold every stream, nor their leaders' state).
func (e *Engine) AccountStreams(account string) (map[string][]QueueState, error) {
	if e.embedded == nil || e.embedded.cluster != nil {
		return nil, ErrNotEmbedded
	}
	var details []*server.AccountDetail
	if account != "" {
		// Not Jsz with an account filter: it computes every stream's state whatever the
		// filter, which at 10,000 accounts made each call cost a walk of all of them.
		d, err := e.embedded.ns.JszAccount(&server.JSzOptions{Account: account, Streams: true, Consumer: true})
		if err != nil {
			return nil, fmt.Errorf("engine: list streams of %s: %w", account, err)
		}
		details = []*server.AccountDetail{d}
	} else {
		jsz, err := e.embedded.ns.Jsz(&server.JSzOptions{Accounts: true, Streams: true, Consumer: true, Limit: math.MaxInt32})
		if err != nil {
			return nil, fmt.Errorf("engine: list streams: %w", err)
		}
		details = jsz.AccountDetails
	}
	out := map[string][]QueueState{}
	for _, a := range details {
		for _, s := range a.Streams {
			q := QueueState{Stream: s.Name, First: s.State.FirstSeq, Msgs: s.State.Msgs}
			for _, c := range s.Consumer {
				if c != nil {
					q.Consumers = append(q.Consumers, ConsumerState{Name: c.Name, AckPending: c.NumAckPending,
						Redelivered: c.NumRedelivered, Waiting: c.NumWaiting, Delivered: c.Delivered.Stream})
				}
			}
			out[a.Name] = append(out[a.Name], q)
		}
	}
	return out, nil
}
