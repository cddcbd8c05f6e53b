package fabric

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/penstock/penstock/internal/activity"
)

// Delivery is one message handed to a consumer. It stays the consumer's until acknowledged,
// negatively acknowledged, or its ack wait runs out; then it is delivered again.
type Delivery struct {
	// AckToken names this delivery in Ack, Nack, Extend and Reject.
	AckToken   string            `json:"ack_token"`
	Seq        uint64            `json:"seq"`
	Deliveries uint64            `json:"deliveries" doc:"1 on the first delivery"`
	Published  time.Time         `json:"published"`
	ID         string            `json:"id,omitempty"`
	Exchange   string            `json:"exchange,omitempty" doc:"the exchange that routed it here, if any"`
	RoutingKey string            `json:"routing_key,omitempty"`
	Headers    map[string]string `json:"headers,omitempty"`
	Data       []byte            `json:"-"`
}

// Consume takes up to max messages from a queue. With wait > 0 it waits that long for the
// first message, then returns what is available.
func (s *Service) Consume(ctx context.Context, r Ref, maxN int, wait time.Duration) ([]Delivery, error) {
	if err := r.check("queue"); err != nil {
		return nil, err
	}
	if maxN < 1 || maxN > 1000 {
		return nil, invalidf("max: 1 to 1000")
	}
	if wait < 0 || wait > 30*time.Second {
		return nil, invalidf("wait: 0 to 30s")
	}
	ta, err := s.account(ctx, r.Tenant, r.Environment)
	if err != nil {
		return nil, err
	}
	// A poll of an empty queue is use too.
	s.o.Activity.Touch(r.Tenant, r.Environment, activity.Consume)
	ta.useMu.RLock() // its consumer is not deleted as idle meanwhile (queueconsumer.go)
	defer ta.useMu.RUnlock()
	cons, err := s.consumer(ctx, ta, r, true)
	if err != nil {
		return nil, err
	}
	out, err := fetch(cons, maxN, 0)
	if consumerGone(err) {
		// The handle's consumer went (the queue deleted and made again, or the idle close
		// deleted it just as this consume began): made again, asked again.
		ta.forgetConsumer(r.queueStream())
		if cons, err = s.consumer(ctx, ta, r, true); err != nil {
			return nil, err
		}
		out, err = fetch(cons, maxN, 0)
	}
	if consumerGone(err) {
		ta.forgetConsumer(r.queueStream())
	}
	if err == nil && len(out) == 0 && wait == 0 && ta.unseen(ctx, r, cons) {
		// The engine answers a publish before it tells the queue's consumer about the stored
		// message, so a consume right after a publish can find the consumer unaware of it.
		// Wait for it, briefly: it is on its way.
		wait = catchUp
	}
	if err != nil || len(out) > 0 || wait == 0 {
		return s.deliveries(out), err
	}
	out, err = fetch(cons, 1, wait)
	if err != nil || len(out) == 0 || maxN == 1 {
		return s.deliveries(out), err
	}
	more, err := fetch(cons, maxN-1, 0)
	return s.deliveries(append(out, more...)), err
}

// catchUp bounds how long a consume that does not wait gives the queue's consumer to learn of
// a message already stored.
const catchUp = 2 * time.Second

// unseen reports whether the queue's stream holds a message its consumer has neither delivered
// nor counted yet: a later sequence than the last delivered, and more messages than are in
// flight. Asked only when a consume that does not wait found nothing.
func (ta *tenantAccount) unseen(ctx context.Context, r Ref, cons jetstream.Consumer) bool {
	ci, err := cons.Info(ctx)
	if err != nil {
		return false
	}
	st, err := ta.acc.JetStream().Stream(ctx, r.queueStream())
	if err != nil {
		return false
	}
	si := st.CachedInfo()
	return si.State.LastSeq > ci.Delivered.Stream && si.State.Msgs > uint64(ci.NumAckPending)
}

// consumer returns a queue's consumer handle, looked up once (a lookup is a round trip to
// the engine), and, with create, made first if the queue has none (queueconsumer.go).
func (s *Service) consumer(ctx context.Context, ta *tenantAccount, r Ref, create bool) (jetstream.Consumer, error) {
	ta.mu.RLock()
	c, ok := ta.consumers[r.queueStream()]
	ta.mu.RUnlock()
	if ok {
		return c, nil
	}
	var err error
	if create {
		c, err = s.ensureConsumer(ctx, ta, r)
	} else {
		c, err = ta.acc.JetStream().Consumer(ctx, r.queueStream(), r.consumer())
		err = jsErr(err, "queue "+r.Name)
	}
	if err != nil {
		return nil, err
	}
	ta.mu.Lock()
	ta.consumers[r.queueStream()] = c
	ta.mu.Unlock()
	return c, nil
}

func (ta *tenantAccount) forgetConsumer(stream string) {
	ta.mu.Lock()
	delete(ta.consumers, stream)
	ta.mu.Unlock()
}

// consumerGone tells whether a fetch failed because its consumer is not there.
func consumerGone(err error) bool {
	return errors.Is(err, ErrNotFound) || errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrConsumerDeleted)
}

func fetch(cons jetstream.Consumer, n int, wait time.Duration) ([]jetstream.Msg, error) {
	var b jetstream.MessageBatch
	var err error
	if wait == 0 {
		b, err = cons.FetchNoWait(n)
	} else {
		b, err = cons.Fetch(n, jetstream.FetchMaxWait(wait))
	}
	if err != nil {
		return nil, jsErr(err, "fetch")
	}
	var out []jetstream.Msg
	for m := range b.Messages() {
		out = append(out, m)
	}
	if err := b.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, jetstream.ErrNoMessages) {
		return out, jsErr(err, "fetch")
	}
	return out, nil
}

func (s *Service) deliveries(msgs []jetstream.Msg) []Delivery {
	out := make([]Delivery, 0, len(msgs))
	for _, m := range msgs {
		h := m.Headers()
		d := Delivery{AckToken: base64.RawURLEncoding.EncodeToString([]byte(m.Reply())), Data: m.Data(),
			Exchange: h.Get("Penstock-Exchange"), RoutingKey: h.Get("Penstock-Routing-Key")}
		if md, err := m.Metadata(); err == nil {
			d.Seq, d.Deliveries, d.Published = md.Sequence.Stream, md.NumDelivered, md.Timestamp
		}
		d.Headers, d.ID = userHeaders(h)
		if x := h.Get("Penstock-Exchange-Msg-Id"); x != "" {
			d.ID = x
		}
		out = append(out, d)
	}
	s.m.delivered.WithLabelValues("https").Add(float64(len(out)))
	return out
}

// userHeaders returns the headers a client set, and the message id, leaving out the engine's
// own.
func userHeaders(h nats.Header) (map[string]string, string) {
	var out map[string]string
	for k, v := range h {
		if len(v) == 0 || strings.HasPrefix(strings.ToLower(k), "nats-") || strings.HasPrefix(strings.ToLower(k), "penstock-") {
			continue
		}
		if out == nil {
			out = map[string]string{}
		}
		out[k] = v[0]
	}
	return out, h.Get(jetstream.MsgIDHeader)
}

// Settlement is what Settle does with deliveries.
type Settlement int

// The settlements.
const (
	Ack    Settlement = iota // done: the message is deleted
	Nack                     // deliver again, after Delay
	Extend                   // still working: restart the ack wait
	Reject                   // never deliver again: to the dead-letter queue
)

// Settle acknowledges, negatively acknowledges, extends or rejects deliveries of a queue by
// their tokens. It returns once the engine has applied every settlement and answered for it:
// after an acknowledgement returns, the message is deleted from the queue (on the embedded
// engine with sync "always", the deletion is fsynced) and is never delivered again, crash or
// not.
func (s *Service) Settle(ctx context.Context, r Ref, tokens []string, how Settlement, delay time.Duration) error {
	if err := r.check("queue"); err != nil {
		return err
	}
	if len(tokens) == 0 || len(tokens) > 1000 {
		return invalidf("tokens: 1 to 1000")
	}
	if delay < 0 || delay > 12*time.Hour {
		return invalidf("delay: 0 to 12h")
	}
	s.o.Activity.Touch(r.Tenant, r.Environment, activity.Consume)
	subjects := make([]string, len(tokens))
	seqs := make([]uint64, len(tokens))
	for i, t := range tokens {
		b, err := base64.RawURLEncoding.DecodeString(t)
		if err != nil || len(b) > 512 {
			return invalidf("tokens[%d]: not an ack token of queue %s", i, r.Name)
		}
		md, err := parseAckSubject(string(b), r)
		if err != nil {
			return invalidf("tokens[%d]: not an ack token of queue %s", i, r.Name)
		}
		subjects[i], seqs[i] = string(b), md.seq
	}
	ta, err := s.account(ctx, r.Tenant, r.Environment)
	if err != nil {
		return err
	}
	var body []byte
	switch how {
	case Ack:
		body = []byte("+ACK")
	case Nack:
		body = []byte("-NAK")
		if delay > 0 {
			body = fmt.Appendf(nil, `-NAK {"delay": %d}`, delay.Nanoseconds())
		}
	case Extend:
		body = []byte("+WPI")
	case Reject:
		body = []byte("+TERM penstock: rejected by consumer")
	}
	// The engine never answers a settlement of a delivery beyond what it has delivered: such
	// a token is refused here rather than left to time out.
	// Not made for a settlement: a queue without a consumer has delivered nothing to settle.
	cons, err := s.consumer(ctx, ta, r, false)
	if errors.Is(err, ErrNotFound) {
		if _, serr := ta.acc.JetStream().Stream(ctx, r.queueStream()); serr == nil {
			return invalidf("tokens[0]: no such delivery of queue %s", r.Name)
		}
	}
	if err != nil {
		return err
	}
	ci, err := cons.Info(ctx)
	if err != nil {
		ta.forgetConsumer(r.queueStream())
		return jsErr(err, "queue "+r.Name)
	}
	for i, seq := range seqs {
		if seq > ci.Delivered.Stream {
			return invalidf("tokens[%d]: no such delivery of queue %s", i, r.Name)
		}
	}
	if how == Reject {
		if err := s.rejectToDead(ctx, ta, r, subjects); err != nil {
			return err
		}
	}
	if err := settleAcknowledged(ctx, ta.acc.Conn(), r, subjects, body); err != nil {
		return err
	}
	// With the engine's group sync the removal is on disk before the answer, as with its
	// fsync per write: an acknowledged ack never comes back, even after a power cut.
	if err := ta.acc.Sync(ctx); err != nil {
		return fmt.Errorf("%w: %v", ErrNotDurable, err)
	}
	if how == Ack {
		s.m.acked.WithLabelValues("https").Add(float64(len(subjects)))
	}
	return nil
}

// settleTimeout bounds the wait for the engine's answers to one Settle call.
const settleTimeout = 20 * time.Second

// settleAcknowledged sends every settlement with a reply subject of its own (JetStream's
// acknowledged acks, as nats.go's DoubleAck) and waits for every answer. The settlements are
// pipelined on one connection with one subscription, so a batch costs one round trip plus
// the engine's own work, not a round trip per message. The engine answers an acknowledgement
// only after it has removed the message from the work queue.
func settleAcknowledged(ctx context.Context, nc *nats.Conn, r Ref, subjects []string, body []byte) error {
	inbox := nc.NewRespInbox()
	answers := make(chan *nats.Msg, len(subjects)) // room for every answer: none is dropped
	sub, err := nc.ChanSubscribe(inbox+".*", answers)
	if err != nil {
		return fmt.Errorf("settle: %w", err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	prefix := inbox + "."
	for i, subj := range subjects {
		if err := nc.PublishMsg(&nats.Msg{Subject: subj, Reply: prefix + strconv.Itoa(i), Data: body}); err != nil {
			return fmt.Errorf("settle: %w", err)
		}
	}
	wctx, cancel := context.WithTimeout(ctx, settleTimeout)
	defer cancel()
	answered := make([]bool, len(subjects))
	for left := len(subjects); left > 0; {
		select {
		case m := <-answers:
			i, err := strconv.Atoi(strings.TrimPrefix(m.Subject, prefix))
			if err != nil || i < 0 || i >= len(subjects) || answered[i] {
				continue
			}
			if m.Header.Get("Status") == "503" {
				// Nothing listens on the ack subject: the queue (or its consumer) is gone.
				return fmt.Errorf("queue %s: %w", r.Name, ErrNotFound)
			}
			answered[i] = true
			left--
		case <-wctx.Done():
			if ctx.Err() != nil {
				return ctx.Err()
			}
			for i, ok := range answered {
				if !ok {
					return fmt.Errorf("%w: tokens[%d]: the engine did not answer within %s (a delivery it does not know)", ErrUnsettled, i, settleTimeout)
				}
			}
		}
	}
	return nil
}

// ErrUnsettled fails a settlement the engine did not confirm: the token names no delivery the
// queue's consumer knows.
var ErrUnsettled = errors.New("not settled")
