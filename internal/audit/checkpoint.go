package audit

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// DefaultCheckpointDelay is how long an event waits for the checkpoint that signs it when
// Options.CheckpointDelay is zero.
const DefaultCheckpointDelay = 3 * time.Second

// CheckpointInterval is the longest time between two roll calls, which checkpoint every
// chain, moved or not: the partial segment expiry can leave is at most this long.
const CheckpointInterval = time.Hour

// Checkpoint writes a signed checkpoint for every chain whose head moved since its last one,
// to the stream and to the state bucket (the anchors Verify checks the stream against). Each
// checkpoint signs one chain's head: its size does not grow with the number of tenants, and
// a tenant's export carries its own checkpoints and nobody else's.
func (l *Log) Checkpoint(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.checkpointLocked(ctx, false)
}

// Checkpoints runs until ctx ends: it checkpoints the chains that moved within the
// checkpoint delay of the first event no checkpoint signs yet, and every chain every
// CheckpointInterval.
func (l *Log) Checkpoints(ctx context.Context) {
	hourly := time.NewTicker(CheckpointInterval)
	defer hourly.Stop()
	soon := time.NewTimer(l.delay)
	soon.Stop()
	armed := false
	run := func(all bool) {
		l.mu.Lock()
		err := l.checkpointLocked(ctx, all)
		l.mu.Unlock()
		if err != nil && ctx.Err() == nil {
			l.log.Warn("audit checkpoint", "error", err)
		}
	}
	for {
		select {
		case <-ctx.Done():
			soon.Stop()
			return
		case <-l.unsigned:
			if !armed {
				soon.Reset(l.delay)
				armed = true
			}
		case <-soon.C:
			armed = false
			run(false)
		case <-hourly.C:
			run(true)
		}
	}
}

// checkpointLocked checkpoints every chain whose head moved, or, with all, every chain: the
// hourly roll call that lets verification tell an expired beginning of a chain from a cut one.
// A chain whose anchor the log is behind (or has lost) is left unsigned, so that verification
// keeps reporting it rather than an anchor moved onto the cut log.
func (l *Log) checkpointLocked(ctx context.Context, all bool) error {
	// Bring every chain of the stream in, so the checkpoints cover chains other nodes wrote.
	info, err := l.stream.Info(ctx, jetstream.WithSubjectFilter(chainSubject+">"))
	if err != nil {
		return err
	}
	// Only the chains whose event count moved since their head was read: reading every head
	// cost each checkpoint one engine request per tenant, thousands on a large node. A count
	// that did not move means no event was added only while none was removed: once events
	// expire or are deleted (the stream's first sequence or its deleted count moved), a chain
	// can lose old events and gain new ones with its count unchanged, so every head is read.
	st := info.State
	everything := st.FirstSeq != l.seenFirst || st.NumDeleted != l.seenDeleted
	for subj, n := range st.Subjects {
		chain := strings.TrimPrefix(subj, chainSubject)
		if _, known := l.heads[chain]; known && l.counts[chain] == n && !everything {
			continue
		}
		delete(l.heads, chain)
		if _, err := l.headLocked(ctx, chain); err != nil {
			return err
		}
		l.counts[chain] = n
	}
	l.seenFirst, l.seenDeleted = st.FirstSeq, st.NumDeleted
	chains := make([]string, 0, len(l.heads))
	for chain := range l.heads {
		chains = append(chains, chain)
	}
	sort.Strings(chains)
	signed := map[string]*Checkpoint{}
	for _, chain := range chains {
		h := l.heads[chain].Head
		if h.Index == 0 || l.refused[chain] != "" {
			continue
		}
		last, ok := l.checked[chain]
		if !ok {
			if last, err = l.resumeLocked(ctx, chain, h); err != nil {
				var behind *behindError
				if !errors.As(err, &behind) {
					return fmt.Errorf("%w: %v", ErrUnavailable, err)
				}
				// Logged once, not returned: the other chains, exports and stops go on.
				l.refused[chain] = behind.Error()
				l.log.Error("audit chain left unsigned: the log is behind its anchor; audit verify reports it", "chain", chain, "reason", behind.Error())
				continue
			}
		}
		if last == h && !all {
			continue
		}
		c, err := l.checkpointChain(ctx, chain, h)
		if err != nil {
			return err
		}
		signed[chain] = c
	}
	l.pending = 0
	if l.external != nil && len(signed) > 0 {
		if err := l.external.Advance(signed); err != nil {
			// The log's own checkpoints stand; only the copy outside lags, until it can be written.
			l.log.Error("audit external anchor not written", "path", l.external.Path, "error", err)
		}
	}
	return nil
}

// behindError says the log does not reach a chain's kept checkpoint: it was cut back, or its
// anchor was removed while its checkpoints remain.
type behindError struct{ chain, why string }

func (e *behindError) Error() string { return "chain " + e.chain + ": " + e.why }

// resumeLocked returns the head a chain's kept checkpoint signed, once this process first
// checkpoints it, after checking the log still holds that checkpoint. A checkpoint's anchor is
// written before the checkpoint is appended (see checkpointChain), so a log holding a chain's
// checkpoint without its anchor, or a later one than its anchor, or not the anchored one, was
// tampered with: never a crash.
func (l *Log) resumeLocked(ctx context.Context, chain string, h Head) (Head, error) {
	a, err := l.anchor(ctx, chain)
	if err != nil {
		return Head{}, err
	}
	last, err := l.lastCheckpoint(ctx, checkpointSubject+"."+chain)
	if err != nil {
		return Head{}, err
	}
	if a == nil {
		missing := &behindError{chain, "the log holds its checkpoints but its anchor is missing"}
		if last != nil {
			return Head{}, missing
		}
		// A chain checkpointed only by an older version is anchored by the single checkpoint.
		legacy, err := l.anchorKey(ctx, anchorKey)
		if err != nil || legacy != nil {
			return legacyHead(legacy, chain), err
		}
		if last, err = l.lastCheckpoint(ctx, checkpointSubject); err != nil {
			return Head{}, err
		}
		if last != nil && last.Heads[chain] != (Head{}) {
			return Head{}, missing
		}
		return Head{}, nil
	}
	ah := a.Heads[chain]
	switch {
	case h.Index < ah.Index:
		return Head{}, &behindError{chain, fmt.Sprintf("it ends at %d, before its anchored head %d", h.Index, ah.Index)}
	case last != nil && last.Heads[chain].Index > ah.Index:
		return Head{}, &behindError{chain, fmt.Sprintf("its anchor (head %d) is behind the log's checkpoint at sequence %d", ah.Index, last.Seq)}
	case a.Seq != 0:
		msg, err := l.stream.GetMsg(ctx, a.Seq)
		if err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			return Head{}, err
		}
		if err != nil || !sameCheckpoint(msg.Subject, msg.Data, a) {
			return Head{}, &behindError{chain, fmt.Sprintf("the log no longer holds its anchored checkpoint (sequence %d)", a.Seq)}
		}
	}
	// An anchor without a sequence was written just before its checkpoint, which a stop may
	// have kept from the stream: the next checkpoint supersedes it.
	return ah, nil
}

func legacyHead(c *Checkpoint, chain string) Head {
	if c == nil {
		return Head{}
	}
	return c.Heads[chain]
}

func (l *Log) lastCheckpoint(ctx context.Context, subject string) (*Checkpoint, error) {
	msg, err := l.stream.GetLastMsgForSubject(ctx, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	r := decodeRecord(msg.Sequence, msg.Subject, msg.Data)
	if r.Checkpoint == nil {
		return nil, fmt.Errorf("checkpoint at sequence %d is not as written", msg.Sequence)
	}
	return r.Checkpoint, nil
}

// sameCheckpoint tells whether a stored record is the checkpoint c, as written.
func sameCheckpoint(subject string, data []byte, c *Checkpoint) bool {
	r := decodeRecord(c.Seq, subject, data)
	return r.Checkpoint != nil && bytes.Equal(r.Checkpoint.signed(), c.signed()) &&
		bytes.Equal(r.Checkpoint.Signature, c.Signature)
}

// checkpointChain signs one chain's head and records it: first as the chain's anchor (without
// its sequence), then in the stream, then as the anchor with its sequence. With the anchor
// written first, a stop at any point leaves the anchor at or ahead of the log's checkpoints,
// never behind them, so an anchor behind or missing is always tampering.
func (l *Log) checkpointChain(ctx context.Context, chain string, h Head) (*Checkpoint, error) {
	c := Checkpoint{Time: l.now().UTC(), Heads: map[string]Head{chain: h}}
	c.Signature = ed25519.Sign(l.key, c.signed())
	if err := l.moveAnchor(ctx, chain, c); err != nil {
		return nil, err
	}
	b, _ := json.Marshal(c)
	ack, err := l.js.Publish(ctx, checkpointSubject+"."+chain, b)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	c.Seq = ack.Sequence
	if err := l.moveAnchor(ctx, chain, c); err != nil {
		return nil, err
	}
	l.checked[chain] = h
	return &c, nil
}

// moveAnchor sets a chain's anchor to c unless it already holds a later head (another node's
// newer checkpoint): an anchor only moves forward.
func (l *Log) moveAnchor(ctx context.Context, chain string, c Checkpoint) error {
	key := anchorKey + "." + chain
	b, _ := json.Marshal(c)
	for attempt := 0; attempt < 5; attempt++ {
		cur, err := l.state.Get(ctx, key)
		var rev uint64
		if err == nil {
			var prev Checkpoint
			if json.Unmarshal(cur.Value(), &prev) == nil && !c.after(prev, chain) {
				return nil
			}
			rev = cur.Revision()
		} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
			return fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		if rev == 0 {
			_, err = l.state.Create(ctx, key, b)
		} else {
			_, err = l.state.Update(ctx, key, b, rev)
		}
		if err == nil {
			return nil
		}
	}
	return fmt.Errorf("%w: anchor of chain %s kept changing", ErrUnavailable, chain)
}

// after tells whether c may replace prev as a chain's anchor: it signs a later head, or the
// same head later in the stream (or is prev's own stored copy, now with its sequence).
func (c Checkpoint) after(prev Checkpoint, chain string) bool {
	ci, pi := c.Heads[chain].Index, prev.Heads[chain].Index
	if ci != pi {
		return ci > pi
	}
	return c.Seq == 0 || prev.Seq == 0 || c.Seq > prev.Seq
}
