package fabric

import (
	"bytes"
	"errors"
	"fmt"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/penstock/penstock/internal/config"
	"github.com/prometheus/client_golang/prometheus"
	"os"
	"path/filepath"
	"strings"
	"sync"
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
	waitFor(t, "the queue to be empty", func() bool {
		st, _ := h.fab.Queue(ctx, q)
		return st.Stats.Depth == 0 && st.Stats.InFlight == 0
	})
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
	if none, _ := h.fab.Consume(ctx, q, 1, 0); len(none) != 0 {
		t.Fatalf("delivered again before ack wait: %+v", none)
	}
	again, err := h.fab.Consume(ctx, q, 1, 3*time.Second)
	if err != nil || len(again) != 1 || again[0].Seq != first[0].Seq || again[0].Deliveries != 2 {
		t.Fatalf("redelivery: %+v %v", again, err)
	}
	// A nack with a delay brings it back after the delay, not before.
	if err := h.fab.Settle(ctx, q, []string{again[0].AckToken}, Nack, 700*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if none, _ := h.fab.Consume(ctx, q, 1, 200*time.Millisecond); len(none) != 0 {
		t.Fatalf("delivered during the nack delay")
	}
	third, err := h.fab.Consume(ctx, q, 1, 3*time.Second)
	if err != nil || len(third) != 1 || third[0].Deliveries != 3 {
		t.Fatalf("after nack: %+v %v", third, err)
	}
	// Extending keeps it from being redelivered past the ack wait.
	for range 3 {
		time.Sleep(500 * time.Millisecond)
		if err := h.fab.Settle(ctx, q, []string{third[0].AckToken}, Extend, 0); err != nil {
			t.Fatal(err)
		}
	}
	if none, _ := h.fab.Consume(ctx, q, 1, 0); len(none) != 0 {
		t.Fatalf("redelivered although extended")
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
		if got, _ := h.fab.Consume(ctx, q, 1, 100*time.Millisecond); len(got) > 0 {
			t.Fatalf("delivered beyond max deliveries: %+v", got)
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
	start := time.Now()
	go func() {
		time.Sleep(300 * time.Millisecond)
		publish(t, h.fab, q, text(1), text(2))
	}()
	got, err := h.fab.Consume(ctx, q, 10, 5*time.Second)
	waited := time.Since(start)
	if err != nil || len(got) == 0 {
		t.Fatalf("%v %v", got, err)
	}
	if waited < 250*time.Millisecond || waited > 4*time.Second {
		t.Fatalf("returned after %s", waited)
	}
	// An empty queue answers an empty list after the wait.
	q2 := h.queue("acme", "empty", QueueSpec{})
	got, err = h.fab.Consume(ctx, q2, 10, 200*time.Millisecond)
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
	time.Sleep(1500 * time.Millisecond)
	if b, err := cons.Fetch(1, jetstream.FetchMaxWait(500*time.Millisecond)); err == nil {
		for m := range b.Messages() {
			t.Fatalf("redelivered beyond max deliveries: %q", m.Data())
		}
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
	if st, _ := f.Queue(ctx, q); st.Stats.Depth != 0 {
		t.Fatalf("queue depth %d after the sweep", st.Stats.Depth)
	}
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
	var wg sync.WaitGroup
	results := make(chan error, 400)
	for w := range 8 {
		wg.Go(func() {
			for i := range 50 {
				_, err := h.fab.Publish(ctx, Target{Ref: q}, []Message{{ID: fmt.Sprintf("%d-%d", w, i), Data: []byte("x")}})
				results <- err
			}
		})
	}
	time.Sleep(20 * time.Millisecond)
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
	failed := 0
	for err := range results {
		if err != nil {
			failed++
			if !errors.Is(err, ErrClosed) && !errors.Is(err, ErrNotFound) {
				t.Fatalf("publish during deletion: %v", err)
			}
		}
	}
	if failed == 0 {
		t.Fatal("every publish succeeded although the queue was deleted")
	}
}
