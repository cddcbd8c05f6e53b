package fabric

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/penstock/penstock/internal/engine"
)

// A queue's consumer (one per queue, named after its application) holds its deliveries: what
// is in flight, each message's delivery count. In the engine it costs four goroutines, an
// internal client and its own store: at 10,000 idle tenant-environments, a quarter of the
// node's memory. A single node holding its streams itself therefore keeps a queue's consumer
// only while it has a use:
//   - a queue is created without one, unless a native client of its tenant-environment may
//     be connected (they pull from it directly);
//   - a consume through the fabric (HTTPS, a pipeline) creates it, and a native login creates
//     those of every queue of the tenant-environment before it is answered;
//   - the idle close (idle.go) deletes it with the tenant-environment's connection, only when
//     it holds nothing: no message delivered and unacknowledged, none waiting for redelivery,
//     no delivered message left behind for the dead-letter sweep. Every message it has not
//     delivered stays in the queue's stream, and the next consumer delivers it.
//
// The queue's own settings for it (max deliveries, ack wait) are in its stream's metadata, so
// that any node makes it the same. What a new consumer does not know: the redelivered count
// (zero again) and the delivered and acknowledged positions, which start at the queue's first
// message.

const (
	metaMaxDeliveries = "penstock.max_deliveries"
	metaAckWait       = "penstock.ack_wait"
)

// lazyConsumers tells whether queue consumers come and go with use (see above): on a single
// embedded node that lets idle tenant-environments go. In a cluster a native client on
// another node may pull at any time.
func (s *Service) lazyConsumers() bool {
	return s.cfg.IdleClose > 0 && s.o.Engine.Embedded() && !s.o.Engine.Clustered()
}

// queueConsumerConfig is a queue's consumer with the queue's settings.
func queueConsumerConfig(r Ref, maxDeliveries int, ackWait time.Duration) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       r.consumer(),
		Description:   "the queue's consumers",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       ackWait,
		MaxDeliver:    maxDeliveries,
		MaxAckPending: -1,
		MaxWaiting:    4096,
		// Bounds on pull requests: native clients' requests cross a service import whose
		// reply mapping lapses two minutes after its last message.
		MaxRequestExpires: time.Minute,
		MaxRequestBatch:   1000,
		Metadata:          map[string]string{metaMaxDeliveries: strconv.Itoa(maxDeliveries)},
	}
}

// queueMetadata is a queue stream's metadata, with its consumer's settings.
func queueMetadata(maxDeliveries int, ackWait time.Duration) map[string]string {
	return map[string]string{
		"penstock.kind":   "queue",
		metaMaxDeliveries: strconv.Itoa(maxDeliveries),
		metaAckWait:       ackWait.String(),
	}
}

// consumerSettings reads a queue's consumer settings from its stream's metadata; ok is false
// for a queue made before they were kept there (its consumer has them).
func consumerSettings(cfg jetstream.StreamConfig) (maxDeliveries int, ackWait time.Duration, ok bool) {
	md, err1 := strconv.Atoi(cfg.Metadata[metaMaxDeliveries])
	aw, err2 := time.ParseDuration(cfg.Metadata[metaAckWait])
	if err1 != nil || err2 != nil || md < 1 || aw <= 0 {
		return 0, 0, false
	}
	return md, aw, true
}

// consumerSettingsOr is consumerSettings, or the configured defaults for a queue whose stream
// does not have them.
func (s *Service) consumerSettingsOr(cfg jetstream.StreamConfig) (maxDeliveries int, ackWait time.Duration) {
	if md, aw, ok := consumerSettings(cfg); ok {
		return md, aw
	}
	return s.cfg.MaxDeliveries, s.cfg.AckWait
}

// ensureConsumer returns a queue's consumer, creating it with the queue's settings when it is
// not there. ErrNotFound: no such queue.
func (s *Service) ensureConsumer(ctx context.Context, ta *tenantAccount, r Ref) (jetstream.Consumer, error) {
	js := ta.acc.JetStream()
	c, err := js.Consumer(ctx, r.queueStream(), r.consumer())
	if !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return c, jsErr(err, "queue "+r.Name)
	}
	st, err := js.Stream(ctx, r.queueStream())
	if err != nil {
		return nil, jsErr(err, "queue "+r.Name)
	}
	md, aw := s.consumerSettingsOr(st.CachedInfo().Config)
	// Created only: one made meanwhile (by another consume, a login) is taken as it is.
	c, err = js.CreateConsumer(ctx, r.queueStream(), queueConsumerConfig(r, md, aw))
	if errors.Is(err, jetstream.ErrConsumerExists) {
		c, err = js.Consumer(ctx, r.queueStream(), r.consumer())
	}
	return c, jsErr(err, "queue "+r.Name)
}

// ensureConsumers creates the consumers of every queue of the tenant-environment, once per
// take-up (or after the idle close deleted some): a native client is about to pull from them.
// Queues created after are made with theirs (CreateQueue reads nativeReady under consMu).
func (s *Service) ensureConsumers(ctx context.Context, ta *tenantAccount) error {
	ta.consMu.Lock()
	defer ta.consMu.Unlock()
	if ta.nativeReady.Load() {
		return nil
	}
	names := ta.acc.JetStream().StreamNames(ctx)
	var queues []Ref
	for n := range names.Name() {
		if kind, app, name, ok := parseStream(n); ok && kind == "Q" {
			queues = append(queues, Ref{Tenant: ta.tenant, Environment: ta.env, Application: app, Name: name})
		}
	}
	if err := names.Err(); err != nil {
		return jsErr(err, "list queues")
	}
	var first error
	for _, r := range queues {
		if _, err := s.ensureConsumer(ctx, ta, r); err != nil && !errors.Is(err, ErrNotFound) && first == nil {
			first = err
		}
	}
	if first != nil {
		return first // not ready: the idle loop tries again while a native client is connected
	}
	ta.nativeReady.Store(true)
	return nil
}

// readyNative makes the queue consumers of tenant-environments with a native client connected
// to this node whose login could not make them all (a busy engine, a login that waited for an
// idle close past its deadline). Run by the idle loop.
func (s *Service) readyNative() {
	s.mu.Lock()
	var due []*tenantAccount
	for _, ta := range s.accounts {
		if !ta.nativeReady.Load() && s.openConnsLocked(ta.tenant, ta.env) > 0 {
			due = append(due, ta)
		}
	}
	s.mu.Unlock()
	for _, ta := range due {
		ctx, cancel := context.WithTimeout(ta.ctx, 10*time.Second)
		if err := s.ensureConsumers(ctx, ta); err != nil {
			s.log.Warn("native client: queue consumers unavailable", "account", ta.acc.Name(), "error", err)
		}
		cancel()
	}
}

// dropConsumers deletes the queue consumers of a tenant-environment the idle close is about to
// let go, those that hold nothing: no delivery in flight or waiting for redelivery, no pull
// request waiting, no delivered message the dead-letter sweep has yet to move (a new consumer
// would deliver it again). One that holds something, or that fails to go, stays, as every
// consumer did before; that does not keep the tenant-environment. It runs under consMu and
// without s.mu: a native login waits for it and then makes them again, and every other use
// makes the one it needs (ensureConsumer); a consume under way (useMu) keeps them all. It
// returns how many went, or -1 when the tenant-environment is in use.
func (s *Service) dropConsumers(ctx context.Context, ta *tenantAccount, idle time.Duration) int {
	name := ta.acc.Name()
	ta.consMu.Lock()
	defer ta.consMu.Unlock()
	if !ta.useMu.TryLock() {
		return -1
	}
	defer ta.useMu.Unlock()
	// Used since the close chose it, or a native client may be connected: keep them.
	if time.Since(time.Unix(0, ta.used.Load())) < idle || s.openConns(ta.tenant, ta.env) > 0 {
		return -1
	}
	all, err := s.o.Engine.AccountStreams(name)
	if err != nil {
		return 0
	}
	var drops []Ref
	for _, st := range all[name] {
		kind, app, qname, ok := parseStream(st.Stream)
		if !ok || kind != "Q" {
			continue
		}
		for _, c := range st.Consumers {
			if c.Name == app && c.AckPending == 0 && c.Redelivered == 0 && c.Waiting == 0 && (st.Msgs == 0 || st.First > c.Delivered) {
				drops = append(drops, Ref{Tenant: ta.tenant, Environment: ta.env, Application: app, Name: qname})
			}
		}
	}
	if len(drops) == 0 {
		return 0
	}
	// From here a native login makes them again (it waits for consMu).
	ta.nativeReady.Store(false)
	defer ta.acc.Quiet() // this traffic is not use
	js := ta.acc.JetStream()
	dropped := 0
	for _, r := range drops {
		ta.forgetConsumer(r.queueStream())
		st, err := js.Stream(ctx, r.queueStream())
		if err != nil {
			continue // deleted meanwhile, or the engine did not answer: left as it is
		}
		cfg := st.CachedInfo().Config
		if _, _, ok := consumerSettings(cfg); !ok {
			// A queue made before its stream kept them: copied from the consumer first.
			c, err := st.Consumer(ctx, r.consumer())
			if err != nil {
				continue
			}
			cc := c.CachedInfo().Config
			md := maps.Clone(cfg.Metadata)
			if md == nil {
				md = map[string]string{}
			}
			maps.Copy(md, queueMetadata(cc.MaxDeliver, cc.AckWait))
			cfg.Metadata = md
			if _, err := js.UpdateStream(ctx, cfg); err != nil {
				s.log.Warn("idle close: keep a queue's settings (its consumer stays)", "account", name, "stream", r.queueStream(), "error", err)
				continue
			}
		}
		if err := js.DeleteConsumer(ctx, r.queueStream(), r.consumer()); err != nil {
			if !errors.Is(err, jetstream.ErrConsumerNotFound) {
				s.log.Warn("idle close: delete a queue's consumer (it stays)", "account", name, "stream", r.queueStream(), "error", err)
			}
			continue
		}
		dropped++
		s.m.consumersDropped.Inc()
	}
	return dropped
}

// makeMissingConsumers gives every queue without a consumer one, at the start of a single node
// whose consumers no longer come and go (fabric.idle_close set to 0 after running with it):
// from then on every queue has one, as an earlier Penstock expects. Read from the engine
// without connecting; only the tenant-environments missing one are taken up.
func (s *Service) makeMissingConsumers(ctx context.Context) {
	all, err := s.o.Engine.AccountStreams("")
	if err != nil {
		return // not a single embedded node
	}
	type te struct{ tenant, env string }
	known := map[string]te{}
	for _, t := range s.o.Identity.Tenants() {
		for _, env := range t.Environments {
			known[AccountName(t.Name, env)] = te{t.Name, env}
		}
	}
	for acct, streams := range all {
		k, ok := known[acct]
		if !ok {
			continue
		}
		tenant, env := k.tenant, k.env
		for _, st := range streams {
			kind, app, name, ok := parseStream(st.Stream)
			if !ok || kind != "Q" || slices.ContainsFunc(st.Consumers, func(c engine.ConsumerState) bool { return c.Name == app }) {
				continue
			}
			r := Ref{Tenant: tenant, Environment: env, Application: app, Name: name}
			ta, err := s.account(ctx, tenant, env)
			if err == nil {
				_, err = s.ensureConsumer(ctx, ta, r)
			}
			if err != nil {
				s.log.Warn("start: make a queue's consumer", "account", acct, "stream", st.Stream, "error", err)
			}
		}
	}
}
