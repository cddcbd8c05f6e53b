package fabric

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/penstock/penstock/internal/authz"
	"github.com/penstock/penstock/internal/config"
)

// reviewJS dials a native NATS client of acme's orders application with a JetStream context.
func reviewJS(t *testing.T, h *harness, key, keyID string) (*natsClient, jetstream.JetStream) {
	t.Helper()
	c, err := h.dialNATS("acme/production", key, keyID, false)
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.NewWithAPIPrefix(c.nc, APIPrefix, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		t.Fatal(err)
	}
	return c, js
}

// awaitAcks collects the futures' acknowledgements in the order sent.
func awaitAcks(t *testing.T, fs []jetstream.PubAckFuture) ([]*jetstream.PubAck, []error) {
	t.Helper()
	acks, errs := make([]*jetstream.PubAck, len(fs)), make([]error, len(fs))
	for i, f := range fs {
		select {
		case a := <-f.Ok():
			acks[i] = a
		case err := <-f.Err():
			errs[i] = err
		case <-time.After(30 * time.Second):
			t.Fatalf("publish %d not answered in 30s", i)
		}
	}
	return acks, errs
}

// R1. An asynchronous publisher's messages are stored in the order it sent them, even when one
// of them carries a Nats- header (here the stock client option WithExpectStream, which names the
// very stream the message goes to). Such a message goes to the engine at once through the relay,
// while the plain messages before it wait in the commit window: it overtakes them.
func TestNativeMessageWithEngineHeadersKeepsItsTurn(t *testing.T) {
	h := open(t, nil)
	q := h.queue("acme", "jobs", QueueSpec{})
	key, keyID := h.key("acme", authz.Developer)
	_, js := reviewJS(t, h, key, keyID)

	const n = 200
	fs := make([]jetstream.PubAckFuture, n)
	for i := range n {
		opts := []jetstream.PublishOpt{jetstream.WithStallWait(30 * time.Second)}
		if i%10 == 9 {
			opts = append(opts, jetstream.WithExpectStream(q.queueStream()))
		}
		f, err := js.PublishAsync(q.queueSubject(), []byte(strconv.Itoa(i)), opts...)
		if err != nil {
			t.Fatal(err)
		}
		fs[i] = f
	}
	acks, errs := awaitAcks(t, fs)
	var last uint64
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("publish %d: %v", i, errs[i])
		}
		if acks[i].Sequence <= last {
			t.Fatalf("publish %d (expect-stream: %v) stored at %d, after sequence %d of an earlier message: out of the order sent",
				i, i%10 == 9, acks[i].Sequence, last)
		}
		last = acks[i].Sequence
	}
}

// R2. A batch that fails for an id already stored is re-committed request by request, after
// the batches sent behind it have committed: an asynchronous publisher that repeats one id (a
// retry, the reason ids exist) has its earlier messages stored after its later ones.
func TestNativeRepeatedIDKeepsAsyncOrder(t *testing.T) {
	h := open(t, nil)
	q := h.queue("acme", "jobs", QueueSpec{})
	key, keyID := h.key("acme", authz.Developer)
	_, js := reviewJS(t, h, key, keyID)

	if _, err := js.Publish(ctx, q.queueSubject(), []byte("first"), jetstream.WithMsgID("retried")); err != nil {
		t.Fatal(err)
	}
	const n = 3000
	fs := make([]jetstream.PubAckFuture, n)
	for i := range n {
		id := "m-" + strconv.Itoa(i)
		if i == 1 {
			id = "retried" // a retry of a message whose acknowledgement was lost
		}
		f, err := js.PublishAsync(q.queueSubject(), []byte(strconv.Itoa(i)), jetstream.WithMsgID(id), jetstream.WithStallWait(30*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		fs[i] = f
	}
	acks, errs := awaitAcks(t, fs)
	var last uint64
	lastAt := -1
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("publish %d: %v", i, errs[i])
		}
		if acks[i].Duplicate {
			continue
		}
		if acks[i].Sequence <= last {
			t.Fatalf("publish %d stored at %d, but publish %d (sent before it) at %d: out of the order sent", i, acks[i].Sequence, lastAt, last)
		}
		last, lastAt = acks[i].Sequence, i
	}
}

// R3. A message the client may send (within its account's max_payload) that lands in a gathered
// batch grows by the batch headers past the engine's max_payload: the fabric's publish of the
// batch fails, and every other publisher's message in the batch fails with it ("publish failed").
func TestNativeNearMaxPayloadCommitsAlone(t *testing.T) {
	h := open(t, func(f *config.Fabric) { f.CommitWindow = 100 * time.Millisecond })
	q := h.queue("acme", "jobs", QueueSpec{})
	key, keyID := h.key("acme", authz.Developer)
	good, gjs := reviewJS(t, h, key, keyID)
	bad, _ := reviewJS(t, h, key, keyID)
	if mp := bad.nc.MaxPayload(); mp != 1<<20 {
		t.Logf("max payload %d", mp)
	}
	big := make([]byte, bad.nc.MaxPayload()-40) // within what the client may send

	const n = 20
	fs := make([]jetstream.PubAckFuture, 0, n)
	for i := range n {
		f, err := gjs.PublishAsync(q.queueSubject(), []byte(strconv.Itoa(i)))
		if err != nil {
			t.Fatal(err)
		}
		fs = append(fs, f)
		if i == n/2 {
			if err := good.nc.Flush(); err != nil {
				t.Fatal(err)
			}
			if err := bad.nc.Publish(q.queueSubject(), big); err != nil {
				t.Fatalf("the client may not send %d bytes: %v", len(big), err)
			}
			if err := bad.nc.Flush(); err != nil {
				t.Fatal(err)
			}
		}
	}
	_, errs := awaitAcks(t, fs)
	failed := 0
	var first error
	for _, err := range errs {
		if err != nil {
			failed++
			if first == nil {
				first = err
			}
		}
	}
	if failed > 0 {
		t.Fatalf("%d of %d messages of another publisher failed next to one large message: %v", failed, n, first)
	}
}

// R4. Publishes to queue names that do not exist cost a JetStream API request each, made on the
// tenant-environment's one ingest subscription: a client flooding made-up names (fire and forget,
// nothing to wait for) holds up every other native publisher of the tenant-environment.
func TestNativeMissingQueueFloodDoesNotStall(t *testing.T) {
	h := open(t, nil)
	q := h.queue("acme", "jobs", QueueSpec{})
	key, keyID := h.key("acme", authz.Developer)
	_, gjs := reviewJS(t, h, key, keyID)
	bad, _ := reviewJS(t, h, key, keyID)
	// The engine as it was: a publish to a subject no stream takes costs nothing.
	if _, err := gjs.Publish(ctx, q.queueSubject(), []byte("warm")); err != nil {
		t.Fatal(err)
	}
	const flood = 20000
	for i := range flood {
		if err := bad.nc.Publish("orders.q.nope-"+strconv.Itoa(i), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if err := bad.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := gjs.Publish(pctx, q.queueSubject(), []byte("after the flood")); err != nil {
		// How long the tenant-environment stays stalled.
		waitUntil := time.Now().Add(60 * time.Second)
		for time.Now().Before(waitUntil) {
			pctx, cancel := context.WithTimeout(ctx, time.Second)
			_, perr := gjs.Publish(pctx, q.queueSubject(), []byte("retry"))
			cancel()
			if perr == nil {
				break
			}
		}
		t.Fatalf("a publish to an existing queue after %d publishes to missing names: %v after %s", flood, err, time.Since(start))
	}
	t.Logf("answered after %s", time.Since(start))
}

// R5. The ingest hands a request to a committer it looked up before the committer stopped (the
// queue deleted, the account forgotten): its select then picks at random between the channel,
// which has room, and stopped. A request put in the channel after the commit loop drained it is
// never answered: the client waits for its timeout. (Publish over HTTPS waits on c.stopped too
// and answers ErrClosed; the native answer has no such second chance.)
func TestNativeRequestToStoppedCommitterIsAnswered(t *testing.T) {
	h := open(t, nil)
	q := h.queue("acme", "jobs", QueueSpec{})
	key, keyID := h.key("acme", authz.Developer)
	_, js := reviewJS(t, h, key, keyID)
	if _, err := js.Publish(ctx, q.queueSubject(), []byte("warm")); err != nil {
		t.Fatal(err)
	}
	ta, err := h.fab.account(ctx, "acme", "production")
	if err != nil {
		t.Fatal(err)
	}
	k := ta.acc.Name() + "/" + q.queueStream()
	h.fab.mu.Lock()
	c := h.fab.committers[k]
	h.fab.mu.Unlock()
	h.fab.dropCommitter(ta, q.queueStream())
	<-c.stopped
	// The interleaving: the ingest looked c up just before it was dropped.
	h.fab.mu.Lock()
	h.fab.committers[k] = c
	h.fab.mu.Unlock()
	t.Cleanup(func() {
		h.fab.mu.Lock()
		delete(h.fab.committers, k)
		h.fab.mu.Unlock()
	})
	hung := 0
	for i := range 20 {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := js.Publish(pctx, q.queueSubject(), []byte(strconv.Itoa(i)))
		cancel()
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) {
			hung++
		}
	}
	if hung > 0 {
		t.Fatalf("%d of 20 publishes to a stopped committer were never answered", hung)
	}
}

// R6 (held, kept as a regression check). Odd subjects and headers reach nothing beyond the
// client's own queues, make the fabric neither panic nor stop, and are answered.
func TestNativeOddInputsHold(t *testing.T) {
	h := open(t, nil)
	q := h.queue("acme", "jobs", QueueSpec{})
	qb := h.queue("globex", "jobs", QueueSpec{})
	key, keyID := h.key("acme", authz.Developer)
	c, js := reviewJS(t, h, key, keyID)
	req := func(m *nats.Msg) string {
		r, err := c.nc.RequestMsg(m, 5*time.Second)
		if err != nil {
			return "error: " + err.Error()
		}
		return string(r.Data)
	}
	for _, subj := range []string{"orders.q." + strings.Repeat("x", 3000), "orders.q.ünïcødé", "orders.q.*", "orders.q.>",
		"orders.q.jobs_x", "orders.q.JOBS", "orders.q._router", "orders.q.jobs\x00"} {
		m := nats.NewMsg(subj)
		m.Data = []byte("odd")
		got := req(m)
		t.Logf("%.40q -> %.120s", subj, got)
		if strings.Contains(got, `"seq"`) {
			t.Errorf("%q stored: %s", subj, got)
		}
		if strings.Contains(got, "acme_") || strings.Contains(got, "globex") || strings.Contains(got, "n__") {
			t.Errorf("%q answer names an account: %s", subj, got)
		}
	}
	// Header line injection in the id: the engine sees what the client could always send.
	m := nats.NewMsg(q.queueSubject())
	m.Header.Set("Nats-Msg-Id", "a\r\nNats-Expected-Stream: Q_orders_other")
	// (nats.go writes a line break in a value as a space: the id is one header, and the
	// engine sees only what the fabric parsed, which the client could have sent itself.)
	if got := req(m); strings.Contains(got, "error") && !strings.Contains(got, "expected stream does not match") {
		t.Errorf("id with a line break: %s", got)
	}
	// Another stream named in Nats-Expected-Stream: refused, not redirected.
	m = nats.NewMsg(q.queueSubject())
	m.Header.Set("Nats-Expected-Stream", "Q_orders_other")
	if got := req(m); !strings.Contains(got, "expected stream does not match") {
		t.Errorf("expected another stream: %s", got)
	}
	// Many never-committed client batches: refused past the engine's per-stream limit, and the
	// fabric's own commits and other publishers carry on.
	for i := range 200 {
		m := nats.NewMsg(q.queueSubject())
		m.Header.Set("Nats-Batch-Id", "open-"+strconv.Itoa(i))
		m.Header.Set("Nats-Batch-Sequence", "1")
		_ = c.nc.PublishMsg(m)
	}
	if _, err := js.Publish(ctx, q.queueSubject(), []byte("still works")); err != nil {
		t.Errorf("single publish after open client batches: %v", err)
	}
	if st, _ := h.fab.Queue(ctx, qb); st.Stats.Depth != 0 {
		t.Errorf("globex's queue holds %d", st.Stats.Depth)
	}
}

// R7 (held). A tenant-environment reset (restore) takes native publishes up again with one
// ingest subscription: each message is stored once.
func TestNativeResetAccountStoresOnce(t *testing.T) {
	h := open(t, nil)
	q := h.queue("acme", "jobs", QueueSpec{})
	key, keyID := h.key("acme", authz.Developer)
	_, js := reviewJS(t, h, key, keyID)
	if _, err := js.Publish(ctx, q.queueSubject(), []byte("before")); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := h.fab.ResetAccount(ctx, "acme", "production"); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			if _, err := js.Publish(ctx, q.queueSubject(), []byte(fmt.Sprint(i))); err != nil {
				t.Errorf("after reset: %v", err)
			}
		})
	}
	wg.Wait()
	if st, _ := h.fab.Queue(ctx, q); st.Stats.Depth != 21 {
		t.Fatalf("depth %d, want 21", st.Stats.Depth)
	}
}
