package fabric

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/penstock/penstock/internal/authz"
	"github.com/penstock/penstock/internal/config"
)

// held tells whether the fabric holds the tenant-environment (and its engine connection).
func (h *harness) held(tenant string) bool {
	h.fab.mu.Lock()
	defer h.fab.mu.Unlock()
	_, ok := h.fab.accounts[AccountName(tenant, "production")]
	return ok
}

// openCalledClose opens a fabric without the background idle close, whose period is then set
// for the test to call closeIdleOnce.
func openCalledClose(t *testing.T) *harness {
	h := open(t, func(f *config.Fabric) { f.IdleClose = 0 })
	h.fab.cfg.IdleClose = 200 * time.Millisecond
	return h
}

// idleNow waits until the tenant-environment has gone unused for the idle close's period, as
// the close sees it.
func (h *harness) idleNow(tenant string) {
	h.t.Helper()
	h.fab.mu.Lock()
	ta := h.fab.accounts[AccountName(tenant, "production")]
	h.fab.mu.Unlock()
	if ta == nil {
		h.t.Fatalf("%s is not held", tenant)
	}
	waitFor(h.t, tenant+" idle", func() bool {
		return time.Since(time.Unix(0, ta.used.Load())) > h.fab.cfg.IdleClose && ta.acc.IdleFor() > h.fab.cfg.IdleClose
	})
}

// An idle tenant-environment is let go (its engine connection closed) and taken up again by
// its next use, with nothing lost either way; one in use is kept.
func TestIdleCloseLetsGoAndTakesUpAgain(t *testing.T) {
	h := openCalledClose(t)
	q := h.queue("acme", "jobs", QueueSpec{})
	g := h.queue("globex", "jobs", QueueSpec{})
	publish(t, h.fab, q, text(1), text(2))
	publish(t, h.fab, g, text(1))
	opened := h.stack.Engine.OpenAccounts()

	h.idleNow("acme")
	publish(t, h.fab, g, text(2)) // globex is in use
	if n := h.fab.closeIdleOnce(); n != 1 {
		t.Fatalf("closed %d tenant-environments, want acme alone", n)
	}
	if h.held("acme") || !h.held("globex") {
		t.Fatalf("held after the close: acme %v, globex %v", h.held("acme"), h.held("globex"))
	}
	if got := h.stack.Engine.OpenAccounts(); got != opened-1 {
		t.Fatalf("engine connections %d, want %d", got, opened-1)
	}

	// Taken up again by the next use: what was stored is there, and new publishes land.
	publish(t, h.fab, q, text(3))
	ds, err := h.fab.Consume(ctx, q, 10, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 3 {
		t.Fatalf("consumed %d messages after the take-up, want 3", len(ds))
	}
	for i, d := range ds {
		if string(d.Data) != string(text(i+1).Data) {
			t.Fatalf("message %d: %q", i, d.Data)
		}
	}
	// A delivery waiting for its acknowledgement keeps the tenant-environment: the engine's
	// "max deliveries" advisory may come with nobody asking.
	h.idleNow("acme")
	publish(t, h.fab, g, text(3))
	if n := h.fab.closeIdleOnce(); n != 0 || !h.held("acme") {
		t.Fatalf("closed %d with deliveries unacknowledged", n)
	}
	tokens := make([]string, len(ds))
	for i, d := range ds {
		tokens[i] = d.AckToken
	}
	if err := h.fab.Settle(ctx, q, tokens, Ack, 0); err != nil {
		t.Fatal(err)
	}
	h.idleNow("acme")
	publish(t, h.fab, g, text(4))
	if n := h.fab.closeIdleOnce(); n != 1 {
		t.Fatalf("closed %d once acknowledged, want 1", n)
	}
	if st, err := h.fab.Queue(ctx, q); err != nil || st.Stats.Depth != 0 {
		t.Fatalf("queue after the second take-up: %+v, %v", st.Stats, err)
	}
	if n := testutil.ToFloat64(h.fab.m.idleClosed); n != 2 {
		t.Fatalf("idle-closed metric %v, want 2", n)
	}

	// A connection opened without the fabric (as a backup does) is closed once idle too.
	h.idleNow("acme")
	publish(t, h.fab, g, text(5))
	if n := h.fab.closeIdleOnce(); n != 1 || h.held("acme") {
		t.Fatalf("closed %d, want acme", n)
	}
	before := h.stack.Engine.OpenAccounts()
	acc, err := h.stack.Engine.Account(ctx, AccountName("acme", "production"))
	if err != nil {
		t.Fatal(err)
	}
	if got := h.stack.Engine.OpenAccounts(); got != before+1 {
		t.Fatalf("engine connections %d after a direct open, want %d", got, before+1)
	}
	waitFor(t, "the direct connection to be idle", func() bool { return acc.IdleFor() > h.fab.cfg.IdleClose })
	publish(t, h.fab, g, text(6))
	if n := h.fab.closeIdleOnce(); n != 1 || h.stack.Engine.OpenAccounts() != before {
		t.Fatalf("closed %d, engine connections %d, want 1 and %d", n, h.stack.Engine.OpenAccounts(), before)
	}
}

// A native client connected to the node keeps its tenant-environment, whose ingest takes its
// publishes; a login after the close takes it up again, ingest included.
func TestIdleCloseAndNativeClients(t *testing.T) {
	h := openCalledClose(t)
	q := h.queue("acme", "jobs", QueueSpec{})
	key, id := h.key("acme", authz.Developer)
	send := func(c *natsClient, data string) {
		t.Helper()
		js, _ := jetstream.NewWithAPIPrefix(c.nc, APIPrefix)
		if _, err := js.Publish(ctx, q.queueSubject(), []byte(data)); err != nil {
			t.Fatalf("native publish %q: %v (%s)", data, err, c.errors())
		}
	}
	c, err := h.dialNATS("acme/production", key, id, false)
	if err != nil {
		t.Fatal(err)
	}
	send(c, "one")
	h.idleNow("acme")
	if n := h.fab.closeIdleOnce(); n != 0 || !h.held("acme") {
		t.Fatalf("closed %d with a native client connected", n)
	}
	send(c, "two")
	c.nc.Close()
	waitFor(t, "the native connection to be forgotten", func() bool { return h.fab.openConns("acme", "production") == 0 })
	h.idleNow("acme")
	if n := h.fab.closeIdleOnce(); n != 1 || h.held("acme") {
		t.Fatalf("closed %d after the client left", n)
	}
	c, err = h.dialNATS("acme/production", key, id, false)
	if err != nil {
		t.Fatal(err)
	}
	if !h.held("acme") {
		t.Fatal("a native login did not take the tenant-environment up")
	}
	send(c, "three")
	if st, err := h.fab.Queue(ctx, q); err != nil || st.Stats.Depth != 3 {
		t.Fatalf("queue: %+v, %v; want 3 messages", st.Stats, err)
	}
}

// With the close running in the background, a delivery nobody acknowledges is moved to the
// dead-letter queue by the engine's advisory when its deliveries run out: the listener stayed.
// The tenant-environment is let go only after that.
func TestIdleCloseWaitsForDeadLetters(t *testing.T) {
	h := open(t, func(f *config.Fabric) { f.IdleClose = 100 * time.Millisecond })
	q := h.queue("acme", "jobs", QueueSpec{MaxDeliveries: 1, AckWait: 2 * time.Second})
	publish(t, h.fab, q, text(1))
	if ds, err := h.fab.Consume(ctx, q, 1, time.Second); err != nil || len(ds) != 1 {
		t.Fatalf("consume: %d, %v", len(ds), err)
	}
	waitFor(t, "the advisory to move the message to the dead-letter queue", func() bool {
		if n := testutil.ToFloat64(h.fab.m.idleClosed); n != 0 {
			t.Fatalf("let go with a delivery waiting for its acknowledgement (%v closes)", n)
		}
		return testutil.ToFloat64(h.fab.m.deadLettered.WithLabelValues("max_deliveries")) >= 1
	})
	waitFor(t, "the close once the message is dead-lettered", func() bool { return testutil.ToFloat64(h.fab.m.idleClosed) == 1 })
	dl, _, err := h.fab.DeadLetters(ctx, q, 0, 10)
	if err != nil || len(dl) != 1 || string(dl[0].Data) != string(text(1).Data) {
		t.Fatalf("dead letters: %+v, %v", dl, err)
	}
}

// A queue's dead-letter queue is made with its first dead letter: until then the dead-letter
// operations answer for an empty one, and a queue that does not exist is still "not found".
func TestDeadLetterQueueComesWithTheFirstDeadLetter(t *testing.T) {
	h := open(t, nil)
	q := h.queue("acme", "jobs", QueueSpec{MaxAge: time.Hour, DuplicateWindow: time.Minute})
	ta, err := h.fab.account(ctx, "acme", "production")
	if err != nil {
		t.Fatal(err)
	}
	js := ta.acc.JetStream()
	if _, err := js.Stream(ctx, q.deadStream()); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Fatalf("dead-letter stream before any dead letter: %v", err)
	}
	if dl, next, err := h.fab.DeadLetters(ctx, q, 0, 10); err != nil || len(dl) != 0 || next != 0 {
		t.Fatalf("dead letters of a queue without any: %v, %d, %v", dl, next, err)
	}
	if _, err := h.fab.DeadLetter(ctx, q, 1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("one dead letter of a queue without any: %v", err)
	}
	if n, err := h.fab.Replay(ctx, q, nil); err != nil || n != 0 {
		t.Fatalf("replay: %d, %v", n, err)
	}
	if n, err := h.fab.PurgeDeadLetters(ctx, q); err != nil || n != 0 {
		t.Fatalf("purge: %d, %v", n, err)
	}
	nope := q
	nope.Name = "nope"
	if _, _, err := h.fab.DeadLetters(ctx, nope, 0, 10); !errors.Is(err, ErrNotFound) {
		t.Fatalf("dead letters of a queue that does not exist: %v", err)
	}

	rejectOne(t, h, q)
	st, err := js.Stream(ctx, q.deadStream())
	if err != nil {
		t.Fatalf("dead-letter stream after a reject: %v", err)
	}
	if c := st.CachedInfo().Config; c.MaxAge != time.Hour || c.Duplicates != time.Minute || c.Retention != jetstream.LimitsPolicy {
		t.Fatalf("dead-letter stream config: max age %s, duplicates %s, retention %v", c.MaxAge, c.Duplicates, c.Retention)
	}
	dl, _, err := h.fab.DeadLetters(ctx, q, 0, 10)
	if err != nil || len(dl) != 1 || dl[0].Reason != "rejected" || string(dl[0].Data) != string(text(1).Data) {
		t.Fatalf("dead letters: %+v, %v", dl, err)
	}
	if qs, err := h.fab.Queue(ctx, q); err != nil || qs.Stats.DeadLetters != 1 || qs.Stats.Depth != 0 {
		t.Fatalf("queue stats: %+v, %v", qs.Stats, err)
	}
	if err := h.fab.DeleteQueue(ctx, q); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Stream(ctx, q.deadStream()); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Fatalf("dead-letter stream after the queue's deletion: %v", err)
	}
}

// A single node starting takes up at once only the tenant-environments that need it: an
// exchange's (its router), and one whose queue holds a message a missed advisory left behind
// (swept with nobody asking). The rest wait for their next use.
func TestStartTakesUpOnlyWhatNeedsIt(t *testing.T) {
	h := open(t, nil)
	if _, err := h.id.CreateTenant(ctx, "initech"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.id.CreateApp(ctx, "initech", "production", "orders"); err != nil {
		t.Fatal(err)
	}
	// More than one delivery: the engine keeps such a message's redelivery count after it
	// gives the message up, which once hid it from the sweep.
	stuck := h.queue("acme", "jobs", QueueSpec{AckWait: time.Second, MaxDeliveries: 2})
	plain := h.queue("globex", "jobs", QueueSpec{})
	publish(t, h.fab, stuck, text(1))
	publish(t, h.fab, plain, text(1))
	h.withConsumer(stuck)
	if _, err := h.fab.CreateExchange(ctx, Ref{Tenant: "initech", Environment: "production", Application: "orders", Name: "events"}, Fanout); err != nil {
		t.Fatal(err)
	}
	h.fab.Close() // nobody hears the advisory now

	acc, err := h.stack.Engine.Account(ctx, stuck.account())
	if err != nil {
		t.Fatal(err)
	}
	cons, err := acc.JetStream().Consumer(ctx, stuck.queueStream(), stuck.consumer())
	if err != nil {
		t.Fatal(err)
	}
	// Delivered until the engine gives it up (its advisory unheard): nothing pending then.
	waitFor(t, "the engine to give the message up", func() bool {
		b, err := cons.Fetch(1, jetstream.FetchMaxWait(200*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		for range b.Messages() {
		}
		ci, err := cons.Info(ctx)
		return err == nil && ci.NumAckPending == 0 && ci.NumRedelivered > 0
	})
	h.stack.Engine.CloseAccount(stuck.account())

	f, err := Open(ctx, Options{Engine: h.stack.Engine, Identity: h.id, Config: config.Default().Fabric, Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.mu.Lock()
	_, acme := f.accounts[AccountName("acme", "production")]
	_, globex := f.accounts[AccountName("globex", "production")]
	_, initech := f.accounts[AccountName("initech", "production")]
	f.mu.Unlock()
	if !acme || globex || !initech {
		t.Fatalf("taken up at start: acme (a message to sweep) %v, globex (nothing) %v, initech (an exchange) %v", acme, globex, initech)
	}
	waitFor(t, "the sweep to dead-letter the message with nobody asking", func() bool {
		return testutil.ToFloat64(f.m.deadLettered.WithLabelValues("max_deliveries")) == 1
	})
	// globex is taken up by its next use, with its message.
	if st, err := f.Queue(ctx, plain); err != nil || st.Stats.Depth != 1 {
		t.Fatalf("globex's queue: %+v, %v", st.Stats, err)
	}
}

// A connection held by a user that puts nothing on it for a while (a restore reading a large
// part from its bucket) is not closed as idle until released.
func TestIdleCloseSparesHeldAccounts(t *testing.T) {
	h := openCalledClose(t)
	q := h.queue("acme", "jobs", QueueSpec{})
	publish(t, h.fab, q, text(1))
	h.fab.ForgetAccount("acme", "production") // as a restore does
	acc, release, err := h.stack.Engine.HeldAccount(ctx, AccountName("acme", "production"))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the held connection to be idle", func() bool { return acc.IdleFor() > h.fab.cfg.IdleClose })
	if n := h.fab.closeIdleOnce(); n != 0 {
		t.Fatalf("closed %d held connections", n)
	}
	if _, err := acc.JetStream().Stream(ctx, q.queueStream()); err != nil {
		t.Fatalf("the held connection after the idle close: %v", err)
	}
	release()
	waitFor(t, "the released connection to be idle", func() bool { return acc.IdleFor() > h.fab.cfg.IdleClose })
	if n := h.fab.closeIdleOnce(); n != 1 {
		t.Fatalf("closed %d once released, want 1", n)
	}
}

// Under a storage quota, a queue whose size reserves storage gets its dead-letter queue (which
// reserves as much) with it: the quota refuses the queue, not its first dead letter.
func TestDeadLetterQueueReservedUnderStorageQuota(t *testing.T) {
	h := open(t, func(f *config.Fabric) { f.MaxStorage = 1 << 20 })
	r := Ref{Tenant: "acme", Environment: "production", Application: "orders", Name: "big"}
	if _, err := h.fab.CreateQueue(ctx, r, QueueSpec{MaxBytes: 600 << 10}); !errors.Is(err, ErrStorageQuota) {
		t.Fatalf("a queue and dead-letter queue of 600 KiB each under a 1 MiB quota: %v", err)
	}
	r.Name = "small"
	if _, err := h.fab.CreateQueue(ctx, r, QueueSpec{MaxBytes: 400 << 10, MaxDeliveries: 1}); err != nil {
		t.Fatal(err)
	}
	publish(t, h.fab, r, text(1))
	ds, err := h.fab.Consume(ctx, r, 1, time.Second)
	if err != nil || len(ds) != 1 {
		t.Fatalf("consume: %d, %v", len(ds), err)
	}
	if err := h.fab.Settle(ctx, r, []string{ds[0].AckToken}, Reject, 0); err != nil {
		t.Fatalf("the first dead letter under the quota: %v", err)
	}
	if dl, _, err := h.fab.DeadLetters(ctx, r, 0, 10); err != nil || len(dl) != 1 {
		t.Fatalf("dead letters: %d, %v", len(dl), err)
	}
}

// A dead-letter stream left by a queue of the same name (a deletion interrupted between its
// two steps) takes the new queue's settings.
func TestLeftoverDeadLetterQueueTakesTheNewSettings(t *testing.T) {
	h := open(t, nil)
	r := h.queue("acme", "jobs", QueueSpec{MaxAge: time.Hour, MaxDeliveries: 1})
	publish(t, h.fab, r, text(1))
	ds, err := h.fab.Consume(ctx, r, 1, time.Second)
	if err != nil || len(ds) != 1 {
		t.Fatalf("consume: %d, %v", len(ds), err)
	}
	if err := h.fab.Settle(ctx, r, []string{ds[0].AckToken}, Reject, 0); err != nil {
		t.Fatal(err)
	}
	ta, err := h.fab.account(ctx, "acme", "production")
	if err != nil {
		t.Fatal(err)
	}
	js := ta.acc.JetStream()
	if err := js.DeleteStream(ctx, r.queueStream()); err != nil { // DeleteQueue's first step only
		t.Fatal(err)
	}
	ta.forgetConsumer(r.queueStream())
	h.fab.dropCommitter(ta, r.queueStream())
	if _, err := h.fab.CreateQueue(ctx, r, QueueSpec{MaxAge: 48 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, r.deadStream())
	if err != nil {
		t.Fatal(err)
	}
	if c := st.CachedInfo().Config; c.MaxAge != 48*time.Hour {
		t.Fatalf("the new queue's dead-letter queue keeps the old max age %s", c.MaxAge)
	}
}

// A queue's first dead letter while its environment is being deleted does not leave a
// dead-letter stream behind it.
func TestDeleteEnvironmentLeavesNoLateDeadLetterQueue(t *testing.T) {
	h := open(t, nil)
	for i := range 300 {
		h.queue("acme", fmt.Sprintf("a%03d", i), QueueSpec{})
	}
	r := h.queue("acme", "zz", QueueSpec{})
	publish(t, h.fab, r, text(1))
	ds, err := h.fab.Consume(ctx, r, 1, time.Second)
	if err != nil || len(ds) != 1 {
		t.Fatalf("consume: %d, %v", len(ds), err)
	}
	ta, err := h.fab.account(ctx, "acme", "production")
	if err != nil {
		t.Fatal(err)
	}
	js := ta.acc.JetStream()
	count := func() int {
		n := 0
		for range js.StreamNames(ctx).Name() {
			n++
		}
		return n
	}
	before := count()
	done := make(chan error, 1)
	go func() { done <- h.fab.DeleteEnvironment(ctx, "acme", "production") }()
	waitFor(t, "the deletion to be under way", func() bool { return count() < before-20 })
	// The reject waits for the deletion, then finds no queue: whether it fails or not, no
	// stream may be left.
	_ = h.fab.Settle(ctx, r, []string{ds[0].AckToken}, Reject, 0)
	if err := <-done; err != nil {
		t.Fatalf("delete environment: %v", err)
	}
	acc, err := h.stack.Engine.Account(ctx, AccountName("acme", "production"))
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for n := range acc.JetStream().StreamNames(ctx).Name() {
		left = append(left, n)
	}
	if len(left) > 0 {
		t.Fatalf("streams left after DeleteEnvironment: %v", left)
	}
}

// queueConsumers names the consumers the engine holds for a queue.
func (h *harness) queueConsumers(r Ref) []string {
	h.t.Helper()
	all, err := h.stack.Engine.AccountStreams(r.account())
	if err != nil {
		h.t.Fatal(err)
	}
	var out []string
	for _, st := range all[r.account()] {
		if st.Stream == r.queueStream() {
			for _, c := range st.Consumers {
				out = append(out, c.Name)
			}
		}
	}
	return out
}

// consumerConfig reads a queue's consumer settings from the engine.
func (h *harness) consumerConfig(r Ref) jetstream.ConsumerConfig {
	h.t.Helper()
	acc, err := h.stack.Engine.Account(ctx, r.account())
	if err != nil {
		h.t.Fatal(err)
	}
	c, err := acc.JetStream().Consumer(ctx, r.queueStream(), r.consumer())
	if err != nil {
		h.t.Fatal(err)
	}
	return c.CachedInfo().Config
}

// On a single node that lets idle tenant-environments go, a queue's consumer exists while it
// is used: made by the first consume, deleted with the idle tenant-environment once it holds
// no delivery, made again with the queue's settings by the next consume, which delivers what
// was left. Nothing is lost or delivered twice on the way.
func TestQueueConsumerComesAndGoesWithUse(t *testing.T) {
	h := openCalledClose(t)
	q := h.queue("acme", "jobs", QueueSpec{MaxDeliveries: 7, AckWait: 45 * time.Second})
	other := h.queue("globex", "jobs", QueueSpec{})
	if c := h.queueConsumers(q); len(c) != 0 {
		t.Fatalf("a new queue has consumers %v", c)
	}
	publish(t, h.fab, q, text(1), text(2), text(3))
	st, err := h.fab.Queue(ctx, q)
	if err != nil {
		t.Fatal(err)
	}
	if st.Spec.MaxDeliveries != 7 || st.Spec.AckWait != 45*time.Second || st.Stats.Waiting != 3 || st.Stats.Depth != 3 || st.Stats.InFlight != 0 {
		t.Fatalf("queue without a consumer: %+v", st)
	}
	if c := h.queueConsumers(q); len(c) != 0 {
		t.Fatalf("reading a queue made consumers %v", c)
	}

	ds, err := h.fab.Consume(ctx, q, 2, time.Second)
	if err != nil || len(ds) != 2 {
		t.Fatalf("first consume: %d, %v", len(ds), err)
	}
	if cc := h.consumerConfig(q); cc.MaxDeliver != 7 || cc.AckWait != 45*time.Second {
		t.Fatalf("consumer made with max deliveries %d, ack wait %s", cc.MaxDeliver, cc.AckWait)
	}
	if err := h.fab.Settle(ctx, q, []string{ds[0].AckToken}, Ack, 0); err != nil {
		t.Fatal(err)
	}
	// A delivery in flight: neither the consumer nor the tenant-environment goes.
	h.idleNow("acme")
	publish(t, h.fab, other, text(1))
	if n := h.fab.closeIdleOnce(); n != 0 || len(h.queueConsumers(q)) != 1 {
		t.Fatalf("closed %d, consumers %v, with a delivery in flight", n, h.queueConsumers(q))
	}
	if err := h.fab.Settle(ctx, q, []string{ds[1].AckToken}, Ack, 0); err != nil {
		t.Fatal(err)
	}
	h.idleNow("acme")
	publish(t, h.fab, other, text(2))
	if n := h.fab.closeIdleOnce(); n != 1 || h.held("acme") {
		t.Fatalf("closed %d once settled", n)
	}
	if c := h.queueConsumers(q); len(c) != 0 {
		t.Fatalf("consumers %v left with the idle tenant-environment", c)
	}
	if n := testutil.ToFloat64(h.fab.m.consumersDropped); n != 1 {
		t.Fatalf("consumers-deleted metric %v, want 1", n)
	}
	st, err = h.fab.Queue(ctx, q)
	if err != nil {
		t.Fatal(err)
	}
	if st.Stats.Depth != 1 || st.Stats.Waiting != 1 || st.Stats.Acked != 2 || st.Stats.Published != 3 || st.Spec.MaxDeliveries != 7 {
		t.Fatalf("queue after its consumer went: %+v", st)
	}

	ds, err = h.fab.Consume(ctx, q, 10, time.Second)
	if err != nil || len(ds) != 1 || string(ds[0].Data) != string(text(3).Data) {
		t.Fatalf("consume after the take-up: %d messages, %v; want message 3 alone", len(ds), err)
	}
	if cc := h.consumerConfig(q); cc.MaxDeliver != 7 || cc.AckWait != 45*time.Second {
		t.Fatalf("consumer made again with max deliveries %d, ack wait %s", cc.MaxDeliver, cc.AckWait)
	}
	if err := h.fab.Settle(ctx, q, []string{ds[0].AckToken}, Ack, 0); err != nil {
		t.Fatal(err)
	}
	if st, err := h.fab.Queue(ctx, q); err != nil || st.Stats.Depth != 0 {
		t.Fatalf("queue at the end: %+v, %v", st.Stats, err)
	}
}

// A message that ran out of deliveries and is not dead-lettered yet keeps its queue's consumer
// until the sweep has moved it: a new consumer would deliver it again.
func TestIdleCloseKeepsConsumerWithMessagesToSweep(t *testing.T) {
	h := openCalledClose(t)
	q := h.queue("acme", "jobs", QueueSpec{MaxDeliveries: 1, AckWait: time.Second})
	publish(t, h.fab, q, text(1))
	if ds, err := h.fab.Consume(ctx, q, 1, time.Second); err != nil || len(ds) != 1 {
		t.Fatalf("consume: %d, %v", len(ds), err)
	}
	// Nobody hears the engine give it up: the advisory listener is stopped here.
	h.fab.mu.Lock()
	ta := h.fab.accounts[q.account()]
	h.fab.mu.Unlock()
	if err := ta.advisories.Unsubscribe(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the engine to give the message up", func() bool {
		all, err := h.stack.Engine.AccountStreams(q.account())
		if err != nil {
			t.Fatal(err)
		}
		for _, st := range all[q.account()] {
			for _, c := range st.Consumers {
				if st.Stream == q.queueStream() && c.AckPending == 0 && st.Msgs == 1 {
					return true
				}
			}
		}
		return false
	})
	h.idleNow("acme")
	if n := h.fab.closeIdleOnce(); n != 1 || len(h.queueConsumers(q)) != 1 {
		t.Fatalf("closed %d, consumers %v, with a message left to sweep", n, h.queueConsumers(q))
	}
	// The next take-up sweeps it to the dead-letter queue; then the consumer goes too.
	var dl []DeadLetter
	waitFor(t, "the sweep after the take-up", func() bool {
		var err error
		dl, _, err = h.fab.DeadLetters(ctx, q, 0, 10)
		if err != nil {
			t.Fatal(err)
		}
		return len(dl) == 1
	})
	if dl[0].Reason != "max_deliveries" || string(dl[0].Data) != string(text(1).Data) {
		t.Fatalf("dead letter %+v", dl[0])
	}
	h.idleNow("acme")
	if n := h.fab.closeIdleOnce(); n != 1 || len(h.queueConsumers(q)) != 0 {
		t.Fatalf("closed %d, consumers %v, once swept", n, h.queueConsumers(q))
	}
}

// A queue made before its stream kept the consumer's settings keeps them through the idle
// close: they are copied to the stream before the consumer goes.
func TestIdleCloseKeepsSettingsOfOlderQueues(t *testing.T) {
	h := openCalledClose(t)
	q := h.queue("acme", "jobs", QueueSpec{})
	acc, err := h.stack.Engine.Account(ctx, q.account())
	if err != nil {
		t.Fatal(err)
	}
	js := acc.JetStream()
	st, err := js.Stream(ctx, q.queueStream())
	if err != nil {
		t.Fatal(err)
	}
	cfg := st.CachedInfo().Config
	cfg.Metadata = map[string]string{"penstock.kind": "queue"} // as made before
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateOrUpdateConsumer(ctx, q.queueStream(), queueConsumerConfig(q, 5, 20*time.Second)); err != nil {
		t.Fatal(err)
	}
	h.idleNow("acme")
	if n := h.fab.closeIdleOnce(); n != 1 || len(h.queueConsumers(q)) != 0 {
		t.Fatalf("closed %d, consumers %v", n, h.queueConsumers(q))
	}
	qs, err := h.fab.Queue(ctx, q)
	if err != nil || qs.Spec.MaxDeliveries != 5 || qs.Spec.AckWait != 20*time.Second {
		t.Fatalf("queue settings after its consumer went: %+v, %v", qs.Spec, err)
	}
	publish(t, h.fab, q, text(1))
	if ds, err := h.fab.Consume(ctx, q, 1, time.Second); err != nil || len(ds) != 1 {
		t.Fatalf("consume: %d, %v", len(ds), err)
	}
	if cc := h.consumerConfig(q); cc.MaxDeliver != 5 || cc.AckWait != 20*time.Second {
		t.Fatalf("consumer made again with max deliveries %d, ack wait %s", cc.MaxDeliver, cc.AckWait)
	}
}

// pullNative pulls one message from a queue's consumer over a native connection, acknowledged.
func pullNative(t *testing.T, c *natsClient, r Ref) string {
	t.Helper()
	js, _ := jetstream.NewWithAPIPrefix(c.nc, APIPrefix)
	cons, err := js.Consumer(ctx, r.queueStream(), r.consumer())
	if err != nil {
		t.Fatalf("consumer of %s over NATS: %v (%s)", r.Name, err, c.errors())
	}
	b, err := cons.Fetch(1, jetstream.FetchMaxWait(3*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for m := range b.Messages() {
		if err := m.DoubleAck(ctx); err != nil {
			t.Fatal(err)
		}
		got = append(got, string(m.Data()))
	}
	if len(got) != 1 {
		t.Fatalf("pulled %q from %s: %v", got, r.Name, b.Error())
	}
	return got[0]
}

// A native client pulls from a queue's consumer directly: its login makes the consumers of
// every queue first, and a queue made while it may be connected gets one at once.
func TestNativeLoginMakesQueueConsumers(t *testing.T) {
	h := openCalledClose(t)
	q := h.queue("acme", "jobs", QueueSpec{})
	publish(t, h.fab, q, text(1))
	key, id := h.key("acme", authz.Developer)
	c, err := h.dialNATS("acme/production", key, id, false)
	if err != nil {
		t.Fatal(err)
	}
	if got := pullNative(t, c, q); got != string(text(1).Data) {
		t.Fatalf("pulled %q", got)
	}
	later := h.queue("acme", "later", QueueSpec{})
	if len(h.queueConsumers(later)) != 1 {
		t.Fatal("a queue made with a native client connected has no consumer")
	}
	publish(t, h.fab, later, text(2))
	if got := pullNative(t, c, later); got != string(text(2).Data) {
		t.Fatalf("pulled %q", got)
	}
	// Once the client left and the tenant-environment went idle, the consumers go; the next
	// login makes them again. First the consumers alone (as when the close itself then does not
	// happen): a login to the tenant-environment still held makes them again too.
	c.nc.Close()
	waitFor(t, "the native connection to be forgotten", func() bool { return h.fab.openConns("acme", "production") == 0 })
	h.idleNow("acme")
	h.fab.mu.Lock()
	ta := h.fab.accounts[q.account()]
	h.fab.mu.Unlock()
	if n := h.fab.dropConsumers(ctx, ta, h.fab.cfg.IdleClose); n != 2 || ta.nativeReady.Load() {
		t.Fatalf("dropped %d consumers, native-ready %v", n, ta.nativeReady.Load())
	}
	publish(t, h.fab, later, text(4))
	c, err = h.dialNATS("acme/production", key, id, false)
	if err != nil {
		t.Fatal(err)
	}
	if got := pullNative(t, c, later); got != string(text(4).Data) {
		t.Fatalf("pulled %q after the consumers went", got)
	}
	c.nc.Close()
	waitFor(t, "the native connection to be forgotten", func() bool { return h.fab.openConns("acme", "production") == 0 })
	h.idleNow("acme")
	if n := h.fab.closeIdleOnce(); n != 1 || len(h.queueConsumers(q))+len(h.queueConsumers(later)) != 0 {
		t.Fatalf("closed %d; consumers %v %v", n, h.queueConsumers(q), h.queueConsumers(later))
	}
	publish(t, h.fab, q, text(3))
	c, err = h.dialNATS("acme/production", key, id, false)
	if err != nil {
		t.Fatal(err)
	}
	defer c.nc.Close()
	if got := pullNative(t, c, q); got != string(text(3).Data) {
		t.Fatalf("pulled %q after the login", got)
	}
}

// A queue deleted and made again under the same name is consumed through its new consumer, not
// the handle of the old one; a settlement on a queue with no consumer is refused as no such
// delivery, without making one.
func TestQueueMadeAgainIsConsumed(t *testing.T) {
	h := openCalledClose(t)
	q := h.queue("acme", "jobs", QueueSpec{})
	publish(t, h.fab, q, text(1))
	ds, err := h.fab.Consume(ctx, q, 1, time.Second)
	if err != nil || len(ds) != 1 {
		t.Fatalf("consume: %d, %v", len(ds), err)
	}
	if err := h.fab.DeleteQueue(ctx, q); err != nil {
		t.Fatal(err)
	}
	h.queue("acme", "jobs", QueueSpec{})
	if err := h.fab.Settle(ctx, q, []string{ds[0].AckToken}, Ack, 0); !errors.Is(err, ErrInvalid) {
		t.Fatalf("settling a delivery of the deleted queue: %v", err)
	}
	if c := h.queueConsumers(q); len(c) != 0 {
		t.Fatalf("a settlement made consumers %v", c)
	}
	publish(t, h.fab, q, text(2))
	ds, err = h.fab.Consume(ctx, q, 1, time.Second)
	if err != nil || len(ds) != 1 || string(ds[0].Data) != string(text(2).Data) {
		t.Fatalf("consume of the queue made again: %d, %v", len(ds), err)
	}
}

// A single node started with fabric.idle_close 0 after running with it gives every queue its
// consumer again, as an earlier Penstock expects.
func TestStartWithoutIdleCloseMakesMissingConsumers(t *testing.T) {
	h := openCalledClose(t)
	q := h.queue("acme", "jobs", QueueSpec{MaxDeliveries: 3})
	if c := h.queueConsumers(q); len(c) != 0 {
		t.Fatalf("consumers %v", c)
	}
	h.fab.Close()
	cfg := config.Default().Fabric
	cfg.IdleClose = 0
	f, err := Open(ctx, Options{Engine: h.stack.Engine, Identity: h.id, Config: cfg, Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if c := h.queueConsumers(q); len(c) != 1 {
		t.Fatalf("consumers after the start: %v", c)
	}
	if cc := h.consumerConfig(q); cc.MaxDeliver != 3 {
		t.Fatalf("max deliveries %d", cc.MaxDeliver)
	}
}

// Queue consumers a native login could not make (a busy engine) are made by the idle loop while
// the client is connected, and a queue made while it is connected gets its consumer at once.
func TestIdleLoopMakesConsumersALoginCouldNot(t *testing.T) {
	h := openCalledClose(t)
	q := h.queue("acme", "jobs", QueueSpec{})
	key, id := h.key("acme", authz.Developer)
	c, err := h.dialNATS("acme/production", key, id, false)
	if err != nil {
		t.Fatal(err)
	}
	defer c.nc.Close()
	acc, err := h.stack.Engine.Account(ctx, q.account())
	if err != nil {
		t.Fatal(err)
	}
	// As if the login's making of them had failed.
	if err := acc.JetStream().DeleteConsumer(ctx, q.queueStream(), q.consumer()); err != nil {
		t.Fatal(err)
	}
	h.fab.mu.Lock()
	ta := h.fab.accounts[q.account()]
	h.fab.mu.Unlock()
	ta.nativeReady.Store(false)
	later := h.queue("acme", "later", QueueSpec{})
	if len(h.queueConsumers(later)) != 1 {
		t.Fatal("a queue made with a native client connected has no consumer")
	}
	h.fab.closeIdleOnce()
	if len(h.queueConsumers(q)) != 1 || !ta.nativeReady.Load() {
		t.Fatalf("after the idle loop: consumers %v, ready %v", h.queueConsumers(q), ta.nativeReady.Load())
	}
	publish(t, h.fab, q, text(1))
	if got := pullNative(t, c, q); got != string(text(1).Data) {
		t.Fatalf("pulled %q", got)
	}
}

// A dead-letter queue keeps its queue's age, at most fabric.dead_letter_max_age; one made
// before the bound (here: set back to no age at all) takes it with its next dead letter.
func TestDeadLettersAreKeptNoLongerThanTheBound(t *testing.T) {
	h := open(t, func(c *config.Fabric) { c.DeadLetterMaxAge = 2 * time.Hour })
	q := h.queue("acme", "jobs", QueueSpec{MaxAge: 30 * 24 * time.Hour, DuplicateWindow: 3 * time.Hour})
	rejectOne(t, h, q)
	ta, err := h.fab.account(ctx, "acme", "production")
	if err != nil {
		t.Fatal(err)
	}
	js := ta.acc.JetStream()
	st, err := js.Stream(ctx, q.deadStream())
	if err != nil {
		t.Fatal(err)
	}
	c := st.CachedInfo().Config
	if c.MaxAge != 2*time.Hour || c.Duplicates != 2*time.Hour {
		t.Fatalf("dead-letter stream: max age %s, duplicates %s; want both 2h", c.MaxAge, c.Duplicates)
	}
	c.MaxAge, c.Duplicates = 0, time.Minute
	if _, err := js.UpdateStream(ctx, c); err != nil {
		t.Fatal(err)
	}
	rejectOne(t, h, q)
	if st, err = js.Stream(ctx, q.deadStream()); err != nil || st.CachedInfo().Config.MaxAge != 2*time.Hour {
		t.Fatalf("an unbounded dead-letter stream after its next dead letter: %v %v", st.CachedInfo().Config.MaxAge, err)
	}
	if dl, _, err := h.fab.DeadLetters(ctx, q, 0, 10); err != nil || len(dl) != 2 {
		t.Fatalf("dead letters: %d %v", len(dl), err)
	}
}

// rejectOne publishes text(1) to q, consumes it and rejects it: one dead letter.
func rejectOne(t *testing.T, h *harness, q Ref) {
	t.Helper()
	publish(t, h.fab, q, text(1))
	ds, err := h.fab.Consume(ctx, q, 1, time.Second)
	if err != nil || len(ds) != 1 {
		t.Fatalf("consume: %d, %v", len(ds), err)
	}
	if err := h.fab.Settle(ctx, q, []string{ds[0].AckToken}, Reject, 0); err != nil {
		t.Fatal(err)
	}
}
