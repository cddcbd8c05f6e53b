package fabric

import (
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/penstock/penstock/internal/engine"
)

// Native clients' queue publishes take the same group commit as HTTPS ones. A client's
// import maps its queue subjects ("<app>.q.<queue>") to "pub.<app>.q.<queue>" in its
// tenant-environment's account, where the fabric takes each message into the queue's
// committer and answers the client's reply subject with a JetStream publish acknowledgement
// once the atomic batch holding the message is durable. With sync "always" that is one fsync
// for many publishers' messages instead of one each.
//
// Messages that carry engine instructions (an atomic batch of the client's own, expected
// sequences, rollups, TTLs: any Nats- header but Nats-Msg-Id) go to the queue's stream as they
// are, answered by the engine itself.
const ingestPrefix = "pub."

// throughIngest makes a grant's queue imports ("<app>.q.*") land on the fabric's ingest
// subjects instead of the queues' own. The client's permissions, and so the grant's identity
// (grantKey), are the same either way.
func throughIngest(g engine.NativeGrant) engine.NativeGrant {
	imports := make([]engine.NativeImport, len(g.Imports))
	for i, im := range g.Imports {
		if strings.HasSuffix(im.Local, ".q.*") && im.Remote == im.Local {
			im.Remote = ingestPrefix + im.Local
		}
		imports[i] = im
	}
	g.Imports = imports
	return g
}

// startIngest takes the native queue publishes of a tenant-environment until its account is
// forgotten or the fabric closes.
func (s *Service) startIngest(ta *tenantAccount) error {
	if !s.groupNative {
		return nil
	}
	rl, err := newRelay(ta.acc.Conn())
	if err != nil {
		return err
	}
	ta.relay = rl
	sub, err := ta.acc.Conn().Subscribe(ingestPrefix+"*.q.*", func(m *nats.Msg) { s.ingest(ta, m) })
	if err != nil {
		_ = rl.sub.Unsubscribe()
		return err
	}
	// Held back by the committers when they are full; dropped past this (the publisher's
	// request then times out, and a retry with its message id is idempotent).
	_ = sub.SetPendingLimits(1<<16, 256<<20)
	ta.ingest = sub
	go func() {
		<-ta.ctx.Done()
		ta.stopIngest()
	}()
	return nil
}

// stopIngest stops taking native publishes for the account, at once: a tenant-environment
// taken up again (deleted and re-created, or restored) has a new subscription, and two would
// store each message twice.
func (ta *tenantAccount) stopIngest() {
	if ta.ingest != nil {
		_ = ta.ingest.Unsubscribe()
		_ = ta.relay.sub.Unsubscribe()
	}
}

func (s *Service) ingest(ta *tenantAccount, m *nats.Msg) {
	app, name, ok := strings.Cut(strings.TrimPrefix(m.Subject, ingestPrefix), ".q.")
	if !ok {
		return
	}
	r := Ref{Tenant: ta.tenant, Environment: ta.env, Application: app, Name: name}
	stream, conn := r.queueStream(), ta.acc.Conn()
	if m.Header == nil {
		m.Header = nats.Header{}
	}
	// The engine's note of where a service request came from: the client's internal account
	// name, not the client's data.
	m.Header.Del("Nats-Request-Info")
	if direct(m.Header) {
		ta.relay.forward(&nats.Msg{Subject: r.queueSubject(), Header: m.Header, Data: m.Data}, m.Reply, stream)
		return
	}
	c, err := s.committerFor(ta.ctx, ta, stream)
	if err != nil {
		answerNative(conn, m.Reply, stream, pubResult{err: err})
		return
	}
	reply := m.Reply
	req := &pubReq{msgs: []*nats.Msg{{Subject: r.queueSubject(), Header: m.Header, Data: m.Data}},
		answer: func(res pubResult) { answerNative(conn, reply, stream, res) }}
	select {
	case c.ch <- req:
	case <-c.stopped:
		answerNative(conn, reply, stream, pubResult{err: ErrClosed})
	case <-ta.ctx.Done():
	}
}

// direct tells whether a message carries instructions for the engine beyond its id: it is
// then not gathered into a batch of the fabric's.
func direct(h nats.Header) bool {
	for k := range h {
		if len(k) > 5 && strings.EqualFold(k[:5], "Nats-") && !strings.EqualFold(k, jetstream.MsgIDHeader) {
			return true
		}
	}
	return false
}

// nativeAck is the engine's publish acknowledgement, as a JetStream client reads it.
type nativeAck struct {
	Stream    string          `json:"stream,omitempty"`
	Seq       uint64          `json:"seq,omitempty"`
	Duplicate bool            `json:"duplicate,omitempty"`
	Error     *nativeAckError `json:"error,omitempty"`
}

type nativeAckError struct {
	Code        int    `json:"code"`
	ErrCode     uint16 `json:"err_code"`
	Description string `json:"description"`
}

// answerNative answers a native publish on its reply subject (none: nothing to answer).
func answerNative(conn *nats.Conn, reply, stream string, res pubResult) {
	if reply == "" {
		return
	}
	a := nativeAck{Stream: stream}
	if res.err == nil && len(res.receipts) == 1 {
		a.Seq, a.Duplicate = res.receipts[0].Seq, res.receipts[0].Duplicate
	} else {
		a.Error = ackError(res.err)
	}
	b, _ := json.Marshal(a)
	_ = conn.Publish(reply, b)
}

// ackError is the engine's error for what a commit met, with the engine's own code where it
// gave one.
func ackError(err error) *nativeAckError {
	var apiErr *jetstream.APIError
	switch {
	case errors.As(err, &apiErr):
		return &nativeAckError{Code: apiErr.Code, ErrCode: uint16(apiErr.ErrorCode), Description: apiErr.Description}
	case errors.Is(err, ErrNotFound):
		return &nativeAckError{Code: 404, ErrCode: 10059, Description: "stream not found"}
	case errors.Is(err, ErrQueueFull):
		return &nativeAckError{Code: 503, ErrCode: 10077, Description: "maximum messages or bytes exceeded"}
	case errors.Is(err, ErrStorageQuota):
		return &nativeAckError{Code: 503, ErrCode: 10047, Description: "insufficient storage resources available"}
	case errors.Is(err, ErrPayloadLimit):
		return &nativeAckError{Code: 400, ErrCode: 10054, Description: "maximum payload exceeded"}
	case errors.Is(err, ErrClosed):
		return &nativeAckError{Code: 503, ErrCode: 10008, Description: "publishing stopped: the queue was deleted or the server is stopping"}
	}
	return &nativeAckError{Code: 500, ErrCode: 10011, Description: "publish failed"}
}

// relay sends a native client's message to its stream as it is and hands the engine's answer
// to the client's reply subject: a reply subject of the engine's service imports cannot be
// given on to the engine by a client connection, so the relay asks with its own.
type relay struct {
	conn  *nats.Conn
	inbox string
	sub   *nats.Subscription
	mu    sync.Mutex
	next  uint64
	to    map[string]relayed // token -> where the answer goes
}

type relayed struct {
	reply, stream string
	at            time.Time
}

func newRelay(conn *nats.Conn) (*relay, error) {
	rl := &relay{conn: conn, inbox: nats.NewInbox(), to: map[string]relayed{}}
	sub, err := conn.Subscribe(rl.inbox+".*", rl.answered)
	if err != nil {
		return nil, err
	}
	_ = sub.SetPendingLimits(-1, -1) // bounded by the messages relayed
	rl.sub = sub
	return rl, nil
}

// relayAnswerWait is how long an unanswered relayed message is remembered.
const relayAnswerWait = 2 * time.Minute

// forward sends m (in the order forward is called) with a reply of the relay's own when the
// client gave one.
func (rl *relay) forward(m *nats.Msg, reply, stream string) {
	if reply != "" {
		rl.mu.Lock()
		rl.next++
		token := strconv.FormatUint(rl.next, 36)
		now := time.Now()
		if rl.next%1024 == 0 {
			for k, v := range rl.to {
				if now.Sub(v.at) > relayAnswerWait {
					delete(rl.to, k) // the engine answers only some messages of a batch
				}
			}
		}
		rl.to[token] = relayed{reply: reply, stream: stream, at: now}
		rl.mu.Unlock()
		m.Reply = rl.inbox + "." + token
	}
	if err := rl.conn.PublishMsg(m); err != nil {
		answerNative(rl.conn, reply, stream, pubResult{err: err})
	}
}

func (rl *relay) answered(m *nats.Msg) {
	token := m.Subject[len(rl.inbox)+1:]
	rl.mu.Lock()
	to, ok := rl.to[token]
	delete(rl.to, token)
	rl.mu.Unlock()
	if !ok {
		return
	}
	if m.Header.Get("Status") == "503" && len(m.Data) == 0 {
		answerNative(rl.conn, to.reply, to.stream, pubResult{err: ErrNotFound})
		return
	}
	_ = rl.conn.PublishMsg(&nats.Msg{Subject: to.reply, Header: m.Header, Data: m.Data})
}
