package engine

import (
	"context"
	"errors"
	"fmt"
	"math"

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
	jsz, err := e.embedded.ns.Jsz(&server.JSzOptions{Accounts: true, Streams: true, Limit: math.MaxInt32})
	if err != nil {
		return nil, fmt.Errorf("engine: list streams: %w", err)
	}
	var out []StreamState
	for _, a := range jsz.AccountDetails {
		for _, s := range a.Streams {
			st := StreamState{Account: a.Name, Stream: s.Name, First: s.State.FirstSeq, Last: s.State.LastSeq, Msgs: s.State.Msgs}
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
	info := s.CachedInfo()
	if info.State.Msgs == 0 {
		return res, nil
	}
	seq := info.State.FirstSeq
	for seq <= info.State.LastSeq {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		m, err := s.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(">"))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return res, fmt.Errorf("engine: scan %s > %s at %d: %w", account, stream, seq, err)
		}
		res.Read++
		seq = m.Sequence + 1
	}
	if res.Read < info.State.Msgs {
		res.Unreadable = info.State.Msgs - res.Read
	}
	return res, nil
}
