package fabric

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// Message is one message to publish.
type Message struct {
	// ID, if set, makes the publish idempotent: within the queue's duplicate window a message
	// with an id already stored is acknowledged and not stored again.
	ID      string
	Headers map[string]string
	Data    []byte
	// RoutingKey is the key an exchange routes by; queues ignore it.
	RoutingKey string
}

// Receipt acknowledges one stored message.
type Receipt struct {
	Seq       uint64 `json:"seq" doc:"sequence number in the queue or exchange"`
	Duplicate bool   `json:"duplicate,omitempty" doc:"the id was already stored; nothing new was"`
}

// Target is where Publish writes: a queue, or an exchange (which routes by routing key).
type Target struct {
	Ref
	Exchange bool
}

func (t Target) stream() string {
	if t.Exchange {
		return t.exchangeStream()
	}
	return t.queueStream()
}

func (t Target) subject(m Message) string {
	if t.Exchange {
		if m.RoutingKey == "" {
			return t.exchangeSubject()
		}
		return t.exchangeSubject() + "." + m.RoutingKey
	}
	return t.queueSubject()
}

// Publish stores messages in a queue or exchange and returns once they are durable: on the
// embedded engine with sync "always", fsynced. Concurrent publishes to one stream are gathered
// into one atomic batch (one fsync) per commit window. The messages of one call are stored
// all or none.
func (s *Service) Publish(ctx context.Context, t Target, msgs []Message) ([]Receipt, error) {
	kind := "queue"
	if t.Exchange {
		kind = "exchange"
	}
	if err := t.check(kind); err != nil {
		return nil, err
	}
	if len(msgs) == 0 || len(msgs) > s.cfg.MaxPublishBatch {
		return nil, invalidf("messages: 1 to %d per request", s.cfg.MaxPublishBatch)
	}
	out := make([]*nats.Msg, len(msgs))
	var size int
	for i, m := range msgs {
		nm, err := s.natsMsg(t, m)
		if err != nil {
			return nil, fmt.Errorf("messages[%d]: %w", i, err)
		}
		out[i] = nm
		size += len(m.Data)
	}
	ta, err := s.account(ctx, t.Tenant, t.Environment)
	if err != nil {
		return nil, err
	}
	if err := s.quota(ctx, ta, t.Ref, len(msgs), size, "https"); err != nil {
		return nil, err
	}
	c, err := s.committerFor(ctx, ta, t.stream())
	if err != nil {
		return nil, err
	}
	req := &pubReq{msgs: out, done: make(chan pubResult, 1)}
	select {
	case c.ch <- req:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-s.ctx.Done():
		return nil, ErrClosed
	}
	var r pubResult
	select {
	case r = <-req.done:
	case <-c.stopped:
		// The committer stopped (the queue was deleted, or the fabric is closing); a result
		// sent before it stopped still counts.
		select {
		case r = <-req.done:
		default:
			return nil, ErrClosed
		}
	case <-ctx.Done():
		// The batch may still commit; the client's retry with the same ids is idempotent.
		return nil, ctx.Err()
	}
	if r.err != nil {
		if errors.Is(r.err, ErrNotFound) {
			s.dropCommitter(ta, t.stream())
		}
		return nil, r.err
	}
	s.m.published.WithLabelValues("https").Add(float64(len(msgs)))
	s.m.publishedBytes.WithLabelValues("https").Add(float64(size))
	return r.receipts, nil
}

// ErrClosed fails publishes caught by the fabric closing or their queue being deleted; they
// may be retried (with their ids, safely).
var ErrClosed = errors.New("publishing stopped: the queue was deleted or the server is stopping")

func (s *Service) natsMsg(t Target, m Message) (*nats.Msg, error) {
	if s.cfg.MaxPayload > 0 && len(m.Data) > s.cfg.MaxPayload {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrPayloadLimit, len(m.Data), s.cfg.MaxPayload)
	}
	if len(m.ID) > 256 {
		return nil, invalidf("id: at most 256 characters")
	}
	if t.Exchange {
		if err := checkRoutingKey(m.RoutingKey); err != nil {
			return nil, err
		}
	} else if m.RoutingKey != "" {
		return nil, invalidf("routing_key: only for exchanges")
	}
	nm := nats.NewMsg(t.subject(m))
	nm.Data = m.Data
	for k, v := range m.Headers {
		if err := validHeader(k); err != nil {
			return nil, err
		}
		if strings.ContainsAny(v, "\r\n") {
			return nil, invalidf("header %q: value must not contain line breaks", k)
		}
		nm.Header.Set(k, v)
	}
	if m.ID != "" {
		if strings.ContainsAny(m.ID, "\r\n") {
			return nil, invalidf("id: must not contain line breaks")
		}
		nm.Header.Set(jetstream.MsgIDHeader, m.ID)
	}
	return nm, nil
}

type pubReq struct {
	msgs []*nats.Msg
	done chan pubResult
}

type pubResult struct {
	receipts []Receipt
	err      error
}

// committer gathers the publishes to one stream into atomic batches, one in flight at a time:
// while a batch is being made durable, the next one fills.
type committer struct {
	nc     *nats.Conn
	js     jetstream.JetStream
	stream string
	ch     chan *pubReq
	cancel context.CancelFunc
	// stopped is closed when the commit loop has ended and failed what was queued.
	stopped chan struct{}
}

func (s *Service) committerFor(ctx context.Context, ta *tenantAccount, stream string) (*committer, error) {
	key := ta.acc.Name() + "/" + stream
	s.mu.Lock()
	c, ok := s.committers[key]
	s.mu.Unlock()
	if ok {
		return c, nil
	}
	if _, err := ta.acc.JetStream().Stream(ctx, stream); err != nil {
		return nil, jsErr(err, "stream "+stream)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.committers[key]; ok {
		return c, nil
	}
	cctx, cancel := context.WithCancel(s.ctx)
	c = &committer{nc: ta.acc.Conn(), js: ta.acc.JetStream(), stream: stream, ch: make(chan *pubReq, 4096), cancel: cancel,
		stopped: make(chan struct{})}
	s.committers[key] = c
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.commitLoop(cctx, c)
	}()
	return c, nil
}

func (s *Service) dropCommitter(ta *tenantAccount, stream string) {
	ta.forgetConsumer(stream)
	key := ta.acc.Name() + "/" + stream
	s.mu.Lock()
	c, ok := s.committers[key]
	delete(s.committers, key)
	s.mu.Unlock()
	if ok {
		c.cancel()
	}
}

func (s *Service) commitLoop(ctx context.Context, c *committer) {
	defer close(c.stopped)
	defer func() {
		// Fail whatever is still queued.
		for {
			select {
			case r := <-c.ch:
				r.done <- pubResult{err: ErrClosed}
			default:
				return
			}
		}
	}()
	maxN := s.cfg.MaxCommit
	// Up to commitsInFlight batches are being made durable at once: a JetStream atomic batch
	// has a fixed cost (the engine stages it in a store of its own), which concurrent batches
	// overlap. Each request is in exactly one batch, and a publisher waits for its
	// acknowledgement before it sends more, so its messages stay in order.
	slots := make(chan struct{}, commitsInFlight)
	var inflight sync.WaitGroup
	defer inflight.Wait()
	for {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return
		}
		var first *pubReq
		select {
		case first = <-c.ch:
		case <-ctx.Done():
			return
		}
		batch := []*pubReq{first}
		n := len(first.msgs)
		var timer *time.Timer
		var deadline <-chan time.Time
		if s.cfg.CommitWindow > 0 {
			timer = time.NewTimer(s.cfg.CommitWindow)
			deadline = timer.C
		}
	gather:
		for n < maxN {
			var r *pubReq
			if deadline == nil {
				select {
				case r = <-c.ch:
				default:
					break gather
				}
			} else {
				select {
				case r = <-c.ch:
				case <-deadline:
					break gather
				case <-ctx.Done():
					break gather
				}
			}
			if n+len(r.msgs) > maxN {
				// Too big to join: it starts the next batch.
				s.commit(ctx, c, batch)
				batch, n = []*pubReq{r}, len(r.msgs)
				continue
			}
			batch = append(batch, r)
			n += len(r.msgs)
		}
		if timer != nil {
			timer.Stop()
		}
		inflight.Add(1)
		go func(batch []*pubReq) {
			defer inflight.Done()
			defer func() { <-slots }()
			s.commit(ctx, c, batch)
		}(batch)
	}
}

// commitsInFlight is how many atomic batches one stream has being committed at once
// (JetStream allows 50 per stream).
const commitsInFlight = 16

// commit makes one batch durable and answers each of its requests.
func (s *Service) commit(ctx context.Context, c *committer, batch []*pubReq) {
	var msgs []*nats.Msg
	for _, r := range batch {
		msgs = append(msgs, r.msgs...)
	}
	s.m.commitSize.Observe(float64(len(msgs)))
	start := time.Now()
	first, dups, err := s.atomic(ctx, c, msgs)
	s.m.commitLatency.Observe(time.Since(start).Seconds())
	if err != nil && ctx.Err() != nil {
		err = ErrClosed // stopped mid-commit: the batch may or may not be stored
	}
	if errors.Is(err, errBatchDuplicate) {
		// An id in the batch was already stored. Publish each request's messages on their
		// own, where a duplicate is an acknowledgement, not an error.
		for _, r := range batch {
			res := s.oneByOne(ctx, c, r.msgs)
			if res.err != nil && ctx.Err() != nil {
				res.err = ErrClosed
			}
			r.done <- res
		}
		return
	}
	if err != nil {
		for _, r := range batch {
			r.done <- pubResult{err: err}
		}
		return
	}
	seq := first
	for _, r := range batch {
		rec := make([]Receipt, len(r.msgs))
		for i := range rec {
			rec[i] = Receipt{Seq: seq}
			seq++
		}
		if dups {
			rec[0].Duplicate = true
		}
		r.done <- pubResult{receipts: rec}
	}
}

var errBatchDuplicate = errors.New("atomic batch contains a duplicate message id")

type pubAck struct {
	Stream    string `json:"stream"`
	Seq       uint64 `json:"seq"`
	Duplicate bool   `json:"duplicate,omitempty"`
	Count     int    `json:"count,omitempty"`
	Error     *struct {
		Code        int    `json:"code"`
		ErrCode     uint16 `json:"err_code"`
		Description string `json:"description"`
	} `json:"error,omitempty"`
}

// atomic publishes msgs as one JetStream atomic batch and returns the first sequence. A single
// message is an ordinary publish (whose duplicate answer is then reported).
func (s *Service) atomic(ctx context.Context, c *committer, msgs []*nats.Msg) (first uint64, dup bool, err error) {
	if len(msgs) == 1 {
		ack, err := c.js.PublishMsg(ctx, msgs[0])
		if err != nil {
			return 0, false, jsErr(err, "publish")
		}
		return ack.Sequence, ack.Duplicate, nil
	}
	id := nuid.Next()
	for i, m := range msgs {
		m.Header.Set("Nats-Batch-Id", id)
		m.Header.Set("Nats-Batch-Sequence", strconv.Itoa(i+1))
		if i < len(msgs)-1 {
			if err := c.nc.PublishMsg(m); err != nil {
				return 0, false, fmt.Errorf("publish: %w", err)
			}
		}
	}
	last := msgs[len(msgs)-1]
	last.Header.Set("Nats-Batch-Commit", "1")
	last.Reply = ""
	resp, err := c.nc.RequestMsgWithContext(ctx, last)
	for _, m := range msgs {
		m.Header.Del("Nats-Batch-Id")
		m.Header.Del("Nats-Batch-Sequence")
		m.Header.Del("Nats-Batch-Commit")
	}
	if errors.Is(err, nats.ErrNoResponders) {
		return 0, false, fmt.Errorf("stream %s: %w", c.stream, ErrNotFound)
	}
	if err != nil {
		return 0, false, fmt.Errorf("publish: %w", err)
	}
	var pa pubAck
	if err := json.Unmarshal(resp.Data, &pa); err != nil {
		return 0, false, fmt.Errorf("publish: bad acknowledgement: %w", err)
	}
	if pa.Error != nil {
		if pa.Error.ErrCode == 10201 {
			return 0, false, errBatchDuplicate
		}
		return 0, false, jsErr(&jetstream.APIError{Code: pa.Error.Code, ErrorCode: jetstream.ErrorCode(pa.Error.ErrCode), Description: pa.Error.Description}, "publish")
	}
	if pa.Count != len(msgs) {
		return 0, false, fmt.Errorf("publish: batch of %d acknowledged as %d", len(msgs), pa.Count)
	}
	return pa.Seq - uint64(len(msgs)) + 1, false, nil
}

// oneByOne publishes messages one at a time, each acknowledged (and deduplicated) on its own.
func (s *Service) oneByOne(ctx context.Context, c *committer, msgs []*nats.Msg) pubResult {
	rec := make([]Receipt, len(msgs))
	for i, m := range msgs {
		ack, err := c.js.PublishMsg(ctx, m)
		if err != nil {
			return pubResult{err: jsErr(err, "publish")}
		}
		rec[i] = Receipt{Seq: ack.Sequence, Duplicate: ack.Duplicate}
	}
	return pubResult{receipts: rec}
}
