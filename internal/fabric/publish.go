package fabric

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/penstock/penstock/internal/activity"
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
// embedded engine with sync "always", on disk (covered by a group sync, or fsynced by the
// engine with engine.group_sync off). Concurrent publishers share the sync (commitLoop). The
// messages of one call are stored all or none.
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
	alone := false
	for i, m := range out {
		if tooLargeForBatch(c.nc, m) {
			if len(out) > 1 {
				// Stored all or none means in one atomic batch, whose headers it has no room for.
				return nil, fmt.Errorf("messages[%d]: %w: %d bytes with its headers, too large for a batch (at most %d)", i, ErrPayloadLimit,
					wireSize(m), c.nc.MaxPayload()-batchHeaderRoom)
			}
			alone = true
		}
	}
	req := &pubReq{msgs: out, done: make(chan pubResult, 1), alone: alone}
	if !c.enqueue(ctx, req) {
		return nil, ctx.Err()
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
	s.o.Activity.Touch(t.Tenant, t.Environment, activity.Publish)
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
	// done receives the result of an HTTPS publish; answer, if set instead, takes it (a native
	// client's publish, answered on its reply subject).
	done   chan pubResult
	answer func(pubResult)
	// asIs: msgs[0] is a native client's message with engine instructions, sent to the stream
	// as it is; relay (nil if the client asked for no answer) takes the engine's answer.
	asIs  bool
	relay func(*nats.Msg)
	// alone: too large to take the batch headers, committed on its own.
	alone bool
	once  sync.Once
}

// finish answers the request, once: a request caught by its committer stopping may be
// answered both by the committer's last drain and by its sender.
func (r *pubReq) finish(res pubResult) {
	r.once.Do(func() {
		if r.answer != nil {
			r.answer(res)
			return
		}
		r.done <- res
	})
}

// enqueue hands a request to the committer, or answers it ErrClosed when the committer has
// stopped (or stops while taking it). It returns false if ctx ended first, the request
// unanswered.
func (c *committer) enqueue(ctx context.Context, r *pubReq) bool {
	select {
	case c.ch <- r:
	case <-c.stopped:
		r.finish(pubResult{err: ErrClosed})
		return true
	case <-ctx.Done():
		return false
	}
	if c.closed.Load() {
		// Taken after the commit loop's last drain began: maybe never read.
		r.finish(pubResult{err: ErrClosed})
	}
	return true
}

type pubResult struct {
	receipts []Receipt
	err      error
}

// committer gathers the publishes to one stream into atomic batches: while batches are being
// made durable, the next one fills. Batches are sent to the engine in the order their
// messages arrived, from one goroutine, so a publisher's messages are stored in the order it
// sent them even with several batches in flight; only the wait for the engine's answer is
// concurrent.
type committer struct {
	nc *nats.Conn
	js jetstream.JetStream
	// sync makes what the engine acknowledged durable (a no-op when the engine fsyncs every
	// write). plain: single-message requests are sent as plain publishes, each answered once
	// the engine stored it and a group sync covered it (set with the engine's group sync).
	sync   func(context.Context) error
	plain  bool
	stream string
	ch     chan *pubReq
	cancel context.CancelFunc
	// stopped is closed when the commit loop has ended and failed what was queued; closed is
	// set before its last drain of ch.
	stopped chan struct{}
	closed  atomic.Bool

	// clustered: the queue's stream is replicated, and its leader may change while a batch
	// waits for its answer (see sent.wait). leaderMu guards the last look at the leader,
	// shared by the batches waiting then.
	clustered bool
	leaderMu  sync.Mutex
	leaderAt  time.Time // when it was asked
	leader    leaderSeen

	// The engine answers each batch on inbox.<token>, dispatched to the batch waiting for it.
	inbox   string
	sub     *nats.Subscription
	wmu     sync.Mutex
	next    uint64
	waiting map[string]chan *nats.Msg
}

// answered hands the engine's answer to the batch waiting for it.
func (c *committer) answered(m *nats.Msg) {
	token := m.Subject[len(c.inbox)+1:]
	c.wmu.Lock()
	ch, ok := c.waiting[token]
	delete(c.waiting, token)
	c.wmu.Unlock()
	if ok {
		ch <- m
	}
}

// sent is a batch handed to the engine, waiting for its answer.
type sent struct {
	c      *committer
	token  string
	ch     chan *nats.Msg
	n      int
	sentAt time.Time
}

// leaderSeen is who led the queue's stream and since when, as the engine said.
type leaderSeen struct {
	name  string
	since time.Time // zero if the engine did not say
}

// currentLeader asks for the queue stream's leader, at most once a second for all the batches
// of the queue waiting then. ok is false while the engine does not answer (an election).
func (c *committer) currentLeader(ctx context.Context) (leaderSeen, bool) {
	c.leaderMu.Lock()
	defer c.leaderMu.Unlock()
	if time.Since(c.leaderAt) < time.Second && c.leader.name != "" {
		return c.leader, true
	}
	ictx, cancel := context.WithTimeout(ctx, leaderCheck)
	defer cancel()
	st, err := c.js.Stream(ictx, c.stream)
	if err != nil {
		return leaderSeen{}, false
	}
	ci := st.CachedInfo().Cluster
	if ci == nil || ci.Leader == "" {
		return leaderSeen{}, false
	}
	c.leader, c.leaderAt = leaderSeen{name: ci.Leader}, time.Now()
	if ci.LeaderSince != nil {
		c.leader.since = *ci.LeaderSince
	}
	return c.leader, true
}

// lostTo tells whether the queue's stream has a leader elected after the batch was sent: the
// leader the batch went to is gone, and the new one does not know the batch. leaderSkew allows
// for the leader's clock being ahead of this node's.
func (sd *sent) lostTo(ctx context.Context, began leaderSeen) bool {
	now, ok := sd.c.currentLeader(ctx)
	if !ok {
		return false
	}
	if !now.since.IsZero() {
		return now.since.After(sd.sentAt.Add(leaderSkew))
	}
	return began.name != "" && now.name != began.name
}

// leaderCheck is how long a replicated queue's batch waits for its answer before the commit
// asks whether the stream's leader changed, and again after each check. A leader that died
// with the batch never answers, and the new one does not know the batch: without the check,
// the publisher waited commitTimeout (30 s) for an answer that could not come.
const (
	leaderCheck = 2 * time.Second
	leaderSkew  = 500 * time.Millisecond
)

// ErrInDoubt: the engine lost a publish's answer (the queue's leader changed while it was in
// flight). It may or may not be stored; a retry with the same message ids is stored once.
var ErrInDoubt = errors.New("the queue's leader changed while the publish was in flight: it may or may not be stored")

// send hands msgs to the engine as one atomic batch (a single message as a plain publish),
// without waiting for the answer. It must be called from one goroutine at a time per
// committer for the batches to be stored in the order they are sent.
func (c *committer) send(msgs []*nats.Msg) (*sent, error) {
	c.wmu.Lock()
	c.next++
	token := strconv.FormatUint(c.next, 36)
	sd := &sent{c: c, token: token, ch: make(chan *nats.Msg, 1), n: len(msgs), sentAt: time.Now()}
	c.waiting[token] = sd.ch
	c.wmu.Unlock()
	reply := c.inbox + "." + token
	var err error
	if len(msgs) == 1 {
		m := msgs[0]
		m.Reply = reply
		err = c.nc.PublishMsg(m)
		m.Reply = ""
	} else {
		id := nuid.Next()
		for i, m := range msgs {
			m.Header.Set("Nats-Batch-Id", id)
			m.Header.Set("Nats-Batch-Sequence", strconv.Itoa(i+1))
			if i == len(msgs)-1 {
				m.Header.Set("Nats-Batch-Commit", "1")
				m.Reply = reply
			}
			if err = c.nc.PublishMsg(m); err != nil {
				break
			}
		}
		for _, m := range msgs {
			m.Reply = ""
			m.Header.Del("Nats-Batch-Id")
			m.Header.Del("Nats-Batch-Sequence")
			m.Header.Del("Nats-Batch-Commit")
		}
	}
	if err != nil {
		sd.forget()
		return nil, fmt.Errorf("publish: %w", err)
	}
	return sd, nil
}

// sendRaw sends m as it is, with a reply of the committer's, and returns the wait for the
// engine's answer.
func (c *committer) sendRaw(m *nats.Msg) (*sent, error) {
	c.wmu.Lock()
	c.next++
	token := strconv.FormatUint(c.next, 36)
	sd := &sent{c: c, token: token, ch: make(chan *nats.Msg, 1), n: 1}
	c.waiting[token] = sd.ch
	c.wmu.Unlock()
	m.Reply = c.inbox + "." + token
	if err := c.nc.PublishMsg(m); err != nil {
		sd.forget()
		return nil, fmt.Errorf("publish: %w", err)
	}
	return sd, nil
}

func (sd *sent) forget() {
	sd.c.wmu.Lock()
	delete(sd.c.waiting, sd.token)
	sd.c.wmu.Unlock()
}

// wait returns the first sequence the batch was stored at, and for a single message whether
// it was a duplicate of one stored before.
func (sd *sent) wait(ctx context.Context) (first uint64, dup bool, err error) {
	var resp *nats.Msg
	var check <-chan time.Time
	var began leaderSeen // without election times, the leader when the wait began
	if sd.c.clustered {
		t := time.NewTicker(leaderCheck)
		defer t.Stop()
		check = t.C
		sd.c.leaderMu.Lock()
		began = sd.c.leader
		sd.c.leaderMu.Unlock()
	}
	for resp == nil {
		select {
		case resp = <-sd.ch:
		case <-ctx.Done():
			sd.forget()
			return 0, false, fmt.Errorf("publish: %w", ctx.Err())
		case <-check:
			if !sd.lostTo(ctx, began) {
				continue
			}
			select {
			case resp = <-sd.ch: // answered during the check after all
			default:
				sd.forget()
				return 0, false, fmt.Errorf("stream %s: %w", sd.c.stream, ErrInDoubt)
			}
		}
	}
	if resp.Header.Get("Status") == "503" && len(resp.Data) == 0 {
		// No responders: no stream takes the subject any more.
		return 0, false, fmt.Errorf("stream %s: %w", sd.c.stream, ErrNotFound)
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
	if sd.n == 1 {
		return pa.Seq, pa.Duplicate, nil
	}
	if pa.Count != sd.n {
		return 0, false, fmt.Errorf("publish: batch of %d acknowledged as %d", sd.n, pa.Count)
	}
	return pa.Seq - uint64(sd.n) + 1, false, nil
}

// hasCommitter tells whether a stream's committer is running (its stream was found).
func (s *Service) hasCommitter(ta *tenantAccount, stream string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.committers[ta.acc.Name()+"/"+stream]
	return ok
}

func (s *Service) committerFor(ctx context.Context, ta *tenantAccount, stream string) (*committer, error) {
	key := ta.acc.Name() + "/" + stream
	s.mu.Lock()
	c, ok := s.committers[key]
	s.mu.Unlock()
	if ok {
		return c, nil
	}
	st, err := ta.acc.JetStream().Stream(ctx, stream)
	if err != nil {
		return nil, jsErr(err, "stream "+stream)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.committers[key]; ok {
		return c, nil
	}
	cctx, cancel := context.WithCancel(s.ctx)
	c = &committer{nc: ta.acc.Conn(), js: ta.acc.JetStream(), sync: ta.acc.Sync, plain: ta.acc.GroupSync(),
		stream: stream, ch: make(chan *pubReq, 4096), cancel: cancel,
		stopped: make(chan struct{}), inbox: nats.NewInbox(), waiting: map[string]chan *nats.Msg{}}
	if ci := st.CachedInfo().Cluster; s.o.Engine.Clustered() && ci != nil {
		c.clustered, c.leader.name, c.leaderAt = true, ci.Leader, time.Now()
		if ci.LeaderSince != nil {
			c.leader.since = *ci.LeaderSince
		}
	}
	sub, err := c.nc.Subscribe(c.inbox+".*", c.answered)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("publish: %w", err)
	}
	_ = sub.SetPendingLimits(-1, -1) // bounded by the batches in flight
	c.sub = sub
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
	defer func() { _ = c.sub.Unsubscribe() }()
	defer func() {
		// Closed first: a request that enters the channel after this answers itself
		// (enqueue); one that entered before is answered here.
		c.closed.Store(true)
		for {
			select {
			case r := <-c.ch:
				r.finish(pubResult{err: ErrClosed})
			default:
				return
			}
		}
	}()
	maxN := s.cfg.MaxCommit
	// Up to fabric.commits_in_flight batches are being made durable at once: a JetStream
	// atomic batch has a fixed cost (the engine stages it in a store of its own), which
	// concurrent batches overlap. Batches are sent from this goroutine in the order their
	// requests arrived, so the engine stores them in that order. A batch that carries message
	// ids is committed before anything after it is sent: if an id is already stored, its
	// requests are committed again one by one, which must not let later batches pass them.
	//
	// With the engine's group sync (c.plain), a single-message request is not gathered: it
	// is sent at once as a plain publish, which the engine writes without an fsync of its
	// own, and answered when a group sync that began after the engine's acknowledgement has
	// ended. Many publishers then share one fsync without the batch's staging cost, a
	// duplicate id is answered as a duplicate for that message alone, and the order of
	// sending is the order of storing. Up to maxPlainInFlight such publishes wait at once.
	slots := make(chan struct{}, max(s.cfg.CommitsInFlight, 1))
	plainSlots := make(chan struct{}, maxPlainInFlight)
	var inflight sync.WaitGroup
	defer inflight.Wait()
	async := func(slots chan struct{}, batch []*pubReq, st started) {
		inflight.Add(1)
		go func() {
			defer inflight.Done()
			defer func() { <-slots }()
			s.commit(ctx, c, batch, st)
		}()
	}
	dispatch := func(batch []*pubReq) {
		st := s.startCommit(c, batch)
		if carriesIDs(batch) {
			s.commit(ctx, c, batch, st)
			<-slots
			return
		}
		async(slots, batch, st)
	}
	// backlog: so many requests wait already (asynchronous publishers with many in flight)
	// that one atomic batch costs the engine less than as many plain publishes; then single
	// messages without an id are gathered from what is queued, without waiting for more. A
	// message with an id stays a plain publish, so a duplicate is answered for itself and
	// never holds the queue up (a batch carrying ids is committed before the next is sent).
	backlog := func() bool { return c.plain && len(c.ch) >= plainBacklog }
	var joinSingles bool
	takes := func(r *pubReq) bool {
		return c.plain && len(r.msgs) == 1 && !r.asIs && (!joinSingles || r.msgs[0].Header.Get(jetstream.MsgIDHeader) != "")
	}
	var next *pubReq // taken from the channel, to be handled first
	for {
		first := next
		next = nil
		if first == nil {
			select {
			case first = <-c.ch:
			case <-ctx.Done():
				return
			}
		}
		if first.asIs {
			s.sendAsIs(ctx, c, first)
			continue
		}
		joinSingles = backlog()
		if takes(first) {
			select {
			case plainSlots <- struct{}{}:
			case <-ctx.Done():
				first.finish(pubResult{err: ErrClosed})
				return
			}
			async(plainSlots, []*pubReq{first}, s.startCommit(c, []*pubReq{first}))
			continue
		}
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			first.finish(pubResult{err: ErrClosed})
			return
		}
		batch := []*pubReq{first}
		n := len(first.msgs)
		var timer *time.Timer
		var deadline <-chan time.Time
		if s.cfg.CommitWindow > 0 && !c.plain {
			timer = time.NewTimer(s.cfg.CommitWindow)
			deadline = timer.C
		}
	gather:
		for n < maxN && !first.alone {
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
			if r.asIs || takes(r) {
				next = r // sent in its turn, right after the batch gathered before it
				break gather
			}
			if r.alone || n+len(r.msgs) > maxN {
				// Too big to join: the batch so far is committed, and it starts the next.
				st := s.startCommit(c, batch)
				s.commit(ctx, c, batch, st)
				batch, n = []*pubReq{r}, len(r.msgs)
				if r.alone {
					break gather
				}
				continue
			}
			batch = append(batch, r)
			n += len(r.msgs)
		}
		if timer != nil {
			timer.Stop()
		}
		dispatch(batch)
	}
}

// plainBacklog is how many waiting requests make a queue with group sync gather single
// messages into atomic batches (bench/README.md, "Group sync").
const plainBacklog = 128

// maxPlainInFlight bounds the plain publishes of one queue waiting for the engine and the
// group sync at once.
const maxPlainInFlight = 1024

// carriesIDs tells whether a batch holds a message with an id.
func carriesIDs(batch []*pubReq) bool {
	for _, r := range batch {
		for _, m := range r.msgs {
			if m.Header.Get(jetstream.MsgIDHeader) != "" {
				return true
			}
		}
	}
	return false
}

// sendAsIs sends a native client's message that carries engine instructions to the stream as
// it is, in its turn, and relays the engine's answer to the client (if it asked for one).
func (s *Service) sendAsIs(ctx context.Context, c *committer, r *pubReq) {
	m := r.msgs[0]
	if r.relay == nil {
		if err := c.nc.PublishMsg(m); err != nil {
			s.log.Warn("native publish not sent", "stream", c.stream, "error", err)
		}
		return
	}
	sd, err := c.sendRaw(m)
	if err != nil {
		r.finish(pubResult{err: err})
		return
	}
	go func() {
		wctx, cancel := context.WithTimeout(ctx, commitTimeout)
		defer cancel()
		select {
		case resp := <-sd.ch:
			if err := c.sync(wctx); err != nil {
				r.finish(pubResult{err: fmt.Errorf("%w: %v", ErrNotDurable, err)})
				return
			}
			r.relay(resp)
		case <-wctx.Done():
			sd.forget() // the client's own request times out
		}
	}()
}

// started is a batch sent to the engine, or why it could not be.
type started struct {
	sd   *sent
	err  error
	msgs []*nats.Msg
	at   time.Time
}

func (s *Service) startCommit(c *committer, batch []*pubReq) started {
	var msgs []*nats.Msg
	for _, r := range batch {
		msgs = append(msgs, r.msgs...)
	}
	s.m.commitSize.Observe(float64(len(msgs)))
	st := started{msgs: msgs, at: time.Now()}
	st.sd, st.err = c.send(msgs)
	return st
}

// commit makes one batch durable and answers each of its requests. Every request is stored
// whole or not at all: when the gathered batch fails for a reason that may belong to one of
// its requests (an id already stored, a full queue, a spent storage quota), each request is
// committed again on its own, as its own atomic batch, and answered for itself.
func (s *Service) commit(ctx context.Context, c *committer, batch []*pubReq, st started) {
	// ctx ends when the queue is deleted (then nothing of the batch matters) or the fabric
	// closes, which happens after the API has drained its requests.
	actx, cancel := context.WithTimeout(ctx, commitTimeout)
	defer cancel()
	first, dup, err := uint64(0), false, st.err
	if err == nil {
		first, dup, err = st.sd.wait(actx)
		if err == nil {
			if serr := c.sync(actx); serr != nil {
				err = fmt.Errorf("%w: %v", ErrNotDurable, serr)
			}
		}
	}
	s.m.commitLatency.Observe(time.Since(st.at).Seconds())
	if err == nil {
		seq := first
		for _, r := range batch {
			rec := make([]Receipt, len(r.msgs))
			for i := range rec {
				rec[i] = Receipt{Seq: seq}
				seq++
			}
			if dup {
				rec[0].Duplicate = true // a single message, already stored
			}
			r.finish(pubResult{receipts: rec})
		}
		return
	}
	if errors.Is(err, errBatchDuplicate) || (len(batch) > 1 && (errors.Is(err, ErrQueueFull) || errors.Is(err, ErrStorageQuota))) {
		for _, r := range batch {
			if r.answer != nil && !errors.Is(err, errBatchDuplicate) {
				// A native client's publish is not committed again: this batch was sent
				// while the commit loop went on sending, so a retry now could store it after
				// messages the client sent later. It is refused as the batch was; the queue
				// was full or the quota spent when it came.
				r.finish(pubResult{err: s.commitError(actx, c, err)})
				continue
			}
			rec, err := s.commitRequest(actx, c, r.msgs)
			r.finish(pubResult{receipts: rec, err: s.commitError(actx, c, err)})
		}
		return
	}
	err = s.commitError(actx, c, err)
	for _, r := range batch {
		r.finish(pubResult{err: err})
	}
}

// commitTimeout bounds the wait for the engine's answer to one atomic batch.
const commitTimeout = 30 * time.Second

// commitError names what a failed commit means for the publisher: a stream deleted under the
// batch (its staged messages then count as incomplete) is a queue that is gone.
func (s *Service) commitError(ctx context.Context, c *committer, err error) error {
	if err == nil || errors.Is(err, ErrNotFound) || errors.Is(err, ErrQueueFull) || errors.Is(err, ErrStorageQuota) ||
		errors.Is(err, ErrPayloadLimit) {
		return err
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if _, serr := c.js.Stream(sctx, c.stream); errors.Is(jsErr(serr, ""), ErrNotFound) {
		return fmt.Errorf("stream %s: %w", c.stream, ErrNotFound)
	}
	if ctx.Err() != nil {
		// Stopped mid-commit: the batch may or may not be stored.
		return ErrClosed
	}
	return err
}

// commitRequest stores one request's messages as one atomic batch, leaving out (and reporting
// as duplicates, with the stored sequence) those whose id is already stored or repeats an
// earlier message of the same request.
func (s *Service) commitRequest(ctx context.Context, c *committer, msgs []*nats.Msg) ([]Receipt, error) {
	rec := make([]Receipt, len(msgs))
	firstOf := map[string]int{}
	repeats := map[int]int{}
	var send []int
	for i, m := range msgs {
		if id := m.Header.Get(jetstream.MsgIDHeader); id != "" {
			if j, ok := firstOf[id]; ok {
				repeats[i] = j
				continue
			}
			firstOf[id] = i
		}
		send = append(send, i)
	}
	for attempt := 1; len(send) > 0; attempt++ {
		batch := make([]*nats.Msg, len(send))
		for k, i := range send {
			batch[k] = msgs[i]
		}
		first, dup, err := s.atomic(ctx, c, batch)
		if err == nil {
			for k, i := range send {
				rec[i] = Receipt{Seq: first + uint64(k), Duplicate: dup}
			}
			break
		}
		if !errors.Is(err, errBatchDuplicate) || attempt == maxDuplicateRounds {
			return nil, err
		}
		// Some id is stored already (perhaps by a publisher racing this one): ask the engine
		// which, without storing anything, and commit the rest.
		var rest []int
		for _, i := range send {
			seq, stored, err := s.storedAs(ctx, c, msgs[i])
			if err != nil {
				return nil, err
			}
			if stored {
				rec[i] = Receipt{Seq: seq, Duplicate: true}
			} else {
				rest = append(rest, i)
			}
		}
		send = rest
	}
	for i, j := range repeats {
		rec[i] = Receipt{Seq: rec[j].Seq, Duplicate: true}
	}
	return rec, nil
}

// maxDuplicateRounds bounds how often one request meets ids stored by racing publishers.
const maxDuplicateRounds = 4

// storedAs tells whether a message's id is stored within the stream's duplicate window, and
// at which sequence, without storing anything: the engine answers a known id as a duplicate
// before it checks the expected last id, which this probe never matches (nats-server's
// processJetStreamMsg: dedupe, then Nats-Expected-Last-Msg-Id).
func (s *Service) storedAs(ctx context.Context, c *committer, m *nats.Msg) (uint64, bool, error) {
	id := m.Header.Get(jetstream.MsgIDHeader)
	if id == "" {
		return 0, false, nil
	}
	probe := nats.NewMsg(m.Subject)
	probe.Header.Set(jetstream.MsgIDHeader, id)
	probe.Header.Set(jetstream.ExpectedLastMsgIDHeader, "penstock-probe-"+nuid.Next())
	ack, err := c.js.PublishMsg(ctx, probe)
	for try := 0; inProcess(err) && try < 50 && ctx.Err() == nil; try++ {
		// A replicated stream: a racing publish of the same id is not applied yet.
		time.Sleep(10 * time.Millisecond)
		ack, err = c.js.PublishMsg(ctx, probe)
	}
	if err == nil {
		if !ack.Duplicate {
			return 0, false, fmt.Errorf("publish: the engine stored a duplicate probe for id %q at %d", id, ack.Sequence)
		}
		return ack.Sequence, true, nil
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode == errCodeWrongLastMsgID {
		return 0, false, nil
	}
	return 0, false, jsErr(err, "publish")
}

// inProcess tells the engine's "duplicate message id is in process" (10158): on a replicated
// stream, a message with that id is being stored and its outcome is not known yet.
func inProcess(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == 10158
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

// atomic publishes msgs as one JetStream atomic batch and waits for it to be stored and
// durable: it returns the first sequence. A single message is an ordinary publish (whose
// duplicate answer is then reported).
func (s *Service) atomic(ctx context.Context, c *committer, msgs []*nats.Msg) (first uint64, dup bool, err error) {
	sd, err := c.send(msgs)
	if err != nil {
		return 0, false, err
	}
	if first, dup, err = sd.wait(ctx); err != nil {
		return 0, false, err
	}
	if err := c.sync(ctx); err != nil {
		return 0, false, fmt.Errorf("%w: %v", ErrNotDurable, err)
	}
	return first, dup, nil
}

// errCodeWrongLastMsgID is the engine's answer to a Nats-Expected-Last-Msg-Id that does not
// match (JSStreamWrongLastMsgIDErrF).
const errCodeWrongLastMsgID jetstream.ErrorCode = 10070

// batchHeaderRoom is what the atomic batch headers add to a message (Nats-Batch-Id,
// Nats-Batch-Sequence, Nats-Batch-Commit, with room to spare).
const batchHeaderRoom = 128

// wireSize is a message's payload as the engine counts it against max_payload: its headers
// as encoded, and its data.
func wireSize(m *nats.Msg) int {
	n := len(m.Data)
	if len(m.Header) > 0 {
		n += len("NATS/1.0\r\n\r\n")
		for k, vs := range m.Header {
			for _, v := range vs {
				n += len(k) + len(": \r\n") + len(v)
			}
		}
	}
	return n
}

// tooLargeForBatch tells whether m, with the batch headers added, would pass the engine's
// max_payload: it is then committed on its own, as a plain publish.
func tooLargeForBatch(nc *nats.Conn, m *nats.Msg) bool {
	return int64(wireSize(m)+batchHeaderRoom) > nc.MaxPayload()
}
