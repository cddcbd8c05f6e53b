package fabric

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/penstock/penstock/internal/authz"
)

// QueueSpec is a queue's settings. Zero values take the configured defaults.
type QueueSpec struct {
	MaxAge          time.Duration `json:"max_age" doc:"age after which an unconsumed message expires"`
	MaxMessages     int64         `json:"max_messages" doc:"most messages held (-1: no limit); publishes beyond are refused"`
	MaxBytes        int64         `json:"max_bytes" doc:"most bytes held (-1: no limit); publishes beyond are refused"`
	MaxDeliveries   int           `json:"max_deliveries" doc:"deliveries before a message goes to the dead-letter queue"`
	AckWait         time.Duration `json:"ack_wait" doc:"time a consumer has to acknowledge before redelivery"`
	DuplicateWindow time.Duration `json:"duplicate_window" doc:"window in which a repeated message id is stored once"`
}

// QueueStats is a queue's state now.
type QueueStats struct {
	Depth       uint64    `json:"depth" doc:"messages waiting or in flight"`
	Bytes       uint64    `json:"bytes"`
	InFlight    int       `json:"in_flight" doc:"delivered, not yet acknowledged"`
	Waiting     uint64    `json:"waiting" doc:"not yet delivered"`
	Redelivered int       `json:"redelivered" doc:"in flight after more than one delivery"`
	DeadLetters uint64    `json:"dead_letters"`
	Published   uint64    `json:"published" doc:"messages ever stored (the last sequence number)"`
	Delivered   uint64    `json:"delivered" doc:"deliveries made, redeliveries included"`
	Acked       uint64    `json:"acked" doc:"the acknowledgement floor: every message up to it is settled"`
	PublishRate float64   `json:"publish_rate" doc:"messages per second stored, since the previous stats call"`
	AckRate     float64   `json:"ack_rate" doc:"messages per second settled, since the previous stats call"`
	Oldest      time.Time `json:"oldest,omitzero"`
}

// Queue is a queue with its settings and state.
type Queue struct {
	Name  string     `json:"name"`
	Spec  QueueSpec  `json:"spec"`
	Stats QueueStats `json:"stats"`
}

func (s *Service) withDefaults(q QueueSpec) (QueueSpec, error) {
	if q.MaxAge == 0 {
		q.MaxAge = s.cfg.MaxAge
	}
	if q.MaxMessages == 0 {
		q.MaxMessages = -1
	}
	if q.MaxBytes == 0 {
		q.MaxBytes = -1
	}
	if q.MaxDeliveries == 0 {
		q.MaxDeliveries = s.cfg.MaxDeliveries
	}
	if q.AckWait == 0 {
		q.AckWait = s.cfg.AckWait
	}
	if q.DuplicateWindow == 0 {
		q.DuplicateWindow = s.cfg.DuplicateWindow
	}
	switch {
	case q.MaxAge < time.Second:
		return q, invalidf("spec.max_age: must be at least 1s")
	case q.MaxMessages < -1 || q.MaxBytes < -1:
		return q, invalidf("spec.max_messages and spec.max_bytes: -1 (no limit) or a positive number")
	case q.MaxDeliveries < 1 || q.MaxDeliveries > 1000:
		return q, invalidf("spec.max_deliveries: must be between 1 and 1000")
	case q.AckWait < time.Second || q.AckWait > 12*time.Hour:
		return q, invalidf("spec.ack_wait: must be between 1s and 12h")
	case q.DuplicateWindow < 0 || q.DuplicateWindow > q.MaxAge:
		return q, invalidf("spec.duplicate_window: must be between 0 and spec.max_age")
	}
	return q, nil
}

// CreateQueue creates a queue (its dead-letter queue comes with its first dead letter).
// Creating a queue that exists fails with ErrExists.
func (s *Service) CreateQueue(ctx context.Context, r Ref, spec QueueSpec) (Queue, error) {
	if err := r.check("queue"); err != nil {
		return Queue{}, err
	}
	done, err := s.creating(r)
	if err != nil {
		return Queue{}, err
	}
	defer done()
	spec, err = s.withDefaults(spec)
	if err != nil {
		return Queue{}, err
	}
	ta, err := s.account(ctx, r.Tenant, r.Environment)
	if err != nil {
		return Queue{}, err
	}
	js := ta.acc.JetStream()
	if _, err := js.Stream(ctx, r.queueStream()); err == nil {
		return Queue{}, fmt.Errorf("queue %s: %w", r.Name, ErrExists)
	}
	// The dead-letter queue is created with the queue's first dead letter (ensureDeadStream):
	// a stream costs the node memory and goroutines, and most queues never have one. But a
	// queue whose size reserves storage under a storage quota gets it now, reserving its size
	// too: the quota refuses the queue rather than its first dead letter. One left by a queue
	// of the same name takes the new queue's settings.
	dead := deadStreamConfig(r, jetstream.StreamConfig{MaxAge: spec.MaxAge, MaxBytes: spec.MaxBytes, Duplicates: spec.DuplicateWindow}, s.cfg.DeadLetterMaxAge)
	_, err = js.Stream(ctx, r.deadStream())
	left := err == nil
	made := false // by this call: deleted again if the queue cannot be
	if left || spec.MaxBytes > 0 && s.cfg.MaxStorage > 0 {
		if _, err := js.CreateOrUpdateStream(ctx, dead); err != nil {
			return Queue{}, jsErr(err, "create dead-letter queue")
		}
		made = !left
	}
	undo := func() {
		if made {
			_ = js.DeleteStream(ctx, r.deadStream())
		}
	}
	dup := spec.DuplicateWindow
	if dup == 0 {
		dup = time.Millisecond // JetStream's smallest window: ids are effectively not remembered
	}
	// With lazy consumers, the queue gets its consumer now only if a native client may pull
	// from it: consMu orders this with a native login making the consumers of every queue.
	lazy := s.lazyConsumers()
	if lazy {
		ta.consMu.Lock()
		defer ta.consMu.Unlock()
	}
	_, err = js.CreateStream(ctx, jetstream.StreamConfig{
		Name:               r.queueStream(),
		Description:        "queue " + r.Name,
		Subjects:           []string{r.queueSubject()},
		Retention:          jetstream.WorkQueuePolicy,
		Discard:            jetstream.DiscardNew,
		MaxAge:             spec.MaxAge,
		MaxMsgs:            spec.MaxMessages,
		MaxBytes:           spec.MaxBytes,
		Storage:            jetstream.FileStorage,
		Duplicates:         dup,
		AllowAtomicPublish: true,
		Metadata:           queueMetadata(spec.MaxDeliveries, spec.AckWait),
	})
	if err != nil {
		undo()
		return Queue{}, jsErr(err, "create queue")
	}
	if !lazy || ta.nativeReady.Load() || s.openConns(r.Tenant, r.Environment) > 0 {
		_, err = js.CreateOrUpdateConsumer(ctx, r.queueStream(), queueConsumerConfig(r, spec.MaxDeliveries, spec.AckWait))
		if err != nil {
			_ = js.DeleteStream(ctx, r.queueStream())
			undo()
			return Queue{}, jsErr(err, "create queue consumer")
		}
	}
	ta.forgetMissing(r.queueStream())
	return s.Queue(ctx, r)
}

// Queue returns a queue's settings and state.
func (s *Service) Queue(ctx context.Context, r Ref) (Queue, error) {
	if err := r.check("queue"); err != nil {
		return Queue{}, err
	}
	ta, err := s.account(ctx, r.Tenant, r.Environment)
	if err != nil {
		return Queue{}, err
	}
	js := ta.acc.JetStream()
	st, err := js.Stream(ctx, r.queueStream())
	if err != nil {
		return Queue{}, jsErr(err, "queue "+r.Name)
	}
	si := st.CachedInfo()
	var ci *jetstream.ConsumerInfo
	cons, err := st.Consumer(ctx, r.consumer())
	switch {
	case errors.Is(err, jetstream.ErrConsumerNotFound):
		// None yet, or deleted idle (queueconsumer.go): what the next one will start from.
		ci = &jetstream.ConsumerInfo{NumPending: si.State.Msgs}
		ci.Config.MaxDeliver, ci.Config.AckWait = s.consumerSettingsOr(si.Config)
		ci.Delivered.Stream = si.State.LastSeq
		if si.State.Msgs > 0 {
			ci.Delivered.Stream = si.State.FirstSeq - 1
		}
		ci.AckFloor.Stream = ci.Delivered.Stream
	case err != nil:
		return Queue{}, jsErr(err, "queue "+r.Name)
	default:
		ci = cons.CachedInfo()
	}
	q := Queue{Name: r.Name, Spec: QueueSpec{
		MaxAge: si.Config.MaxAge, MaxMessages: si.Config.MaxMsgs, MaxBytes: si.Config.MaxBytes,
		MaxDeliveries: ci.Config.MaxDeliver, AckWait: ci.Config.AckWait, DuplicateWindow: si.Config.Duplicates,
	}}
	q.Stats = QueueStats{
		Depth: si.State.Msgs, Bytes: si.State.Bytes, InFlight: ci.NumAckPending, Waiting: ci.NumPending,
		Redelivered: ci.NumRedelivered, Published: si.State.LastSeq, Delivered: ci.Delivered.Stream,
		Acked: ci.AckFloor.Stream, Oldest: si.State.FirstTime,
	}
	if q.Stats.Depth == 0 {
		q.Stats.Oldest = time.Time{}
	}
	if d, err := js.Stream(ctx, r.deadStream()); err == nil {
		q.Stats.DeadLetters = d.CachedInfo().State.Msgs
	}
	q.Stats.PublishRate, q.Stats.AckRate = s.m.rates(r, q.Stats.Published, q.Stats.Acked)
	return q, nil
}

// Queues lists an application's queues, by name.
func (s *Service) Queues(ctx context.Context, app Ref) ([]Queue, error) {
	if err := app.check(""); err != nil {
		return nil, err
	}
	ta, err := s.account(ctx, app.Tenant, app.Environment)
	if err != nil {
		return nil, err
	}
	var out []Queue
	for _, n := range streamsOf(ctx, ta, "Q", app.Application) {
		app.Name = n
		q, err := s.Queue(ctx, app)
		if errors.Is(err, ErrNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, q)
	}
	return out, nil
}

// streamsOf lists the names of an application's streams of one kind (Q, D or X), sorted.
func streamsOf(ctx context.Context, ta *tenantAccount, kind, app string) []string {
	var out []string
	l := ta.acc.JetStream().StreamNames(ctx)
	for n := range l.Name() {
		if k, a, name, ok := parseStream(n); ok && k == kind && (app == "" || a == app) {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// DeleteQueue deletes a queue, its dead letters and its bindings. Its messages are gone, and
// with them the stream's encryption key.
func (s *Service) DeleteQueue(ctx context.Context, r Ref) error {
	if err := r.check("queue"); err != nil {
		return err
	}
	ta, err := s.account(ctx, r.Tenant, r.Environment)
	if err != nil {
		return err
	}
	js := ta.acc.JetStream()
	if err := js.DeleteStream(ctx, r.queueStream()); err != nil {
		return jsErr(err, "queue "+r.Name)
	}
	s.dropCommitter(ta, r.queueStream())
	ta.forgetConsumer(r.queueStream()) // a queue made again under this name has a new one
	s.m.forget(r)
	if err := js.DeleteStream(ctx, r.deadStream()); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return jsErr(err, "dead-letter queue "+r.Name)
	}
	return s.unbindQueue(ctx, ta, r)
}

// creating admits the creation of a queue or exchange of r's application: the application
// exists and is not being deleted, and no deletion of queues runs until done is called. A
// creation that got past the API's checks just before a deletion began is either refused here
// or finished before the deletion lists what to delete.
func (s *Service) creating(r Ref) (done func(), err error) {
	s.life.RLock()
	if id := s.o.Identity; id != nil {
		sc := authz.Scope{Tenant: r.Tenant, Environment: r.Environment, Application: r.Application}
		if id.Deleting(sc) || !id.Exists(sc) {
			s.life.RUnlock()
			return nil, &Missing{Kind: "application"}
		}
	}
	return s.life.RUnlock, nil
}

// DeleteApplication deletes every queue and exchange of an application, and any exchange
// record whose stream is already gone.
func (s *Service) DeleteApplication(ctx context.Context, app Ref) error {
	s.life.Lock()
	defer s.life.Unlock()
	if !s.o.Engine.HasAccount(app.account()) {
		return nil
	}
	ta, err := s.account(ctx, app.Tenant, app.Environment)
	if err != nil {
		return err
	}
	for _, n := range streamsOf(ctx, ta, "X", app.Application) {
		app.Name = n
		if err := s.DeleteExchange(ctx, app); err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
	}
	kv, err := s.bindingsOf(ctx, ta, false)
	if err != nil {
		return err
	}
	if kv != nil { // else no exchange was ever created here: no records
		keys, err := kv.ListKeysFiltered(ctx, exchangeKey(app.Application, "*"))
		if err != nil && !errors.Is(err, jetstream.ErrNoKeysFound) {
			return fmt.Errorf("list exchange records: %w", err)
		}
		if err == nil {
			for k := range keys.Keys() {
				if err := kv.Delete(ctx, k); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
					return fmt.Errorf("delete exchange record: %w", err)
				}
			}
		}
	}
	for _, kind := range []string{"Q", "D"} {
		for _, n := range streamsOf(ctx, ta, kind, app.Application) {
			name := kind + "_" + app.Application + "_" + n
			if err := ta.acc.JetStream().DeleteStream(ctx, name); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
				return jsErr(err, "delete "+name)
			}
			s.dropCommitter(ta, name)
		}
	}
	return nil
}

// DeleteEnvironment deletes every queue, dead-letter queue, exchange and binding of a
// tenant-environment, as its tenant is deleted.
func (s *Service) DeleteEnvironment(ctx context.Context, tenant, env string) error {
	s.life.Lock()
	defer s.life.Unlock()
	name := AccountName(tenant, env)
	if !s.o.Engine.HasAccount(name) {
		return nil
	}
	ta, err := s.account(ctx, tenant, env)
	if err != nil {
		return err
	}
	ta.mu.Lock()
	for k, stop := range ta.routers {
		stop()
		delete(ta.routers, k)
	}
	ta.mu.Unlock()
	js := ta.acc.JetStream()
	var streams []string
	for n := range js.StreamNames(ctx).Name() {
		streams = append(streams, n)
	}
	for _, n := range streams {
		s.dropCommitter(ta, n)
		if err := js.DeleteStream(ctx, n); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			return jsErr(err, "delete "+n)
		}
	}
	s.mu.Lock()
	delete(s.accounts, name)
	s.mu.Unlock()
	ta.cancel()
	ta.stopIngest()
	return nil
}

// validHeader reports whether a client-supplied header name is allowed: a token that does not
// use the names the engine and Penstock reserve.
func validHeader(k string) error {
	if k == "" || len(k) > 128 {
		return invalidf("header name must be 1-128 characters")
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if c <= ' ' || c >= 0x7f || c == ':' {
			return invalidf("header %q: only printable ASCII without spaces or ':'", k)
		}
	}
	l := strings.ToLower(k)
	if strings.HasPrefix(l, "nats-") || strings.HasPrefix(l, "penstock-") {
		return invalidf("header %q: the Nats- and Penstock- prefixes are reserved", k)
	}
	return nil
}

// StorageUsed is what a tenant-environment stores in the engine, in bytes (what
// fabric.max_storage limits).
func (s *Service) StorageUsed(ctx context.Context, tenant, env string) (uint64, error) {
	ta, err := s.account(ctx, tenant, env)
	if err != nil {
		return 0, err
	}
	info, err := ta.acc.JetStream().AccountInfo(ctx)
	if err != nil {
		return 0, jsErr(err, "account")
	}
	return info.Store, nil
}
