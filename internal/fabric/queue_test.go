package fabric

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/penstock/penstock/internal/config"
	"github.com/prometheus/client_golang/prometheus"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestDestructiveReadAndAck(t *testing.T) {
	h := open(t, nil)
	q := h.queue("acme", "jobs", QueueSpec{})
	rec := publish(t, h.fab, q, text(1), text(2), text(3))
	if len(rec) != 3 || rec[0].Seq != 1 || rec[2].Seq != 3 {
		t.Fatalf("receipts %+v", rec)
	}
	got, err := h.fab.Consume(ctx, q, 10, 0)
	if err != nil || len(got) != 3 {
		t.Fatalf("consume: %d %v", len(got), err)
	}
	for i, d := range got {
		if string(d.Data) != fmt.Sprintf("message %d", i+1) || d.Deliveries != 1 || d.Seq != uint64(i+1) {
			t.Fatalf("delivery %d: %+v %q", i, d, d.Data)
		}
	}
	st, _ := h.fab.Queue(ctx, q)
	if st.Stats.Depth != 3 || st.Stats.InFlight != 3 {
		t.Fatalf("before ack: %+v", st.Stats)
	}
	var tokens []string
	for _, d := range got {
		tokens = append(tokens, d.AckToken)
	}
	if err := h.fab.Settle(ctx, q, tokens, Ack, 0); err != nil {
		t.Fatal(err)
	}
	// The acknowledgement has taken effect when Settle returns, not some time later.
	if st, _ := h.fab.Queue(ctx, q); st.Stats.Depth != 0 || st.Stats.InFlight != 0 {
		t.Fatalf("after the ack returned: %+v", st.Stats)
	}
	// The messages are gone from the engine's stream, not only from our view of it.
	acc, _ := h.stack.Engine.Account(ctx, q.account())
	s, err := acc.JetStream().Stream(ctx, q.queueStream())
	if err != nil {
		t.Fatal(err)
	}
	for seq := uint64(1); seq <= 3; seq++ {
		if _, err := s.GetMsg(ctx, seq); err == nil {
			t.Fatalf("message %d still stored after its ack", seq)
		}
	}
	// A token of another queue is refused.
	other := h.queue("acme", "other", QueueSpec{})
	if err := h.fab.Settle(ctx, other, tokens[:1], Ack, 0); !errors.Is(err, ErrInvalid) {
		t.Fatalf("foreign token: %v", err)
	}
}

func TestRedeliveryAfterAckWaitAndNack(t *testing.T) {
	h := open(t, nil)
	q := h.queue("acme", "jobs", QueueSpec{AckWait: time.Second})
	publish(t, h.fab, q, text(1))
	first, err := h.fab.Consume(ctx, q, 1, 0)
	if err != nil || len(first) != 1 {
		t.Fatalf("%v %v", first, err)
	}
	// Not acknowledged: nothing until the ack wait runs out, then the same message again.
	if none, err := h.fab.Consume(ctx, q, 1, 0); err != nil || len(none) != 0 {
		t.Fatalf("delivered again before ack wait: %+v %v", none, err)
	}
	again, err := h.fab.Consume(ctx, q, 1, 3*time.Second)
	if err != nil || len(again) != 1 || again[0].Seq != first[0].Seq || again[0].Deliveries != 2 {
		t.Fatalf("redelivery: %+v %v", again, err)
	}
	// A nack with a delay brings it back after the delay, not before.
	if err := h.fab.Settle(ctx, q, []string{again[0].AckToken}, Nack, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	if none, err := h.fab.Consume(ctx, q, 1, 0); err != nil || len(none) != 0 {
		t.Fatalf("delivered during the nack delay: %+v %v", none, err)
	}
	third, err := h.fab.Consume(ctx, q, 1, 6*time.Second)
	if err != nil || len(third) != 1 || third[0].Deliveries != 3 {
		t.Fatalf("after nack: %+v %v", third, err)
	}
	// Extending keeps it from being redelivered past the ack wait: extend every 300 ms for
	// longer than the ack wait, then nothing is delivered. The ack wait is a clock, so the
	// waits here are time; a round in which the machine stalled longer than the ack wait
	// between two extends proves nothing and is tried again.
	for round := 1; ; round++ {
		cur, err := h.fab.Consume(ctx, q, 1, 3*time.Second)
		if round == 1 {
			cur, err = third, nil
		}
		if err != nil || len(cur) != 1 {
			t.Fatalf("round %d: %+v %v", round, cur, err)
		}
		last, stalled := time.Now(), false
		for start := last; time.Since(start) < 1500*time.Millisecond; {
			time.Sleep(300 * time.Millisecond)
			if err := h.fab.Settle(ctx, q, []string{cur[0].AckToken}, Extend, 0); err != nil {
				t.Fatal(err)
			}
			stalled = stalled || time.Since(last) >= 900*time.Millisecond
			last = time.Now()
		}
		none, err := h.fab.Consume(ctx, q, 1, 0)
		if err != nil {
			t.Fatal(err)
		}
		if !stalled {
			if len(none) != 0 {
				t.Fatalf("redelivered although extended")
			}
			return
		}
		if round == 5 {
			t.Fatal("the machine stalled past the ack wait in every round")
		}
		if len(none) == 0 {
			// Still ours: give it back so the next round starts from a fresh delivery.
			if err := h.fab.Settle(ctx, q, []string{cur[0].AckToken}, Nack, 0); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func TestDeadLetterAfterMaxDeliveriesThenReplay(t *testing.T) {
	h := open(t, nil)
	q := h.queue("acme", "jobs", QueueSpec{AckWait: time.Second, MaxDeliveries: 2})
	publish(t, h.fab, q, Message{ID: "order-7", Data: []byte("poison"), Headers: map[string]string{"Kind": "order"}}, text(2))
	// Message 2 is acknowledged; message 1 fails twice.
	for round := 1; round <= 2; round++ {
		got, err := h.fab.Consume(ctx, q, 2, 3*time.Second)
		if err != nil || len(got) == 0 {
			t.Fatalf("round %d: %v %v", round, got, err)
		}
		for _, d := range got {
			if string(d.Data) == "message 2" {
				if err := h.fab.Settle(ctx, q, []string{d.AckToken}, Ack, 0); err != nil {
					t.Fatal(err)
				}
			} else if err := h.fab.Settle(ctx, q, []string{d.AckToken}, Nack, 0); err != nil {
				t.Fatal(err)
			}
		}
	}
	// The engine gives up on the message when a consumer next asks for messages.
	var dead []DeadLetter
	waitFor(t, "the dead letter", func() bool {
		if got, err := h.fab.Consume(ctx, q, 1, 100*time.Millisecond); err != nil || len(got) > 0 {
			t.Fatalf("delivered beyond max deliveries: %+v %v", got, err)
		}
		dead, _, _ = h.fab.DeadLetters(ctx, q, 0, 10)
		return len(dead) == 1
	})
	d := dead[0]
	if string(d.Data) != "poison" || d.Reason != "max_deliveries" || d.Deliveries < 2 || d.QueueSeq != 1 ||
		d.ID != "order-7" || d.Headers["Kind"] != "order" || d.Published.IsZero() {
		t.Fatalf("dead letter: %+v", d)
	}
	st, _ := h.fab.Queue(ctx, q)
	if st.Stats.Depth != 0 || st.Stats.DeadLetters != 1 {
		t.Fatalf("stats: %+v", st.Stats)
	}
	// Replay puts it back in the queue with its headers; the dead-letter queue is emptied.
	if n, err := h.fab.Replay(ctx, q, nil); err != nil || n != 1 {
		t.Fatalf("replay: %d %v", n, err)
	}
	got, err := h.fab.Consume(ctx, q, 1, time.Second)
	if err != nil || len(got) != 1 || string(got[0].Data) != "poison" || got[0].Headers["Kind"] != "order" || got[0].Deliveries != 1 {
		t.Fatalf("replayed: %+v %v", got, err)
	}
	if dead, _, _ := h.fab.DeadLetters(ctx, q, 0, 10); len(dead) != 0 {
		t.Fatalf("dead letters after replay: %+v", dead)
	}
	// Rejecting sends it straight back, with its reason; purge empties.
	if err := h.fab.Settle(ctx, q, []string{got[0].AckToken}, Reject, 0); err != nil {
		t.Fatal(err)
	}
	dead, _, _ = h.fab.DeadLetters(ctx, q, 0, 10)
	if len(dead) != 1 || dead[0].Reason != "rejected" {
		t.Fatalf("rejected: %+v", dead)
	}
	if n, err := h.fab.PurgeDeadLetters(ctx, q); err != nil || n != 1 {
		t.Fatalf("purge: %d %v", n, err)
	}
}

func TestIdempotentPublish(t *testing.T) {
	h := open(t, nil)
	q := h.queue("acme", "jobs", QueueSpec{})
	a := publish(t, h.fab, q, Message{ID: "a", Data: []byte("1")})
	b := publish(t, h.fab, q, Message{ID: "a", Data: []byte("1")})
	if a[0].Duplicate || !b[0].Duplicate || a[0].Seq != b[0].Seq {
		t.Fatalf("single: %+v %+v", a, b)
	}
	// In a batch, a repeated id is acknowledged without being stored again.
	c := publish(t, h.fab, q, Message{ID: "a", Data: []byte("1")}, Message{ID: "b", Data: []byte("2")})
	if !c[0].Duplicate || c[1].Duplicate {
		t.Fatalf("batch: %+v", c)
	}
	st, _ := h.fab.Queue(ctx, q)
	if st.Stats.Depth != 2 {
		t.Fatalf("depth %d, want 2", st.Stats.Depth)
	}
}

// Concurrent publishers share group commits, and every acknowledged message is stored once,
// in its publisher's order.
func TestGroupCommitConcurrentPublishers(t *testing.T) {
	h := open(t, nil)
	q := h.queue("acme", "jobs", QueueSpec{})
	const writers, each = 32, 50
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				_, err := h.fab.Publish(ctx, Target{Ref: q}, []Message{{ID: fmt.Sprintf("%d-%d", w, i), Data: fmt.Appendf(nil, "%d-%d", w, i)}})
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	last := map[int]int{}
	for {
		got, err := h.fab.Consume(ctx, q, 1000, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) == 0 {
			break
		}
		var tokens []string
		for _, d := range got {
			var w, i int
			fmt.Sscanf(string(d.Data), "%d-%d", &w, &i)
			if seen[string(d.Data)] {
				t.Fatalf("%s stored twice", d.Data)
			}
			seen[string(d.Data)] = true
			if p, ok := last[w]; ok && i <= p {
				t.Fatalf("writer %d: %d after %d", w, i, p)
			}
			last[w] = i
			tokens = append(tokens, d.AckToken)
		}
		if err := h.fab.Settle(ctx, q, tokens, Ack, 0); err != nil {
			t.Fatal(err)
		}
	}
	if len(seen) != writers*each {
		t.Fatalf("%d messages, want %d", len(seen), writers*each)
	}
}

func TestLongPollWaitsForFirstMessage(t *testing.T) {
	h := open(t, nil)
	q := h.queue("acme", "jobs", QueueSpec{})
	type result struct {
		got []Delivery
		err error
	}
	done := make(chan result, 1)
	go func() {
		got, err := h.fab.Consume(ctx, q, 10, 20*time.Second)
		done <- result{got, err}
	}()
	// Publish only once the consume is waiting in the engine.
	acc, err := h.stack.Engine.Account(ctx, q.account())
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the consume to wait", func() bool {
		c, err := acc.JetStream().Consumer(ctx, q.queueStream(), q.consumer())
		if err != nil {
			return false
		}
		ci, err := c.Info(ctx)
		return err == nil && ci.NumWaiting > 0
	})
	publish(t, h.fab, q, text(1), text(2))
	r := <-done
	if r.err != nil || len(r.got) == 0 || string(r.got[0].Data) != "message 1" {
		t.Fatalf("%+v %v", r.got, r.err)
	}
	// An empty queue answers an empty list after the wait.
	q2 := h.queue("acme", "empty", QueueSpec{})
	got, err := h.fab.Consume(ctx, q2, 10, 200*time.Millisecond)
	if err != nil || len(got) != 0 {
		t.Fatalf("empty: %v %v", got, err)
	}
}

func TestQueueLimitsAndErrors(t *testing.T) {
	h := open(t, nil)
	q := h.queue("acme", "small", QueueSpec{MaxMessages: 2})
	publish(t, h.fab, q, text(1), text(2))
	if _, err := h.fab.Publish(ctx, Target{Ref: q}, []Message{text(3)}); !errors.Is(err, ErrQueueFull) {
		t.Fatalf("full queue: %v", err)
	}
	if _, err := h.fab.CreateQueue(ctx, q, QueueSpec{}); !errors.Is(err, ErrExists) {
		t.Fatalf("create twice: %v", err)
	}
	missing := q
	missing.Name = "missing"
	if _, err := h.fab.Publish(ctx, Target{Ref: missing}, []Message{text(1)}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing queue: %v", err)
	}
	bad := []struct {
		spec QueueSpec
		want string
	}{
		{QueueSpec{MaxDeliveries: 5000}, "spec.max_deliveries"},
		{QueueSpec{AckWait: time.Millisecond}, "spec.ack_wait"},
		{QueueSpec{MaxMessages: -5}, "spec.max_messages"},
	}
	for _, b := range bad {
		q := q
		q.Name = "bad"
		if _, err := h.fab.CreateQueue(ctx, q, b.spec); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), b.want) {
			t.Errorf("%+v: %v", b.spec, err)
		}
	}
	if _, err := h.fab.Publish(ctx, Target{Ref: q}, []Message{{Data: []byte("x"), Headers: map[string]string{"Nats-Msg-Id": "x"}}}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("reserved header: %v", err)
	}
	names, err := h.fab.Queues(ctx, Ref{Tenant: "acme", Environment: "production", Application: "orders"})
	if err != nil || len(names) != 1 || names[0].Name != "small" {
		t.Fatalf("list: %+v %v", names, err)
	}
	if err := h.fab.DeleteQueue(ctx, q); err != nil {
		t.Fatal(err)
	}
	if _, err := h.fab.Queue(ctx, q); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
}

// Queue payloads at rest are encrypted by the engine's store encryption: a marker published
// over every path, dead-lettered and routed, appears in none of the engine's files.
func TestPayloadsEncryptedAtRest(t *testing.T) {
	h := open(t, nil)
	q := h.queue("acme", "jobs", QueueSpec{})
	const marker = "PLAINTEXT-MARKER-7f3a9c"
	var msgs []Message
	for i := range 50 {
		msgs = append(msgs, Message{ID: fmt.Sprint(i), Data: []byte(marker + fmt.Sprint(i)), Headers: map[string]string{"Note": marker}})
	}
	publish(t, h.fab, q, msgs...)
	app := Ref{Tenant: "acme", Environment: "production", Application: "orders"}
	x := app
	x.Name = "fan"
	if _, err := h.fab.CreateExchange(ctx, x, Fanout); err != nil {
		t.Fatal(err)
	}
	if _, err := h.fab.Bind(ctx, x, QueueBinding{Queue: "jobs"}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.fab.Publish(ctx, Target{Ref: x, Exchange: true}, []Message{{Data: []byte(marker + "-routed")}}); err != nil {
		t.Fatal(err)
	}
	got, err := h.fab.Consume(ctx, q, 1, 0)
	if err != nil || len(got) != 1 {
		t.Fatal(got, err)
	}
	if err := h.fab.Settle(ctx, q, []string{got[0].AckToken}, Reject, 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the routed copy", func() bool {
		st, _ := h.fab.Queue(ctx, q)
		return st.Stats.Depth == 50 && st.Stats.DeadLetters == 1
	})
	files := 0
	err = filepath.WalkDir(filepath.Join(h.dir, "data", "jetstream"), func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		files++
		if bytes.Contains(b, []byte(marker)) {
			t.Errorf("plaintext marker in %s", path)
		}
		return nil
	})
	if err != nil || files < 10 {
		t.Fatalf("scanned %d files: %v", files, err)
	}
}

// Deleting an application or a tenant's environment deletes its queues and exchanges.
func TestDeletingApplicationAndEnvironment(t *testing.T) {
	h := open(t, nil)
	q := h.queue("acme", "jobs", QueueSpec{})
	publish(t, h.fab, q, text(1))
	x := q
	x.Name = "events"
	if _, err := h.fab.CreateExchange(ctx, x, Fanout); err != nil {
		t.Fatal(err)
	}
	app := q
	app.Name = ""
	if err := h.fab.DeleteApplication(ctx, app); err != nil {
		t.Fatal(err)
	}
	if _, err := h.fab.Queue(ctx, q); !errors.Is(err, ErrNotFound) {
		t.Fatalf("queue after application delete: %v", err)
	}
	if _, err := h.fab.GetExchange(ctx, x); !errors.Is(err, ErrNotFound) {
		t.Fatalf("exchange after application delete: %v", err)
	}
	q2 := h.queue("acme", "more", QueueSpec{})
	if err := h.fab.DeleteEnvironment(ctx, "acme", "production"); err != nil {
		t.Fatal(err)
	}
	acc, _ := h.stack.Engine.Account(ctx, q2.account())
	n := 0
	for range acc.JetStream().StreamNames(ctx).Name() {
		n++
	}
	if n != 0 {
		t.Fatalf("%d streams left in the account", n)
	}
}

// A message that exhausted its deliveries while no fabric was listening for the engine's
// advisory (a crash between the two) is dead-lettered by the sweep when the fabric opens.
func TestDeadLetterSweepAfterMissedAdvisory(t *testing.T) {
	h := open(t, nil)
	q := h.queue("acme", "jobs", QueueSpec{AckWait: time.Second, MaxDeliveries: 1})
	publish(t, h.fab, q, Message{Data: []byte("lost-advisory")}, text(2))
	h.withConsumer(q)
	h.fab.Close() // nobody hears the advisory now

	acc, err := h.stack.Engine.Account(ctx, q.account())
	if err != nil {
		t.Fatal(err)
	}
	cons, err := acc.JetStream().Consumer(ctx, q.queueStream(), q.consumer())
	if err != nil {
		t.Fatal(err)
	}
	// Deliver both once; acknowledge the second; let the first run out of deliveries.
	b, err := cons.Fetch(2, jetstream.FetchMaxWait(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for m := range b.Messages() {
		if string(m.Data()) == "message 2" {
			_ = m.DoubleAck(ctx)
		}
	}
	// The engine gives the first one up once its ack wait runs out: nothing is pending then.
	waitFor(t, "the engine to give up the first message", func() bool {
		ci, err := cons.Info(ctx)
		return err == nil && ci.NumAckPending == 0
	})
	b, err = cons.Fetch(1, jetstream.FetchMaxWait(500*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	for m := range b.Messages() {
		t.Fatalf("redelivered beyond max deliveries: %q", m.Data())
	}

	f, err := Open(ctx, Options{Engine: h.stack.Engine, Identity: h.id, Config: config.Default().Fabric, Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var dead []DeadLetter
	waitFor(t, "the sweep to dead-letter the message", func() bool {
		dead, _, _ = f.DeadLetters(ctx, q, 0, 10)
		return len(dead) == 1
	})
	if string(dead[0].Data) != "lost-advisory" || dead[0].Reason != "max_deliveries" {
		t.Fatalf("dead letter %+v %q", dead[0], dead[0].Data)
	}
	// The original goes once its dead letter is stored (and durable).
	waitFor(t, "the sweep to take the message off the queue", func() bool {
		st, err := f.Queue(ctx, q)
		return err == nil && st.Stats.Depth == 0
	})
}

// The sweep leaves alone a message waiting out a negative acknowledgement's delay, and one
// whose ack wait ran out with no consumer asking for it again yet.
func TestDeadLetterSweepSparesDelayedRedelivery(t *testing.T) {
	h := open(t, nil)
	q := h.queue("acme", "jobs", QueueSpec{AckWait: time.Second})
	publish(t, h.fab, q, text(1))
	expired := q
	expired.Name = "expired"
	h.queue("acme", "expired", QueueSpec{AckWait: time.Second})
	publish(t, h.fab, expired, text(2))
	if got, err := h.fab.Consume(ctx, expired, 1, 0); err != nil || len(got) != 1 {
		t.Fatal(got, err)
	}
	got, err := h.fab.Consume(ctx, q, 1, 0)
	if err != nil || len(got) != 1 {
		t.Fatal(got, err)
	}
	if err := h.fab.Settle(ctx, q, []string{got[0].AckToken}, Nack, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	ta, err := h.fab.account(ctx, "acme", "production")
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond) // the expired queue's ack wait runs out
	h.fab.sweepDead(ctx, ta)
	for _, r := range []Ref{q, expired} {
		if dead, _, _ := h.fab.DeadLetters(ctx, r, 0, 10); len(dead) != 0 {
			t.Fatalf("%s: swept a message still to be redelivered: %+v", r.Name, dead)
		}
		if st, _ := h.fab.Queue(ctx, r); st.Stats.Depth != 1 {
			t.Fatalf("%s: depth %d", r.Name, st.Stats.Depth)
		}
	}
}

// Publishing while the queue is deleted ends, with an error, for every publisher: none waits
// forever on a commit loop that has stopped.
func TestPublishDuringQueueDeletionEnds(t *testing.T) {
	h := open(t, nil)
	q := h.queue("acme", "jobs", QueueSpec{})
	publish(t, h.fab, q, text(0))
	// Each publisher publishes until a publish fails; each must end, with a clear error.
	var wg sync.WaitGroup
	results := make(chan error, 8)
	var stored atomic.Int64
	for w := range 8 {
		wg.Go(func() {
			for i := 0; ; i++ {
				_, err := h.fab.Publish(ctx, Target{Ref: q}, []Message{{ID: fmt.Sprintf("%d-%d", w, i), Data: []byte("x")}})
				if err != nil {
					results <- err
					return
				}
				stored.Add(1)
			}
		})
	}
	waitFor(t, "publishes to flow", func() bool { return stored.Load() >= 8 })
	if err := h.fab.DeleteQueue(ctx, q); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("publishers still waiting after the queue was deleted")
	}
	close(results)
	for err := range results {
		if !errors.Is(err, ErrClosed) && !errors.Is(err, ErrNotFound) {
			t.Fatalf("publish during deletion: %v", err)
		}
	}
}

// storedIDs reads every message id stored in a queue's stream.
func storedIDs(t *testing.T, h *harness, q Ref) map[string]int {
	t.Helper()
	acc, err := h.stack.Engine.Account(ctx, q.account())
	if err != nil {
		t.Fatal(err)
	}
	s, err := acc.JetStream().Stream(ctx, q.queueStream())
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			continue // deleted
		}
		out[m.Header.Get(jetstream.MsgIDHeader)]++
	}
	return out
}

// A request that does not fit in a full queue stores nothing of itself, whether it is alone or
// gathered with others into one commit; requests that fit are stored whole.
func TestPublishRequestsAreAllOrNone(t *testing.T) {
	h := open(t, func(c *config.Fabric) { c.CommitWindow = 50 * time.Millisecond })
	q := h.queue("acme", "small", QueueSpec{MaxMessages: 30})
	batch := func(prefix string, n int) []Message {
		var out []Message
		for i := range n {
			out = append(out, Message{ID: fmt.Sprintf("%s-%d", prefix, i), Data: []byte(prefix)})
		}
		return out
	}
	if _, err := h.fab.Publish(ctx, Target{Ref: q}, batch("first", 20)); err != nil {
		t.Fatal(err)
	}
	// 20 more do not fit in the 10 left: refused whole, none stored.
	if _, err := h.fab.Publish(ctx, Target{Ref: q}, batch("second", 20)); !errors.Is(err, ErrQueueFull) {
		t.Fatalf("20 into 10 free: %v", err)
	}
	if ids := storedIDs(t, h, q); len(ids) != 20 {
		t.Fatalf("after a refused request: %d stored: %v", len(ids), ids)
	}
	// The same with an id already stored in the request: the rest still does not fit.
	retry := append([]Message{{ID: "first-0", Data: []byte("first")}}, batch("third", 15)...)
	if _, err := h.fab.Publish(ctx, Target{Ref: q}, retry); !errors.Is(err, ErrQueueFull) {
		t.Fatalf("a duplicate and 15 into 10 free: %v", err)
	}
	if ids := storedIDs(t, h, q); len(ids) != 20 {
		t.Fatalf("after a refused request with a duplicate: %d stored: %v", len(ids), ids)
	}
	// Concurrent requests gathered into one commit: each is answered for itself.
	var wg sync.WaitGroup
	errs := make([]error, 6)
	for i := range errs {
		wg.Go(func() {
			n := 4
			if i%2 == 1 {
				n = 9
			}
			_, errs[i] = h.fab.Publish(ctx, Target{Ref: q}, batch(fmt.Sprintf("c%d", i), n))
		})
	}
	wg.Wait()
	ids := storedIDs(t, h, q)
	for i, err := range errs {
		n := 0
		for id := range ids {
			if strings.HasPrefix(id, fmt.Sprintf("c%d-", i)) {
				n++
			}
		}
		switch {
		case err == nil && n != 4+5*(i%2):
			t.Fatalf("request %d answered ok with %d of its messages stored", i, n)
		case err != nil && n != 0:
			t.Fatalf("request %d answered %v with %d of its messages stored", i, err, n)
		case err != nil && !errors.Is(err, ErrQueueFull):
			t.Fatalf("request %d: %v", i, err)
		}
	}
	if len(ids) > 30 || len(ids) < 27 {
		t.Fatalf("%d stored in a queue of 30 after requests of 4 and 9", len(ids))
	}
}

// Duplicates are reported per message: against stored ids, inside one request, and inside a
// commit gathered from several requests; everything else of the request is stored once.
func TestPublishDuplicatesPerMessage(t *testing.T) {
	h := open(t, func(c *config.Fabric) { c.CommitWindow = 50 * time.Millisecond })
	q := h.queue("acme", "jobs", QueueSpec{})
	rec, err := h.fab.Publish(ctx, Target{Ref: q}, []Message{{ID: "a", Data: []byte("a")}, {ID: "b", Data: []byte("b")}})
	if err != nil {
		t.Fatal(err)
	}
	stored := map[string]uint64{"a": rec[0].Seq, "b": rec[1].Seq}
	// b is stored, c is new and appears twice, d is new.
	rec, err = h.fab.Publish(ctx, Target{Ref: q}, []Message{{ID: "b", Data: []byte("b2")}, {ID: "c", Data: []byte("c")},
		{ID: "c", Data: []byte("c2")}, {ID: "d", Data: []byte("d")}, {Data: []byte("no id")}})
	if err != nil {
		t.Fatal(err)
	}
	if !rec[0].Duplicate || rec[0].Seq != stored["b"] || rec[1].Duplicate || !rec[2].Duplicate || rec[2].Seq != rec[1].Seq ||
		rec[3].Duplicate || rec[4].Duplicate || rec[3].Seq == rec[1].Seq {
		t.Fatalf("receipts: %+v", rec)
	}
	// Gathered: one request repeats a, others are new; only the repeat is a duplicate.
	var wg sync.WaitGroup
	recs := make([][]Receipt, 5)
	errs := make([]error, 5)
	for i := range recs {
		wg.Go(func() {
			msgs := []Message{{ID: fmt.Sprintf("g%d-1", i), Data: []byte("g")}, {ID: fmt.Sprintf("g%d-2", i), Data: []byte("g")}}
			if i == 2 {
				msgs = append(msgs, Message{ID: "a", Data: []byte("a again")})
			}
			recs[i], errs[i] = h.fab.Publish(ctx, Target{Ref: q}, msgs)
		})
	}
	wg.Wait()
	for i := range recs {
		if errs[i] != nil {
			t.Fatalf("request %d: %v", i, errs[i])
		}
		for j, r := range recs[i] {
			if want := i == 2 && j == 2; r.Duplicate != want || (want && r.Seq != stored["a"]) {
				t.Fatalf("request %d receipts %+v", i, recs[i])
			}
		}
	}
	for id, n := range storedIDs(t, h, q) {
		if n != 1 {
			t.Fatalf("id %q stored %d times", id, n)
		}
	}
	if ids := storedIDs(t, h, q); len(ids) != 15 || ids[""] != 0 && len(ids) != 15 {
		t.Fatalf("stored ids: %v", ids)
	}
}

// An acknowledgement has taken effect when Settle returns: after each batch of acks the depth
// is exactly what is left, and nothing acknowledged is ever delivered again.
func TestAcksTakeEffectBeforeTheyAreAnswered(t *testing.T) {
	h := open(t, nil)
	q := h.queue("acme", "jobs", QueueSpec{AckWait: 5 * time.Second})
	const n = 5000
	for i := 0; i < n; i += 1000 {
		var msgs []Message
		for j := range 1000 {
			msgs = append(msgs, Message{Data: fmt.Appendf(nil, "%d", i+j)})
		}
		if _, err := h.fab.Publish(ctx, Target{Ref: q}, msgs); err != nil {
			t.Fatal(err)
		}
	}
	left := n
	for left > 0 {
		got, err := h.fab.Consume(ctx, q, 1000, time.Second)
		if err != nil || len(got) == 0 {
			t.Fatalf("consume with %d left: %d %v", left, len(got), err)
		}
		tokens := make([]string, len(got))
		for i, d := range got {
			if d.Deliveries != 1 {
				t.Fatalf("seq %d delivered %d times", d.Seq, d.Deliveries)
			}
			tokens[i] = d.AckToken
		}
		if err := h.fab.Settle(ctx, q, tokens, Ack, 0); err != nil {
			t.Fatal(err)
		}
		left -= len(got)
		st, err := h.fab.Queue(ctx, q)
		if err != nil || st.Stats.Depth != uint64(left) {
			t.Fatalf("after acking down to %d: depth %d %v", left, st.Stats.Depth, err)
		}
	}
	// Acking again what is gone is answered (the engine knows the delivery), and a token for
	// a delivery that never happened is refused, not left hanging.
	if got, err := h.fab.Consume(ctx, q, 1, 0); err != nil || len(got) != 0 {
		t.Fatalf("after every ack: %+v %v", got, err)
	}
	publish(t, h.fab, q, text(1))
	got, err := h.fab.Consume(ctx, q, 1, 0)
	if err != nil || len(got) != 1 {
		t.Fatal(got, err)
	}
	if err := h.fab.Settle(ctx, q, []string{got[0].AckToken}, Ack, 0); err != nil {
		t.Fatal(err)
	}
	if err := h.fab.Settle(ctx, q, []string{got[0].AckToken}, Ack, 0); err != nil {
		t.Fatalf("a second ack of the same delivery: %v", err)
	}
	forged := base64.RawURLEncoding.EncodeToString(fmt.Appendf(nil, "$JS.ACK.%s.%s.1.%d.%d.0.0", q.queueStream(), q.consumer(), n+100, n+100))
	if err := h.fab.Settle(ctx, q, []string{forged}, Ack, 0); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "tokens[0]") {
		t.Fatalf("a token of no delivery: %v", err)
	}
}

// Acking some deliveries leaves the others as they were: a nacked one comes back at once
// (not after its 30 s ack wait), a held one stays held.
func TestAcksLeaveOtherDeliveriesAlone(t *testing.T) {
	h := open(t, nil)
	q := h.queue("acme", "jobs", QueueSpec{AckWait: 30 * time.Second})
	publish(t, h.fab, q, text(1), text(2), text(3), text(4))
	got, err := h.fab.Consume(ctx, q, 4, 0)
	if err != nil || len(got) != 4 {
		t.Fatal(got, err)
	}
	if err := h.fab.Settle(ctx, q, []string{got[2].AckToken}, Nack, 0); err != nil {
		t.Fatal(err)
	}
	if err := h.fab.Settle(ctx, q, []string{got[0].AckToken, got[1].AckToken}, Ack, 0); err != nil {
		t.Fatal(err)
	}
	again, err := h.fab.Consume(ctx, q, 4, 10*time.Second)
	if err != nil || len(again) != 1 || again[0].Seq != 3 || again[0].Deliveries != 2 {
		t.Fatalf("after acking 1 and 2 with 3 nacked and 4 held: %+v %v", again, err)
	}
	if st, _ := h.fab.Queue(ctx, q); st.Stats.Depth != 2 || st.Stats.InFlight != 2 {
		t.Fatalf("stats: %+v", st.Stats)
	}
}

// A token is accepted only in the exact shape the engine gives a delivery of this queue;
// nothing of a refused request is applied (a reject moves nothing to the dead letters).
func TestForgedTokensAreRefused(t *testing.T) {
	h := open(t, nil)
	q := h.queue("acme", "jobs", QueueSpec{AckWait: time.Minute})
	publish(t, h.fab, q, text(1), text(2))
	got, err := h.fab.Consume(ctx, q, 2, 0)
	if err != nil || len(got) != 2 {
		t.Fatal(got, err)
	}
	pre := "$JS.ACK." + q.queueStream() + "." + q.consumer() + "."
	for _, forged := range []string{
		pre + "x.x.1.2.1.0.0.0", // more fields: the engine reads other positions
		pre + "1.1.1.0",         // fewer
		pre + "1.-1.1.0.0",      // not a number
		pre + "0.1.1.0.0",       // no delivery
		pre + "1.0.1.0.0",       // no sequence
		pre + "1.1.1.0.0.",      // trailing dot
		"$JS.ACK.Q_shop_other." + q.consumer() + ".1.1.1.0.0",
	} {
		tok := base64.RawURLEncoding.EncodeToString([]byte(forged))
		for _, how := range []Settlement{Ack, Reject} {
			err := h.fab.Settle(ctx, q, []string{got[1].AckToken, tok}, how, 0)
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "tokens[1]") {
				t.Fatalf("%q (%d): %v", forged, how, err)
			}
		}
	}
	if dead, _, _ := h.fab.DeadLetters(ctx, q, 0, 10); len(dead) != 0 {
		t.Fatalf("a refused reject moved %d messages", len(dead))
	}
	if st, _ := h.fab.Queue(ctx, q); st.Stats.Depth != 2 {
		t.Fatalf("depth %d after refused settlements", st.Stats.Depth)
	}
}

// A message whose publish was acknowledged is there for the very next consume, even one that
// does not wait: the engine tells the queue's consumer about a stored message only after it
// has answered the publish, so a consume that trusted the consumer's own count alone could
// find nothing.
func TestPublishedIsThereForTheNextConsume(t *testing.T) {
	h := open(t, nil)
	q := h.queue("acme", "jobs", QueueSpec{})
	for i := range 300 {
		publish(t, h.fab, q, text(i))
		got, err := h.fab.Consume(ctx, q, 10, 0)
		if err != nil || len(got) != 1 || string(got[0].Data) != fmt.Sprintf("message %d", i) {
			t.Fatalf("round %d: consume right after the publish: %+v %v", i, got, err)
		}
		if err := h.fab.Settle(ctx, q, []string{got[0].AckToken}, Ack, 0); err != nil {
			t.Fatal(err)
		}
	}
}
