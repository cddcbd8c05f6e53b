package fabric

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/penstock/penstock/internal/activity"
	"github.com/penstock/penstock/internal/engine"
	"github.com/penstock/penstock/internal/names"
)

// Native clients' queue publishes take the same group commit as HTTPS ones. A client's
// import maps its queue subjects ("<app>.q.<queue>") to "_pub.<app>.q.<queue>" in its
// tenant-environment's account, where the fabric takes each message into the queue's
// committer and answers the client's reply subject with a JetStream publish acknowledgement
// once the atomic batch holding the message is durable. With sync "always" that is one fsync
// for many publishers' messages instead of one each.
//
// Messages that carry engine instructions (an atomic batch of the client's own, expected
// sequences, rollups, TTLs: any Nats- header but Nats-Msg-Id) go to the queue's stream as they
// are, in their turn among the committer's batches, and the engine's answer is relayed.
//
// The prefix starts with "_", which no application name can: "pub." was also where the
// subjects of an application named pub begin, so the ingest took that application's exchange
// messages ("pub.x.q.k") for native publishes to queue k of application x.
const ingestPrefix = "_pub."

// throughIngest makes a grant's queue imports ("<app>.q.*") land on the fabric's ingest
// subjects instead of the queues' own. The client's permissions, and so the grant's identity
// (grantKey), are the same either way.
func throughIngest(g engine.NativeGrant) engine.NativeGrant {
	imports := make([]engine.NativeImport, len(g.Imports))
	for i, im := range g.Imports {
		if (strings.HasSuffix(im.Local, ".q.*") || strings.HasSuffix(im.Local, ".x.>")) && im.Remote == im.Local {
			im.Remote = ingestPrefix + im.Local
		}
		imports[i] = im
	}
	g.Imports = imports
	return g
}

// ingestGroup is the queue group of every node's ingest.
const ingestGroup = "penstock-ingest"

// startIngest takes the native queue publishes of a tenant-environment until its account is
// forgotten or the fabric closes.
func (s *Service) startIngest(ta *tenantAccount) error {
	if !s.groupNative {
		return nil
	}
	// A queue group: in a cluster every node takes native publishes, each publish once (the
	// engine hands a message to the group's member on the client's own node first).
	// One subscription for queues (app.q.name) and exchanges (app.x.name.key): each costs the
	// tenant-environment a goroutine, and a node holds thousands of them.
	sub, err := ta.acc.Conn().QueueSubscribe(ingestPrefix+"*.*.>", ingestGroup, func(m *nats.Msg) { s.ingest(ta, m) })
	if err != nil {
		return err
	}
	// A publish waits here only while its queue's committer is full and the client asked for
	// no answer (MQTT, core NATS); past this the connection drops messages (a request then
	// times out, and a retry with its message id is idempotent).
	_ = sub.SetPendingLimits(1<<16, 256<<20)
	ta.ingest = sub
	context.AfterFunc(ta.ctx, ta.stopIngest)
	return nil
}

// stopIngest stops taking native publishes for the account, at once: a tenant-environment
// taken up again (deleted and re-created, or restored) has a new subscription, and two would
// store each message twice.
func (ta *tenantAccount) stopIngest() {
	if ta.ingest != nil {
		_ = ta.ingest.Unsubscribe()
	}
}

func (s *Service) ingest(ta *tenantAccount, m *nats.Msg) {
	s.o.Activity.Touch(ta.tenant, ta.env, activity.Publish)
	conn := ta.acc.Conn()
	stream, subject, ok := ingestTarget(ta, strings.TrimPrefix(m.Subject, ingestPrefix))
	if !ok {
		// No queue or exchange can have this name: answered without asking the engine.
		answerNative(conn, m.Reply, "", pubResult{err: ErrNotFound})
		return
	}
	if ta.knownMissing(stream) || !s.hasCommitter(ta, stream) && !ta.lookups.Allow() {
		// A queue not published to yet costs the engine a lookup, made here where every
		// native publish of the tenant-environment passes: a client publishing to made-up
		// names gets "not found" without one once it has spent the lookups of a second.
		answerNative(conn, m.Reply, stream, pubResult{err: ErrNotFound})
		return
	}
	c, err := s.committerFor(ta.ctx, ta, stream)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			ta.rememberMissing(stream)
		}
		answerNative(conn, m.Reply, stream, pubResult{err: err})
		return
	}
	if m.Header == nil {
		m.Header = nats.Header{}
	}
	// The engine's note of where a service request came from: the client's internal account
	// name, not the client's data.
	m.Header.Del("Nats-Request-Info")
	msg := &nats.Msg{Subject: subject, Header: m.Header, Data: m.Data}
	reply := m.Reply
	req := &pubReq{msgs: []*nats.Msg{msg}, answer: func(res pubResult) { answerNative(conn, reply, stream, res) }}
	switch {
	case direct(m.Header):
		req.asIs = true
		if reply != "" {
			req.relay = func(resp *nats.Msg) { relayAnswer(conn, reply, stream, resp) }
		}
	case tooLargeForBatch(conn, msg):
		req.alone = true
	}
	if reply != "" {
		// Never held up by one busy queue: the other queues of the tenant-environment
		// share this subscription.
		select {
		case c.ch <- req:
			if c.closed.Load() {
				req.finish(pubResult{err: ErrClosed})
			}
		default:
			req.finish(pubResult{err: errBusy})
		}
		return
	}
	if !c.enqueue(ta.ctx, req) {
		req.finish(pubResult{err: ErrClosed})
	}
}

// ingestTarget reads an ingest subject: "<app>.q.<queue>" or "<app>.x.<exchange>[.<routing
// key>]", as the client published it. It returns the stream of the queue or exchange, and
// the subject the message is stored under.
func ingestTarget(ta *tenantAccount, subj string) (stream, subject string, ok bool) {
	app, rest, _ := strings.Cut(subj, ".")
	kind, tail, _ := strings.Cut(rest, ".")
	if !names.Valid(app, "-") {
		return "", "", false
	}
	switch kind {
	case "q":
		r := Ref{Tenant: ta.tenant, Environment: ta.env, Application: app, Name: tail}
		return r.queueStream(), r.queueSubject(), names.Valid(tail, "-")
	case "x":
		name, key, _ := strings.Cut(tail, ".")
		if !names.Valid(name, "-") {
			return "", "", false
		}
		t := Target{Ref: Ref{Tenant: ta.tenant, Environment: ta.env, Application: app, Name: name}, Exchange: true}
		return t.stream(), t.subject(Message{RoutingKey: key}), true
	}
	return "", "", false
}

// ingestLookups is how many queues not yet published to a tenant-environment's native
// publishes may look up in the engine per second (and at once).
const ingestLookups = 100

// errBusy answers a native publish whose queue has a full commit queue: the client retries.
var errBusy = errors.New("publishing is busy: retry")

// missingFor is how long a queue the engine said is not there is answered so without asking
// again (a client publishing to made-up names costs nothing more); creating the queue ends it.
const missingFor = time.Second

func (ta *tenantAccount) knownMissing(stream string) bool {
	ta.mu.RLock()
	defer ta.mu.RUnlock()
	until, ok := ta.missing[stream]
	return ok && time.Now().Before(until)
}

func (ta *tenantAccount) rememberMissing(stream string) {
	ta.mu.Lock()
	defer ta.mu.Unlock()
	if ta.missing == nil || len(ta.missing) >= 4096 {
		ta.missing = map[string]time.Time{}
	}
	ta.missing[stream] = time.Now().Add(missingFor)
}

// forgetMissing ends a queue's or exchange's "not there" answer once it is created.
func (ta *tenantAccount) forgetMissing(stream string) {
	ta.mu.Lock()
	delete(ta.missing, stream)
	ta.mu.Unlock()
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
	var a nativeAck
	if res.err == nil && len(res.receipts) == 1 {
		a = nativeAck{Stream: stream, Seq: res.receipts[0].Seq, Duplicate: res.receipts[0].Duplicate}
	} else {
		a.Error = ackError(res.err)
	}
	b, _ := json.Marshal(a)
	_ = conn.Publish(reply, b)
}

// relayAnswer hands the engine's answer to a message sent as it is to the client; "no
// responders" (the stream is gone) becomes the engine's "stream not found".
func relayAnswer(conn *nats.Conn, reply, stream string, resp *nats.Msg) {
	if resp.Header.Get("Status") == "503" && len(resp.Data) == 0 {
		answerNative(conn, reply, stream, pubResult{err: ErrNotFound})
		return
	}
	_ = conn.PublishMsg(&nats.Msg{Subject: reply, Header: resp.Header, Data: resp.Data})
}

// ackError is the engine's error for what a commit met: the engine's own code and words for
// what the client can change (4xx), its code and no more for the server's own failures.
func ackError(err error) *nativeAckError {
	var apiErr *jetstream.APIError
	switch {
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
	case errors.Is(err, ErrInDoubt):
		return &nativeAckError{Code: 503, ErrCode: 10008, Description: "the queue's leader changed while the publish was in flight: it may be stored; retry with the same message id"}
	case errors.Is(err, ErrNotDurable):
		return &nativeAckError{Code: 503, ErrCode: 10008, Description: "not confirmed on disk: the server must be restarted on a sound disk; retry with the same message id then"}
	case errors.Is(err, errBusy):
		return &nativeAckError{Code: 503, ErrCode: 10008, Description: errBusy.Error()}
	case errors.As(err, &apiErr) && apiErr.Code >= 400 && apiErr.Code < 500:
		return &nativeAckError{Code: apiErr.Code, ErrCode: uint16(apiErr.ErrorCode), Description: apiErr.Description}
	case errors.As(err, &apiErr):
		return &nativeAckError{Code: apiErr.Code, ErrCode: uint16(apiErr.ErrorCode), Description: "publish failed"}
	}
	return &nativeAckError{Code: 500, ErrCode: 10011, Description: "publish failed"}
}
