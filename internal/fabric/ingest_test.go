package fabric

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	dto "github.com/prometheus/client_model/go"

	"github.com/penstock/penstock/internal/authz"
	"github.com/penstock/penstock/internal/config"
)

// Native NATS publishes to a queue take the fabric's group commit (sync "always"): many
// publishers' messages share one fsync (a group sync of the engine's filesystem, or with
// engine.group_sync off an atomic batch), each is acknowledged with the engine's own
// acknowledgement once it is durable, an asynchronous publisher's messages are stored in the
// order it sent them, and ids, limits, missing queues and the client's own atomic batches
// answer as the engine would.
func TestNativePublishesTakeTheGroupCommit(t *testing.T) {
	for _, group := range []bool{true, false} {
		t.Run(fmt.Sprintf("group_sync=%v", group), func(t *testing.T) {
			ecfg := config.Default().Engine
			ecfg.GroupSync = group
			h := openEngine(t, ecfg, nil)
			if want := group && runtime.GOOS == "linux"; h.stack.Engine.GroupSync() != want || h.stack.Engine.Durability() != "always" {
				t.Fatalf("engine group sync %v, durability %q; want %v, always", h.stack.Engine.GroupSync(), h.stack.Engine.Durability(), want)
			}
			nativeGroupCommit(t, h)
		})
	}
}

func nativeGroupCommit(t *testing.T, h *harness) {
	syncsBefore := h.stack.Engine.Syncs()
	q := h.queue("acme", "jobs", QueueSpec{})
	small := h.queue("acme", "small", QueueSpec{MaxMessages: 3})
	key, keyID := h.key("acme", authz.Developer)
	c, err := h.dialNATS("acme/production", key, keyID, false)
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.NewWithAPIPrefix(c.nc, APIPrefix, jetstream.WithPublishAsyncMaxPending(1024))

	// One asynchronous publisher and eight synchronous ones at once.
	const async, syncers, each = 3000, 8, 25
	futures := make([]jetstream.PubAckFuture, async)
	var wg sync.WaitGroup
	errs := make(chan error, syncers)
	for w := range syncers {
		wg.Go(func() {
			sc, err := h.dialNATS("acme/production", key, keyID, false)
			if err != nil {
				errs <- err
				return
			}
			defer sc.nc.Close()
			sjs, _ := jetstream.NewWithAPIPrefix(sc.nc, APIPrefix)
			// A minute, not the client's default 5 s: behind 3,000 asynchronous publishes, each
			// commit fsynced, a busy machine takes longer than that, which is not what is tested.
			pctx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			for i := range each {
				if _, err := sjs.Publish(pctx, q.queueSubject(), fmt.Appendf(nil, "s%d-%d", w, i)); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	for i := range async {
		// Every other message has an id: with group sync those go as plain publishes while the
		// others may be gathered into batches when many wait; the order must hold across both.
		opts := []jetstream.PublishOpt{jetstream.WithStallWait(30 * time.Second)}
		if i%2 == 1 {
			opts = append(opts, jetstream.WithMsgID("a-"+strconv.Itoa(i)))
		}
		f, err := js.PublishAsync(q.queueSubject(), []byte(strconv.Itoa(i)), opts...)
		if err != nil {
			t.Fatal(err)
		}
		futures[i] = f
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("synchronous native publisher: %v", err)
	}
	var last uint64
	seqs := make([]uint64, async)
	for i, f := range futures {
		select {
		case ack := <-f.Ok():
			if ack.Stream != q.queueStream() || ack.Sequence <= last {
				t.Fatalf("asynchronous publish %d acknowledged as %+v after sequence %d: not in the order sent", i, ack, last)
			}
			last, seqs[i] = ack.Sequence, ack.Sequence
		case err := <-f.Err():
			t.Fatalf("asynchronous publish %d: %v", i, err)
		case <-time.After(30 * time.Second):
			t.Fatalf("asynchronous publish %d not acknowledged", i)
		}
	}
	total := async + syncers*each
	if st, _ := h.fab.Queue(ctx, q); st.Stats.Depth != uint64(total) {
		t.Fatalf("depth %d, want %d", st.Stats.Depth, total)
	}
	if h.stack.Engine.GroupSync() {
		// Every message was acknowledged after a group sync; the publishers shared them.
		if n := h.stack.Engine.Syncs() - syncsBefore; n == 0 || n >= uint64(total) {
			t.Fatalf("%d messages made durable by %d group syncs: not shared", total, n)
		}
		var m dto.Metric
		_ = h.fab.m.commitSize.Write(&m)
		t.Logf("%d messages in %d engine commits", total, m.GetHistogram().GetSampleCount())
	} else {
		var m dto.Metric
		if err := h.fab.m.commitSize.Write(&m); err != nil {
			t.Fatal(err)
		}
		if n := m.GetHistogram().GetSampleCount(); n == 0 || n >= uint64(total) || uint64(m.GetHistogram().GetSampleSum()) != uint64(total) {
			t.Fatalf("%d messages in %d commits (sum %v): not gathered", total, n, m.GetHistogram().GetSampleSum())
		}
	}

	// An id stored before is a duplicate, acknowledged with the sequence it is stored at.
	ack, err := js.Publish(ctx, q.queueSubject(), []byte("again"), jetstream.WithMsgID("a-7"))
	if err != nil || !ack.Duplicate || ack.Sequence != seqs[7] {
		t.Fatalf("duplicate id: %+v %v", ack, err)
	}
	// A queue that is not there answers at once, as the engine's "stream not found".
	start := time.Now()
	if _, err := js.Publish(ctx, "orders.q.nope", []byte("x")); err == nil || !strings.Contains(err.Error(), "stream not found") || time.Since(start) > 4*time.Second {
		t.Fatalf("publish to a missing queue: %v after %s", err, time.Since(start))
	}
	// A full queue refuses with the engine's limit error; what it holds stays.
	for i := range 3 {
		if _, err := js.Publish(ctx, small.queueSubject(), []byte(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := js.Publish(ctx, small.queueSubject(), []byte("one too many")); err == nil || !strings.Contains(err.Error(), "maximum messages") {
		t.Fatalf("publish to a full queue: %v", err)
	}
	// The client's own atomic batch goes to the engine as it is: all three stored at once.
	id := "client-batch"
	for i := 1; i <= 3; i++ {
		msg := nats.NewMsg(q.queueSubject())
		msg.Data = fmt.Appendf(nil, "batch %d", i)
		msg.Header.Set("Nats-Batch-Id", id)
		msg.Header.Set("Nats-Batch-Sequence", strconv.Itoa(i))
		if i < 3 {
			if err := c.nc.PublishMsg(msg); err != nil {
				t.Fatal(err)
			}
			continue
		}
		msg.Header.Set("Nats-Batch-Commit", "1")
		resp, err := c.nc.RequestMsg(msg, 10*time.Second)
		if err != nil || !strings.Contains(string(resp.Data), `"batch":"client-batch","count":3`) {
			t.Fatalf("client atomic batch: %v %s", err, respData(resp))
		}
	}
	if st, _ := h.fab.Queue(ctx, q); st.Stats.Depth != uint64(total+3) {
		t.Fatalf("depth %d after the client's batch, want %d", st.Stats.Depth, total+3)
	}
	// Stored as the client sent them: the engine's note of the request's origin (the client's
	// internal account) is not kept.
	ds, err := h.fab.Consume(ctx, q, 50, time.Second)
	if err != nil || len(ds) == 0 {
		t.Fatalf("consume: %d %v", len(ds), err)
	}
	for _, d := range ds {
		for k := range d.Headers {
			if strings.EqualFold(k, "Nats-Request-Info") {
				t.Fatalf("message %d stored with %s: %v", d.Seq, k, d.Headers)
			}
		}
	}
}

func respData(m *nats.Msg) string {
	if m == nil {
		return ""
	}
	return string(m.Data)
}

// An HTTPS message that fits the engine's max_payload alone but not with the batch headers is
// committed on its own; in a request of several (stored all or none, so in one batch) it is
// refused by name, and nothing of the request is stored.
func TestHTTPSNearMaxPayload(t *testing.T) {
	h := open(t, func(c *config.Fabric) { c.MaxPayload = 0 })
	q := h.queue("acme", "jobs", QueueSpec{})
	ta, err := h.fab.account(ctx, "acme", "production")
	if err != nil {
		t.Fatal(err)
	}
	big := make([]byte, ta.acc.Conn().MaxPayload()-64)
	if rec := publish(t, h.fab, q, Message{ID: "big", Data: big}); len(rec) != 1 || rec[0].Seq != 1 {
		t.Fatalf("a message near max_payload alone: %+v", rec)
	}
	_, err = h.fab.Publish(ctx, Target{Ref: q}, []Message{{Data: []byte("small")}, {Data: big}})
	if !errors.Is(err, ErrPayloadLimit) || !strings.Contains(err.Error(), "messages[1]") {
		t.Fatalf("a request of two with one near max_payload: %v", err)
	}
	if st, _ := h.fab.Queue(ctx, q); st.Stats.Depth != 1 {
		t.Fatalf("depth %d, want 1", st.Stats.Depth)
	}
}
