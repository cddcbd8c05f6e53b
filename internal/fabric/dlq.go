package fabric

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"golang.org/x/time/rate"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Headers a dead letter carries besides the message's own.
const (
	hdrDeadReason     = "Penstock-Dead-Reason"
	hdrDeadDeliveries = "Penstock-Dead-Deliveries"
	hdrDeadSeq        = "Penstock-Dead-Original-Seq"
	hdrDeadPublished  = "Penstock-Dead-Original-Published"
	hdrDeadQueue      = "Penstock-Dead-Queue"
	hdrDeadAt         = "Penstock-Dead-At"
)

// DeadLetter is a message that left its queue without being acknowledged.
type DeadLetter struct {
	Seq        uint64            `json:"seq" doc:"sequence in the dead-letter queue"`
	Reason     string            `json:"reason" doc:"max_deliveries or rejected"`
	Deliveries uint64            `json:"deliveries"`
	QueueSeq   uint64            `json:"queue_seq" doc:"its sequence in the queue"`
	Published  time.Time         `json:"published" doc:"when it was first published"`
	DeadAt     time.Time         `json:"dead_at"`
	ID         string            `json:"id,omitempty"`
	Headers    map[string]string `json:"headers,omitempty"`
	Data       []byte            `json:"-"`
}

type deliveryExceeded struct {
	Stream     string `json:"stream"`
	Consumer   string `json:"consumer"`
	StreamSeq  uint64 `json:"stream_seq"`
	Deliveries uint64 `json:"deliveries"`
}

// startDeadLetters moves messages that exhaust their deliveries to their queue's dead-letter
// queue, from the engine's advisories, and sweeps every queue once for any an earlier run
// missed.
func (s *Service) startDeadLetters(ta *tenantAccount) error {
	nc := ta.acc.Conn()
	// One node of a cluster handles each advisory (moving a dead letter twice is harmless:
	// its id makes the second a duplicate, but it costs a write).
	sub, err := nc.QueueSubscribe("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>", "penstock-dead-letters", func(m *nats.Msg) {
		ta.busy.Add(1)
		defer ta.busy.Add(-1)
		var a deliveryExceeded
		if json.Unmarshal(m.Data, &a) != nil {
			return
		}
		kind, app, name, ok := parseStream(a.Stream)
		if !ok || kind != "Q" || a.Consumer != app {
			return
		}
		ctx, cancel := context.WithTimeout(ta.ctx, 30*time.Second)
		defer cancel()
		if err := s.deadLetter(ctx, ta, app, name, a.StreamSeq, "max_deliveries", a.Deliveries); err != nil {
			s.log.Error("dead-letter move failed; the next sweep retries", "account", ta.acc.Name(), "stream", a.Stream, "seq", a.StreamSeq, "error", err)
		}
	})
	if err != nil {
		return fmt.Errorf("subscribe to delivery advisories: %w", err)
	}
	ta.advisories = sub
	s.wg.Add(1)
	context.AfterFunc(ta.ctx, func() { _ = sub.Unsubscribe(); s.wg.Done() })
	return nil
}

// How the sweeps go: a tenant-environment is swept when its account is taken up (within a
// second), then again once five minutes have passed, at most deadSweepRate tenant-environments
// a second over the whole node; with more than 6,000 a round takes longer (10,000 take about 8
// minutes). One loop for all of them: a loop each, every minute, cost every tenant-environment
// a goroutine and three engine requests a minute, which on a node of 10,000 was most of its
// idle CPU. Advisories move dead letters at once; the sweep is for those missed (a crash).
const (
	deadSweepEvery = 5 * time.Minute
	deadSweepRate  = 20
)

// sweepDeadLetters runs sweepDead over the tenant-environments until the fabric closes: the
// ones just taken up first (unswept), then rounds of those due, longest unswept first. A round
// is listed once (a scan of every tenant-environment at each sweep was, at 10,000 of them, most
// of an idle node's CPU), and between rounds the loop sleeps until the next falls due.
func (s *Service) sweepDeadLetters() {
	defer s.wg.Done()
	lim := rate.NewLimiter(deadSweepRate, 1)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var round []*tenantAccount
	for s.ctx.Err() == nil {
		var ta *tenantAccount
		select {
		case ta = <-s.unswept:
			if !ta.swept.IsZero() {
				continue // listed in a round meanwhile, and swept there
			}
		default:
			var next time.Time
			if len(round) == 0 {
				round, next = s.dueForSweep()
			}
			if len(round) > 0 {
				ta, round = round[0], round[1:]
				if time.Since(ta.swept) < deadSweepEvery {
					continue // swept meanwhile, as a new one
				}
			} else {
				timer.Reset(time.Until(next))
				select {
				case <-s.ctx.Done():
					return
				case ta = <-s.unswept:
				case <-timer.C:
					continue
				}
			}
		}
		if ta.ctx.Err() != nil {
			continue // forgotten or reset: costs no turn
		}
		if lim.Wait(s.ctx) != nil {
			return
		}
		ctx, cancel := context.WithTimeout(ta.ctx, time.Minute)
		ta.busy.Add(1)
		s.sweepDead(ctx, ta)
		cancel()
		ta.swept = time.Now()
		ta.acc.Quiet() // the sweep's requests are not use (idle.go)
		ta.busy.Add(-1)
		ta.sweptOnce.Store(true)
	}
}

// dueForSweep lists the tenant-environments due for a sweep, longest unswept first, and when
// the next one falls due if none is.
func (s *Service) dueForSweep() ([]*tenantAccount, time.Time) {
	now := time.Now()
	next := now.Add(deadSweepEvery)
	s.mu.Lock()
	var due []*tenantAccount
	for _, ta := range s.accounts {
		if ta.ctx.Err() != nil {
			continue // being forgotten
		}
		if at := ta.swept.Add(deadSweepEvery); !at.After(now) {
			due = append(due, ta)
		} else if at.Before(next) {
			next = at
		}
	}
	s.mu.Unlock()
	slices.SortFunc(due, func(a, b *tenantAccount) int { return a.swept.Compare(b.swept) })
	return due, next
}

// sweepDead moves to their dead-letter queues the messages a queue's consumer gave up on
// while no advisory was heard (a crash between the two). The engine does not say which
// messages those are, only how many deliveries are outstanding: when none is (nothing in
// flight, nothing waiting to be redelivered), every message still stored at or below the last
// delivered sequence has exhausted its deliveries. A busy queue is swept at a quieter moment.
func (s *Service) sweepDead(ctx context.Context, ta *tenantAccount) {
	names := ta.acc.JetStream().StreamNames(ctx)
	for stream := range names.Name() {
		if stream == "KV_"+bindingsBucket {
			// Exchanges another node created: take them up (their routers, their bindings).
			if _, err := s.bindingsOf(ctx, ta, false); err != nil {
				s.log.Warn("take up exchanges", "account", ta.acc.Name(), "error", err)
			}
			continue
		}
		kind, app, name, ok := parseStream(stream)
		if ok && kind == "X" {
			// An exchange another node made after this one took the exchanges up: routed
			// here too from now on, so that it is routed while its maker is down.
			ta.mu.RLock()
			_, known := ta.exchanges[app+"/"+name]
			ta.mu.RUnlock()
			if known {
				if err := s.startRouter(ta, Ref{Application: app, Name: name}); err != nil {
					s.log.Warn("exchange router", "account", ta.acc.Name(), "exchange", name, "error", err)
				}
			}
			continue
		}
		if !ok || kind != "Q" {
			continue
		}
		st, err := ta.acc.JetStream().Stream(ctx, stream)
		if err != nil {
			continue
		}
		cons, err := st.Consumer(ctx, app)
		if err != nil {
			continue
		}
		ci := cons.CachedInfo()
		// Every delivered message the consumer has not given up on is pending (in flight,
		// waiting for redelivery, or a negative acknowledgement's delay). The redelivered
		// count says nothing here: the engine keeps a message's count until it leaves the
		// stream, so a message that ran out of more than one delivery counts in it for good.
		if ci.NumAckPending > 0 {
			continue
		}
		first, last := st.CachedInfo().State.FirstSeq, ci.Delivered.Stream
		for seq := first; seq > 0 && seq <= last && seq < first+10000; seq++ {
			if err := s.deadLetter(ctx, ta, app, name, seq, "max_deliveries", uint64(ci.Config.MaxDeliver)); err != nil && !errors.Is(err, ErrNotFound) {
				s.log.Error("dead-letter sweep", "account", ta.acc.Name(), "stream", stream, "seq", seq, "error", err)
				break
			}
		}
	}
}

// deadLetter copies a queue message to the dead-letter queue, then deletes it from the queue.
// The copy is idempotent (its id is the queue sequence), so a retry after a crash between
// the two steps stores it once.
func (s *Service) deadLetter(ctx context.Context, ta *tenantAccount, app, queue string, seq uint64, reason string, deliveries uint64) error {
	r := Ref{Application: app, Name: queue}
	js := ta.acc.JetStream()
	st, err := js.Stream(ctx, r.queueStream())
	if err != nil {
		return jsErr(err, "queue")
	}
	raw, err := st.GetMsg(ctx, seq)
	if err != nil {
		return jsErr(err, "message")
	}
	m := nats.NewMsg(r.deadSubject())
	m.Data = raw.Data
	for k, v := range raw.Header {
		if strings.HasPrefix(k, "Nats-") && k != jetstream.MsgIDHeader {
			continue
		}
		m.Header[k] = v
	}
	if id := raw.Header.Get(jetstream.MsgIDHeader); id != "" {
		m.Header.Del(jetstream.MsgIDHeader)
		m.Header.Set("Penstock-Dead-Original-Id", id)
	}
	m.Header.Set(hdrDeadReason, reason)
	m.Header.Set(hdrDeadDeliveries, strconv.FormatUint(deliveries, 10))
	m.Header.Set(hdrDeadSeq, strconv.FormatUint(seq, 10))
	m.Header.Set(hdrDeadPublished, raw.Time.UTC().Format(time.RFC3339Nano))
	m.Header.Set(hdrDeadQueue, queue)
	m.Header.Set(hdrDeadAt, time.Now().UTC().Format(time.RFC3339Nano))
	m.Header.Set(jetstream.MsgIDHeader, "dead:"+strconv.FormatUint(seq, 10))
	if err := s.ensureDeadStream(ctx, ta, r, st); err != nil {
		return err
	}
	if _, err := js.PublishMsg(ctx, m); err != nil {
		return jsErr(err, "store dead letter")
	}
	if err := st.DeleteMsg(ctx, seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return jsErr(err, "remove from queue")
	}
	s.m.deadLettered.WithLabelValues(reason).Inc()
	if s.o.OnDeadLetter != nil {
		s.o.OnDeadLetter(Ref{Tenant: ta.tenant, Environment: ta.env, Application: app, Name: queue}, reason)
	}
	return nil
}

// deadStreamConfig is the dead-letter queue of a queue whose stream has configuration q: its
// age and size limits, and its duplicate window (which makes a move retried after a crash
// store the message once).
// Its age is the queue's, at most fabric.dead_letter_max_age (maxAge): failed payloads do not
// stay forever.
func deadStreamConfig(r Ref, q jetstream.StreamConfig, maxAge time.Duration) jetstream.StreamConfig {
	age := q.MaxAge
	if maxAge > 0 && (age == 0 || age > maxAge) {
		age = maxAge
	}
	dup := min(q.Duplicates, age)
	if dup <= time.Millisecond {
		dup = 0 // the queue remembers no ids (see CreateQueue): the engine's default here
	}
	return jetstream.StreamConfig{
		Name:        r.deadStream(),
		Description: "dead letters of queue " + r.Name,
		Subjects:    []string{r.deadSubject()},
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      age,
		MaxBytes:    q.MaxBytes,
		Storage:     jetstream.FileStorage,
		Duplicates:  dup,
		Metadata:    map[string]string{"penstock.kind": "dead-letters", "penstock.queue": r.Name},
	}
}

// ensureDeadStream creates the dead-letter queue of queue r (whose stream is queue) if it
// does not exist yet. A queue deleted meanwhile does not keep one.
func (s *Service) ensureDeadStream(ctx context.Context, ta *tenantAccount, r Ref, queue jetstream.Stream) error {
	js := ta.acc.JetStream()
	st, err := js.Stream(ctx, r.deadStream())
	if err == nil {
		// One made before fabric.dead_letter_max_age was lowered (or before it existed)
		// takes the bound now.
		if c := st.CachedInfo().Config; c.MaxAge == 0 || c.MaxAge > s.cfg.DeadLetterMaxAge && s.cfg.DeadLetterMaxAge > 0 {
			want := deadStreamConfig(r, c, s.cfg.DeadLetterMaxAge)
			c.MaxAge, c.Duplicates = want.MaxAge, want.Duplicates
			if _, err := js.UpdateStream(ctx, c); err != nil {
				s.log.Warn("bound a dead-letter queue's age", "queue", r.Name, "error", err)
			}
		}
		return nil
	}
	if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return jsErr(err, "dead-letter queue")
	}
	// Not while an application or environment is being deleted: one made after its deletion
	// listed the streams would outlive it.
	s.life.RLock()
	defer s.life.RUnlock()
	if _, err := js.CreateOrUpdateStream(ctx, deadStreamConfig(r, queue.CachedInfo().Config, s.cfg.DeadLetterMaxAge)); err != nil {
		return jsErr(err, "create dead-letter queue")
	}
	if _, err := js.Stream(ctx, r.queueStream()); errors.Is(err, jetstream.ErrStreamNotFound) {
		_ = js.DeleteStream(ctx, r.deadStream())
		return &Missing{Kind: "queue"}
	}
	return nil
}

// deadStream opens queue r's dead-letter queue: nil with no error when the queue exists and
// has had no dead letter yet.
func deadStream(ctx context.Context, ta *tenantAccount, r Ref) (jetstream.Stream, error) {
	js := ta.acc.JetStream()
	st, err := js.Stream(ctx, r.deadStream())
	if err == nil {
		return st, nil
	}
	if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, jsErr(err, "queue "+r.Name)
	}
	if _, err := js.Stream(ctx, r.queueStream()); err != nil {
		return nil, jsErr(err, "queue "+r.Name)
	}
	return nil, nil
}

// rejectToDead moves rejected deliveries to the dead-letter queue before they are terminated:
// a terminated message of a work queue is deleted.
func (s *Service) rejectToDead(ctx context.Context, ta *tenantAccount, r Ref, subjects []string) error {
	for _, subj := range subjects {
		md, err := parseAckSubject(subj, r)
		if err != nil {
			return err
		}
		if err := s.deadLetter(ctx, ta, r.Application, r.Name, md.seq, "rejected", md.delivered); err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
	}
	return nil
}

type ackMD struct{ seq, delivered uint64 }

// parseAckSubject reads an ack subject the way the engine does, and accepts only the exact
// shape the engine gives a delivery of queue r:
// $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>,
// with decimal numbers and a delivery count and sequence of at least 1. Anything else (more
// fields, another queue) is not a token: the engine would read it otherwise, or not at all.
func parseAckSubject(subj string, r Ref) (ackMD, error) {
	t := strings.Split(subj, ".")
	if len(t) != 9 || t[0] != "$JS" || t[1] != "ACK" || t[2] != r.queueStream() || t[3] != r.consumer() {
		return ackMD{}, invalidf("not an ack token")
	}
	var n [5]uint64
	for i, f := range t[4:] {
		if f == "" || len(f) > 20 || strings.Trim(f, "0123456789") != "" {
			return ackMD{}, invalidf("not an ack token")
		}
		v, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			return ackMD{}, invalidf("not an ack token")
		}
		n[i] = v
	}
	if n[0] < 1 || n[1] < 1 {
		return ackMD{}, invalidf("not an ack token")
	}
	return ackMD{delivered: n[0], seq: n[1]}, nil
}

// DeadLetters lists a queue's dead letters from sequence from (0: the first), at most limit.
// It returns the sequence to continue from, 0 at the end.
func (s *Service) DeadLetters(ctx context.Context, r Ref, from uint64, limit int) ([]DeadLetter, uint64, error) {
	if err := r.check("queue"); err != nil {
		return nil, 0, err
	}
	if limit < 1 || limit > 1000 {
		return nil, 0, invalidf("limit: 1 to 1000")
	}
	ta, err := s.account(ctx, r.Tenant, r.Environment)
	if err != nil {
		return nil, 0, err
	}
	st, err := deadStream(ctx, ta, r)
	if err != nil || st == nil {
		return nil, 0, err
	}
	state := st.CachedInfo().State
	if from < state.FirstSeq {
		from = state.FirstSeq
	}
	var out []DeadLetter
	for seq := from; seq <= state.LastSeq && state.Msgs > 0; seq++ {
		if len(out) == limit {
			return out, seq, nil
		}
		raw, err := st.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return nil, 0, jsErr(err, "dead letter")
		}
		out = append(out, toDeadLetter(raw))
	}
	return out, 0, nil
}

// DeadLetter returns one dead letter.
func (s *Service) DeadLetter(ctx context.Context, r Ref, seq uint64) (DeadLetter, error) {
	if err := r.check("queue"); err != nil {
		return DeadLetter{}, err
	}
	ta, err := s.account(ctx, r.Tenant, r.Environment)
	if err != nil {
		return DeadLetter{}, err
	}
	st, err := deadStream(ctx, ta, r)
	if err != nil {
		return DeadLetter{}, err
	}
	if st == nil {
		return DeadLetter{}, &Missing{Kind: "dead letter"}
	}
	raw, err := st.GetMsg(ctx, seq)
	if err != nil {
		return DeadLetter{}, missing(jsErr(err, "dead letter"), "dead letter")
	}
	return toDeadLetter(raw), nil
}

func toDeadLetter(raw *jetstream.RawStreamMsg) DeadLetter {
	h := raw.Header
	d := DeadLetter{Seq: raw.Sequence, Reason: h.Get(hdrDeadReason), Data: raw.Data, ID: h.Get("Penstock-Dead-Original-Id")}
	d.Deliveries, _ = strconv.ParseUint(h.Get(hdrDeadDeliveries), 10, 64)
	d.QueueSeq, _ = strconv.ParseUint(h.Get(hdrDeadSeq), 10, 64)
	d.Published, _ = time.Parse(time.RFC3339Nano, h.Get(hdrDeadPublished))
	d.DeadAt, _ = time.Parse(time.RFC3339Nano, h.Get(hdrDeadAt))
	d.Headers, _ = userHeaders(h)
	return d
}

// Replay moves dead letters back to their queue (every one when seqs is empty) and returns how
// many moved. Each is published with an id derived from its dead-letter sequence, so a replay
// retried after a failure stores it once.
func (s *Service) Replay(ctx context.Context, r Ref, seqs []uint64) (int, error) {
	if err := r.check("queue"); err != nil {
		return 0, err
	}
	ta, err := s.account(ctx, r.Tenant, r.Environment)
	if err != nil {
		return 0, err
	}
	js := ta.acc.JetStream()
	st, err := deadStream(ctx, ta, r)
	if err != nil || st == nil {
		return 0, err
	}
	if len(seqs) == 0 {
		state := st.CachedInfo().State
		for seq := state.FirstSeq; seq <= state.LastSeq && state.Msgs > 0; seq++ {
			seqs = append(seqs, seq)
		}
	}
	moved := 0
	for _, seq := range seqs {
		raw, err := st.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return moved, jsErr(err, "dead letter")
		}
		m := nats.NewMsg(r.queueSubject())
		m.Data = raw.Data
		for k, v := range raw.Header {
			if strings.HasPrefix(k, "Nats-") || strings.HasPrefix(k, "Penstock-Dead-") {
				continue
			}
			m.Header[k] = v
		}
		m.Header.Set(jetstream.MsgIDHeader, "replay:"+r.deadStream()+":"+strconv.FormatUint(seq, 10)+":"+base64.RawURLEncoding.EncodeToString(raw.Time.AppendFormat(nil, time.RFC3339Nano)))
		if _, err := js.PublishMsg(ctx, m); err != nil {
			return moved, jsErr(err, "replay")
		}
		if err := st.DeleteMsg(ctx, seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			return moved, jsErr(err, "remove dead letter")
		}
		moved++
	}
	s.m.replayed.Add(float64(moved))
	return moved, nil
}

// PurgeDeadLetters deletes every dead letter of a queue and returns how many there were.
func (s *Service) PurgeDeadLetters(ctx context.Context, r Ref) (uint64, error) {
	if err := r.check("queue"); err != nil {
		return 0, err
	}
	ta, err := s.account(ctx, r.Tenant, r.Environment)
	if err != nil {
		return 0, err
	}
	st, err := deadStream(ctx, ta, r)
	if err != nil || st == nil {
		return 0, err
	}
	n := st.CachedInfo().State.Msgs
	if err := st.Purge(ctx); err != nil {
		return 0, jsErr(err, "purge")
	}
	return n, nil
}
