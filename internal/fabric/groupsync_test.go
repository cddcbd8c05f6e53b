package fabric

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// With the engine's group sync, nothing is answered before a sync of the engine's files has
// finished after the write: a lone publisher's single-message publishes, multi-message
// requests, exchange publishes, native publishes and acknowledged acks each return only after
// the engine's count of finished syncs has moved.
func TestAnswersFollowTheGroupSync(t *testing.T) {
	h := open(t, nil)
	eng := h.stack.Engine
	if !eng.GroupSync() {
		t.Skip("group sync needs Linux")
	}
	q := h.queue("acme", "jobs", QueueSpec{})
	synced := func(what string, do func() error) {
		t.Helper()
		before := eng.Syncs()
		if err := do(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if eng.Syncs() == before {
			t.Fatalf("%s answered before any sync finished", what)
		}
	}
	for i := range 5 {
		synced(fmt.Sprintf("single publish %d", i), func() error {
			_, err := h.fab.Publish(ctx, Target{Ref: q}, []Message{{ID: fmt.Sprint("s", i), Data: []byte("x")}})
			return err
		})
	}
	synced("duplicate publish", func() error {
		rec, err := h.fab.Publish(ctx, Target{Ref: q}, []Message{{ID: "s1", Data: []byte("x")}})
		if err == nil && !rec[0].Duplicate {
			return fmt.Errorf("not a duplicate: %+v", rec)
		}
		return err
	})
	synced("three-message publish", func() error {
		_, err := h.fab.Publish(ctx, Target{Ref: q}, []Message{{Data: []byte("a")}, {Data: []byte("b")}, {Data: []byte("c")}})
		return err
	})
	key, keyID := h.key("acme", "developer")
	c, err := h.dialNATS("acme/production", key, keyID, false)
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.NewWithAPIPrefix(c.nc, APIPrefix)
	synced("native publish", func() error {
		_, err := js.Publish(ctx, q.queueSubject(), []byte("n"))
		return err
	})
	synced("native publish with an expected last sequence (sent as it is)", func() error {
		_, err := js.Publish(ctx, q.queueSubject(), []byte("n"), jetstream.WithExpectLastSequence(9))
		return err
	})
	// A native publish to an exchange takes the same path: stored in the exchange once the
	// sync is done, then routed.
	x := q
	x.Name = "events"
	if _, err := h.fab.CreateExchange(ctx, x, Direct); err != nil {
		t.Fatal(err)
	}
	if _, err := h.fab.Bind(ctx, x, QueueBinding{Queue: q.Name, Key: "k"}); err != nil {
		t.Fatal(err)
	}
	synced("native exchange publish", func() error {
		ack, err := js.Publish(ctx, q.Application+".x.events.k", []byte("routed"))
		if err == nil && ack.Stream != x.exchangeStream() {
			return fmt.Errorf("acknowledged by %q, want the exchange's stream", ack.Stream)
		}
		return err
	})
	// An exchange named q, and a routing key with a q token, are exchange publishes.
	xq := q
	xq.Name = "q"
	if _, err := h.fab.CreateExchange(ctx, xq, Fanout); err != nil {
		t.Fatal(err)
	}
	if ack, err := js.Publish(ctx, q.Application+".x.q.k", []byte("to q")); err != nil || ack.Stream != xq.exchangeStream() {
		t.Fatalf("publish to the exchange named q: %+v %v", ack, err)
	}
	if ack, err := js.Publish(ctx, q.Application+".x.events.eu.q.orders", []byte("unroutable")); err != nil || ack.Stream != x.exchangeStream() {
		t.Fatalf("exchange publish with a q token in its routing key: %+v %v", ack, err)
	}
	if _, err := js.Publish(ctx, q.Application+".x.nope.k", []byte("n")); err == nil || !strings.Contains(err.Error(), "stream not found") {
		t.Fatalf("native publish to a missing exchange: %v", err)
	}
	waitFor(t, "the exchange to route the native publish", func() bool {
		st, err := h.fab.Queue(ctx, q)
		return err == nil && st.Stats.Depth == 5+3+2+1
	})
	ds, err := h.fab.Consume(ctx, q, 3, 2*time.Second)
	if err != nil || len(ds) == 0 {
		t.Fatalf("consume: %d, %v", len(ds), err)
	}
	synced("ack", func() error { return h.fab.Settle(ctx, q, []string{ds[0].AckToken}, Ack, 0) })
}
