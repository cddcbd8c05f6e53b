// Package backup takes and restores backups of what Penstock keeps in its engine.
//
// A stream is copied with the engine's own snapshot and restore (the JetStream API of the
// account that holds it), so a backup taken while publishers run is a consistent cut at the
// stream's last sequence when the snapshot began, with its consumers' state. The engine's
// snapshot is plaintext whatever the store's encryption, so every byte of it is sealed by the
// keyring (sealed.go) before it leaves the process.
package backup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

const (
	// snapshotChunk is the size of the engine's snapshot messages; snapshotWindow how much of
	// them may be unacknowledged (the engine's flow control).
	snapshotChunk  = 256 << 10
	snapshotWindow = 8 << 20
	// restoreChunk is the size of the chunks a restore uploads; restoreInFlight how many may
	// wait for the engine's acknowledgement at once. The engine stores the messages of a chunk
	// before it takes the next, each synced when the store syncs every write, and gives up a
	// restore that takes nothing for 5 s: a chunk must store well within that on a busy
	// machine (256 KiB of ~400 B messages did not, in CI, nor did 32 KiB, some 80 fsyncs,
	// while other tests and a compile shared the disk), so chunks are small and many wait.
	restoreChunk    = 4 << 10
	restoreInFlight = 64
	// stall is how long either side may go without hearing from the other. The engine gives
	// up after 5 s of silence on its side.
	stall = 30 * time.Second
)

// StreamState is what the engine reported of a stream when its snapshot began: the cut the
// backup holds.
type StreamState struct {
	Messages  uint64 `json:"messages"`
	Bytes     uint64 `json:"bytes"`
	FirstSeq  uint64 `json:"first_seq"`
	LastSeq   uint64 `json:"last_seq"`
	Consumers int    `json:"consumers"`
}

// Snapshot streams a snapshot of the named stream of nc's account to w, with its consumers'
// state, and returns the stream's configuration and state at the cut.
func Snapshot(ctx context.Context, nc *nats.Conn, stream string, w io.Writer) (*server.StreamConfig, StreamState, error) {
	inbox := nc.NewRespInbox()
	chunks := make(chan *nats.Msg, snapshotWindow/snapshotChunk+8)
	sub, err := nc.ChanSubscribe(inbox, chunks)
	if err != nil {
		return nil, StreamState{}, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	_ = sub.SetPendingLimits(-1, -1)

	req, _ := json.Marshal(server.JSApiStreamSnapshotRequest{DeliverSubject: inbox, ChunkSize: snapshotChunk, WindowSize: snapshotWindow})
	var resp server.JSApiStreamSnapshotResponse
	if err := request(ctx, nc, server.JSApiStreamSnapshotT, stream, req, &resp); err != nil {
		return nil, StreamState{}, fmt.Errorf("snapshot of stream %s: %w", stream, err)
	}
	if resp.Error != nil {
		return nil, StreamState{}, fmt.Errorf("snapshot of stream %s: %w", stream, resp.Error)
	}
	if resp.Config == nil || resp.State == nil {
		return nil, StreamState{}, fmt.Errorf("snapshot of stream %s: the engine answered without the stream's state", stream)
	}
	st := StreamState{Messages: resp.State.Msgs, Bytes: resp.State.Bytes, FirstSeq: resp.State.FirstSeq,
		LastSeq: resp.State.LastSeq, Consumers: resp.State.Consumers}
	timer := time.NewTimer(stall)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, StreamState{}, ctx.Err()
		case <-timer.C:
			return nil, StreamState{}, fmt.Errorf("snapshot of stream %s: nothing from the engine for %s", stream, stall)
		case m := <-chunks:
			timer.Reset(stall)
			if len(m.Data) == 0 {
				// The end: status 204, or no status when the whole snapshot fitted in one chunk.
				switch status := m.Header.Get("Status"); status {
				case "", "204":
					return resp.Config, st, nil
				default:
					return nil, StreamState{}, fmt.Errorf("snapshot of stream %s: the engine ended it with %s %s", stream, status, m.Header.Get("Description"))
				}
			}
			if _, err := w.Write(m.Data); err != nil {
				return nil, StreamState{}, fmt.Errorf("snapshot of stream %s: %w", stream, err)
			}
			if m.Reply != "" { // one more chunk of credit for the engine
				if err := nc.Publish(m.Reply, nil); err != nil {
					return nil, StreamState{}, err
				}
			}
		}
	}
}

// Restore makes the stream cfg.Name in nc's account from a snapshot read from r: its
// messages at their sequences and its consumers with their state. The name must be free. A
// restore that fails leaves nothing: the engine keeps what it had received, so the partial
// stream is deleted.
func Restore(ctx context.Context, nc *nats.Conn, cfg *server.StreamConfig, r io.Reader) (_ *server.StreamInfo, err error) {
	req, _ := json.Marshal(server.JSApiStreamRestoreRequest{Config: *cfg})
	var resp server.JSApiStreamRestoreResponse
	if err := request(ctx, nc, server.JSApiStreamRestoreT, cfg.Name, req, &resp); err != nil {
		return nil, fmt.Errorf("restore of stream %s: %w", cfg.Name, err)
	}
	if resp.Error != nil {
		return nil, fmt.Errorf("restore of stream %s: %w", cfg.Name, resp.Error)
	}
	ended := false
	end := func(ctx context.Context) (*nats.Msg, error) {
		ended = true
		rctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
		defer cancel()
		return nc.RequestWithContext(rctx, resp.DeliverSubject, nil)
	}
	defer func() {
		if err == nil {
			return
		}
		// The engine goes on waiting for the rest of an upload that stopped part way, and keeps
		// what it took: end the upload, then delete what it made of it.
		cctx := context.WithoutCancel(ctx)
		if !ended {
			_, _ = end(cctx)
		}
		var del server.JSApiStreamDeleteResponse
		_ = request(cctx, nc, server.JSApiStreamDeleteT, cfg.Name, nil, &del)
	}()

	ackInbox := nc.NewRespInbox()
	acks := make(chan *nats.Msg, restoreInFlight+1)
	sub, err := nc.ChanSubscribe(ackInbox+".*", acks)
	if err != nil {
		return nil, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	inFlight := 0
	awaitAck := func() error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(stall):
			return fmt.Errorf("restore of stream %s: the engine acknowledged nothing for %s", cfg.Name, stall)
		case m := <-acks:
			inFlight--
			return createError(m.Data)
		}
	}
	buf := make([]byte, restoreChunk)
	for i := 0; ; i++ {
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			for inFlight >= restoreInFlight {
				if err := awaitAck(); err != nil {
					return nil, fmt.Errorf("restore of stream %s: %w", cfg.Name, err)
				}
			}
			if err := nc.PublishRequest(resp.DeliverSubject, ackInbox+"."+strconv.Itoa(i), buf[:n]); err != nil {
				return nil, err
			}
			inFlight++
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return nil, fmt.Errorf("restore of stream %s: %w", cfg.Name, rerr)
		}
	}
	for inFlight > 0 {
		if err := awaitAck(); err != nil {
			return nil, fmt.Errorf("restore of stream %s: %w", cfg.Name, err)
		}
	}
	// An empty message ends the upload; the answer is the stream's creation.
	fin, err := end(ctx)
	if err != nil {
		return nil, fmt.Errorf("restore of stream %s: %w", cfg.Name, err)
	}
	var cr server.JSApiStreamCreateResponse
	if err := json.Unmarshal(fin.Data, &cr); err != nil {
		return nil, fmt.Errorf("restore of stream %s: the engine's answer: %w", cfg.Name, err)
	}
	if cr.Error != nil {
		return nil, fmt.Errorf("restore of stream %s: %w", cfg.Name, cr.Error)
	}
	return cr.StreamInfo, nil
}

// createError reads an engine's answer to a restore chunk: empty when it was taken.
func createError(data []byte) error {
	if len(data) == 0 {
		return nil
	}
	var cr server.JSApiStreamCreateResponse
	if err := json.Unmarshal(data, &cr); err != nil {
		return fmt.Errorf("the engine's answer %q: %w", data, err)
	}
	if cr.Error != nil {
		return cr.Error
	}
	return errors.New("the engine answered a chunk with something other than an acknowledgement")
}

// request sends a JetStream API request (subject template with the stream's name) and decodes
// the answer.
func request(ctx context.Context, nc *nats.Conn, template, stream string, body []byte, out any) error {
	rctx, cancel := context.WithTimeout(ctx, stall)
	defer cancel()
	m, err := nc.RequestWithContext(rctx, fmt.Sprintf(template, stream), body)
	if err != nil {
		return err
	}
	return json.Unmarshal(m.Data, out)
}
