package audit

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/penstock/penstock/internal/engine"
	"github.com/penstock/penstock/internal/keyring"
	"github.com/penstock/penstock/internal/names"
)

// Stream holds the audit log; it denies delete and purge.
const Stream = "PENSTOCK_AUDIT"

const (
	chainSubject      = "audit.chain."
	checkpointSubject = "audit.checkpoint"
	anchorKey         = "checkpoint"
)

// CheckpointEvery is how many events pass between two automatic checkpoints.
const CheckpointEvery = 100

// ErrUnavailable wraps every failure to append: the caller must fail the audited action.
var ErrUnavailable = errors.New("audit log unavailable")

// Log appends events and checkpoints and reads them back.
type Log struct {
	// observer, if set, is told of every appended event (OnAppend).
	observer atomic.Pointer[func(Event)]
	// forwardFailed, if set, is told of every failed delivery to a SIEM (OnForwardFailure).
	forwardFailed atomic.Pointer[func(sink string)]
	js            jetstream.JetStream
	stream        jetstream.Stream
	state         jetstream.KeyValue // the latest checkpoint, kept apart from the stream
	key           ed25519.PrivateKey
	log           *slog.Logger
	now           func() time.Time

	delay    time.Duration // how long an event may wait for a checkpoint
	external *FileAnchor   // nil: no anchor outside the data directory
	// forwardCheckpoints sends checkpoints to the SIEM sinks too.
	forwardCheckpoints bool
	unsigned           chan struct{} // signalled by every append; drained by Checkpoints

	mu    sync.Mutex
	heads map[string]head
	// counts is, per chain, how many events the stream held when its head was last read by a
	// checkpoint: a checkpoint reads again only the heads of chains whose count moved.
	counts map[string]uint64
	// seenFirst and seenDeleted are the stream's first sequence and deleted count when counts
	// were last taken: if either moved, events were removed and counts prove nothing.
	seenFirst   uint64
	seenDeleted int
	checked     map[string]Head   // per chain, the head its latest checkpoint signed
	refused     map[string]string // per chain, why its anchor is not moved (the log is behind it)
	pending     int               // events since the last checkpoint
}

type head struct {
	Head
	subjectSeq uint64 // stream sequence of the chain's last event, for optimistic appends
}

// Options configure Open.
type Options struct {
	Platform  *engine.Account
	Keyring   *keyring.Keyring
	Retention time.Duration // 0: 400 days
	Logger    *slog.Logger
	Now       func() time.Time
	// CheckpointDelay bounds how long an event waits unsigned: Checkpoints writes a
	// checkpoint this long after the first event no checkpoint covers. 0: DefaultCheckpointDelay.
	CheckpointDelay time.Duration
	// Anchor, if set, keeps a copy of every chain's latest checkpoint outside the data
	// directory, and VerifyAll fails if the log is behind it.
	Anchor *FileAnchor
	// ForwardCheckpoints sends checkpoints to the SIEM sinks that take them (CheckpointSink),
	// next to the events.
	ForwardCheckpoints bool
}

// Open creates or opens the stream, the state bucket and the checkpoint signing key (an
// Ed25519 key sealed by the keyring in the platform scope).
func Open(ctx context.Context, o Options) (*Log, error) {
	if o.Retention == 0 {
		o.Retention = 400 * 24 * time.Hour
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.CheckpointDelay <= 0 {
		o.CheckpointDelay = DefaultCheckpointDelay
	}
	st, err := o.Platform.Stream(ctx, jetstream.StreamConfig{
		Name:        Stream,
		Description: "tamper-evident audit log: hash-chained events and signed checkpoints",
		Subjects:    []string{"audit.>"},
		DenyDelete:  true,
		DenyPurge:   true,
		MaxAge:      o.Retention,
		Retention:   jetstream.LimitsPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	kv, err := o.Platform.KeyValue(ctx, jetstream.KeyValueConfig{Bucket: "penstock_audit", History: 1,
		Description: "the latest signed audit checkpoint, kept apart from the log"})
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	key, err := signingKey(ctx, o.Keyring)
	if err != nil {
		return nil, err
	}
	return &Log{js: o.Platform.JetStream(), stream: st, state: kv, key: key, log: o.Logger, now: o.Now,
		delay: o.CheckpointDelay, external: o.Anchor, forwardCheckpoints: o.ForwardCheckpoints, unsigned: make(chan struct{}, 1),
		heads: map[string]head{}, counts: map[string]uint64{}, checked: map[string]Head{}, refused: map[string]string{}}, nil
}

var platformScope = keyring.Scope{Tenant: "platform"}

func signingKey(ctx context.Context, kr *keyring.Keyring) (ed25519.PrivateKey, error) {
	store, err := kr.Sealed(ctx, "penstock_audit_keys", "audit-signing")
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	seed, _, err := store.Get(ctx, platformScope, "ed25519")
	if errors.Is(err, keyring.ErrNotFound) {
		_, priv, gerr := ed25519.GenerateKey(rand.Reader)
		if gerr != nil {
			return nil, gerr
		}
		if _, err := store.Put(ctx, platformScope, "ed25519", priv.Seed()); err != nil {
			return nil, fmt.Errorf("audit: store signing key: %w", err)
		}
		seed, _, err = store.Get(ctx, platformScope, "ed25519")
	}
	if err != nil {
		return nil, fmt.Errorf("audit: signing key: %w", err)
	}
	return ed25519.NewKeyFromSeed(seed), nil
}

// PublicKey verifies checkpoints.
func (l *Log) PublicKey() ed25519.PublicKey { return l.key.Public().(ed25519.PublicKey) }

// Append chains and stores an event, synchronously: when it returns nil the event is in the
// stream (fsynced with the engine's default); when it fails, the action it records must fail.
// Concurrent appenders on other nodes are serialised by the stream's per-subject sequence check.
func (l *Log) Append(ctx context.Context, e Event) (Event, error) {
	if e.Tenant != "" && !names.Valid(e.Tenant, "-") {
		// A chain's name becomes a subject: it is never a string that was not checked.
		return Event{}, fmt.Errorf("%w: tenant %q is not a valid name", ErrUnavailable, e.Tenant)
	}
	if e.Chain = e.Tenant; e.Chain == "" {
		e.Chain = PlatformChain
	}
	if e.Time.IsZero() {
		e.Time = l.now().UTC()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for attempt := 0; attempt < 10; attempt++ {
		h, err := l.headLocked(ctx, e.Chain)
		if err != nil {
			return Event{}, fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		e.Index, e.Prev, e.Seq = h.Index+1, h.Hash, 0
		e.Hash = e.computeHash()
		b, _ := json.Marshal(e)
		ack, err := l.js.Publish(ctx, chainSubject+e.Chain, b, jetstream.WithExpectLastSequencePerSubject(h.subjectSeq))
		if err != nil {
			if engine.WrongLastSequence(err) {
				// Another node appended: reload the head and chain again, after a moment (on a
				// replicated stream its write may still be in flight).
				delete(l.heads, e.Chain)
				select {
				case <-ctx.Done():
					return Event{}, fmt.Errorf("%w: %v", ErrUnavailable, ctx.Err())
				case <-time.After(time.Duration(attempt+1)*5*time.Millisecond + time.Duration(mrand.IntN(10))*time.Millisecond):
				}
				continue
			}
			return Event{}, fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		e.Seq = ack.Sequence
		l.heads[e.Chain] = head{Head: Head{Index: e.Index, Hash: e.Hash}, subjectSeq: ack.Sequence}
		l.pending++
		select {
		case l.unsigned <- struct{}{}:
		default:
		}
		if l.pending >= CheckpointEvery {
			if err := l.checkpointLocked(ctx, false); err != nil {
				l.log.Warn("audit checkpoint", "error", err)
				l.pending = 0 // the hourly checkpoint retries; not every append
			}
		}
		if f := l.observer.Load(); f != nil {
			(*f)(e)
		}
		return e, nil
	}
	return Event{}, fmt.Errorf("%w: chain %s kept changing", ErrUnavailable, e.Chain)
}

// OnAppend sets a function told of every event appended from now on, under the log's lock:
// it must not block or append (notifications hand the event to a queue of their own).
func (l *Log) OnAppend(f func(Event)) { l.observer.Store(&f) }

// OnForwardFailure sets a function told of every failed attempt to forward to a sink; it must
// not block.
func (l *Log) OnForwardFailure(f func(sink string)) { l.forwardFailed.Store(&f) }

// headLocked returns a chain's head, loading it from the stream the first time.
func (l *Log) headLocked(ctx context.Context, chain string) (head, error) {
	if h, ok := l.heads[chain]; ok {
		return h, nil
	}
	msg, err := l.stream.GetLastMsgForSubject(ctx, chainSubject+chain)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		l.heads[chain] = head{}
		return head{}, nil
	}
	if err != nil {
		return head{}, err
	}
	var e Event
	if err := json.Unmarshal(msg.Data, &e); err != nil {
		return head{}, fmt.Errorf("last event of chain %s: %w", chain, err)
	}
	h := head{Head: Head{Index: e.Index, Hash: e.Hash}, subjectSeq: msg.Sequence}
	l.heads[chain] = h
	return h, nil
}

// Anchors are the latest checkpoints as kept outside the stream: one per chain (key
// "checkpoint.<chain>"), and the single one of every head that logs written before per-chain
// checkpoints kept (key "checkpoint").
type Anchors map[string]*Checkpoint

// Anchor reads the kept checkpoints.
func (l *Log) Anchor(ctx context.Context) (Anchors, error) {
	out := Anchors{}
	lister, err := l.state.ListKeysFiltered(ctx, anchorKey, anchorKey+".*")
	if err != nil {
		return nil, err
	}
	for key := range lister.Keys() {
		c, err := l.anchorKey(ctx, key)
		if err != nil {
			return nil, err
		}
		if c != nil {
			out[key] = c
		}
	}
	return out, nil
}

func (l *Log) anchor(ctx context.Context, chain string) (*Checkpoint, error) {
	return l.anchorKey(ctx, anchorKey+"."+chain)
}

func (l *Log) anchorKey(ctx context.Context, key string) (*Checkpoint, error) {
	e, err := l.state.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var c Checkpoint
	if err := json.Unmarshal(e.Value(), &c); err != nil {
		return nil, fmt.Errorf("kept checkpoint %s: %w", key, err)
	}
	return &c, nil
}

// Records reads the stream from sequence from (1 for all), in order, calling fn for each
// record until it returns false.
func (l *Log) Records(ctx context.Context, from uint64, fn func(Record) bool) error {
	info, err := l.stream.Info(ctx)
	if err != nil {
		return err
	}
	if from < info.State.FirstSeq {
		from = info.State.FirstSeq
	}
	for seq := from; seq <= info.State.LastSeq; seq++ {
		msg, err := l.stream.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		r := decodeRecord(seq, msg.Subject, msg.Data)
		if !fn(r) {
			return nil
		}
	}
	return nil
}

// VerifyAll verifies the whole stream against the kept checkpoints and, if configured, the
// external anchor, allowing for a prefix that expired with the retention limit.
func (l *Log) VerifyAll(ctx context.Context) (Report, error) {
	var recs []Record
	if err := l.Records(ctx, 1, func(r Record) bool { recs = append(recs, r); return true }); err != nil {
		return Report{}, err
	}
	anchor, err := l.Anchor(ctx)
	if err != nil {
		return Report{}, err
	}
	info, err := l.stream.Info(ctx)
	if err != nil {
		return Report{}, err
	}
	var external Anchors
	if l.external != nil {
		if external, err = l.external.Read(); err != nil {
			return Report{}, err
		}
	}
	return verify(recs, l.PublicKey(), anchor, external, nil, info.State.FirstSeq > 1), nil
}

// Close writes a final checkpoint.
func (l *Log) Close(ctx context.Context) error { return l.Checkpoint(ctx) }

// ConfigChanges compares a start's configuration (as config.Config.Flat gives it) with the one
// the previous start recorded, records this one, and returns the keys that changed, sorted (all
// of them on a first start).
func (l *Log) ConfigChanges(ctx context.Context, flat map[string]string) ([]string, error) {
	var prev map[string]string
	if e, err := l.state.Get(ctx, "config"); err == nil {
		_ = json.Unmarshal(e.Value(), &prev)
	} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, err
	}
	var changed []string
	for k, v := range flat {
		if pv, ok := prev[k]; !ok || pv != v {
			changed = append(changed, k)
		}
	}
	sort.Strings(changed)
	b, _ := json.Marshal(flat)
	if _, err := l.state.Put(ctx, "config", b); err != nil {
		return nil, err
	}
	return changed, nil
}

// decodeRecord reads a stored entry, marking it Malformed unless it is byte for byte what
// Penstock writes for its subject: duplicate, unknown or re-cased fields, or an event on
// another chain's subject, are tampering.
func decodeRecord(seq uint64, subject string, data []byte) Record {
	if chain, ok := strings.CutPrefix(subject, checkpointSubject); ok && (chain == "" || chain[0] == '.') {
		// A chain's own checkpoints are on its subject and sign its head only; the legacy
		// subject's may sign several.
		var c Checkpoint
		if json.Unmarshal(data, &c) == nil && (chain == "" || len(c.Heads) == 1 && c.Heads[chain[1:]] != (Head{})) {
			if b, _ := json.Marshal(c); bytes.Equal(b, data) {
				c.Seq = seq
				return Record{Checkpoint: &c}
			}
		}
		return Record{Malformed: seq}
	}
	var e Event
	if json.Unmarshal(data, &e) == nil && subject == chainSubject+e.Chain && e.Seq == 0 {
		if b, _ := json.Marshal(e); bytes.Equal(b, data) {
			e.Seq = seq
			return Record{Event: &e}
		}
	}
	return Record{Malformed: seq}
}

// Fingerprint is a keyed hash of a value (HMAC-SHA256 under a key derived from the checkpoint
// signing key, 12 hex characters): it shows whether a secret changed without allowing an offline
// guess of it.
func (l *Log) Fingerprint(v string) string {
	m := hmac.New(sha256.New, append([]byte("penstock audit fingerprint\x00"), l.key.Seed()...))
	m.Write([]byte(v))
	return hex.EncodeToString(m.Sum(nil)[:6])
}
