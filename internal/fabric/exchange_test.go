package fabric

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/penstock/penstock/internal/config"
)

func TestTopicMatchTable(t *testing.T) {
	cases := []struct {
		pattern, key string
		want         bool
	}{
		{"a.b.c", "a.b.c", true},
		{"a.*.c", "a.b.c", true},
		{"a.*.c", "a.c", false},
		{"a.#", "a", true},
		{"a.#", "a.b.c", true},
		{"#.c", "c", true},
		{"#.c", "a.b.c", true},
		{"a.#.c", "a.c", true},
		{"a.#.c", "a.x.y.c", true},
		{"a.#.c", "a.x.y.d", false},
		{"#", "", true},
		{"#", "anything.at.all", true},
		{"*", "", false},
		{"*", "one", true},
		{"*", "one.two", false},
		{"*.#.*", "a", false},
		{"*.#.*", "a.b", true},
	}
	for _, c := range cases {
		var p, k []string
		if c.pattern != "" {
			p = strings.Split(c.pattern, ".")
		}
		if c.key != "" {
			k = strings.Split(c.key, ".")
		}
		if got := topicMatch(p, k); got != c.want {
			t.Errorf("%q vs %q: %v, want %v", c.pattern, c.key, got, c.want)
		}
	}
}

func TestExchangeRoutingEndToEnd(t *testing.T) {
	h := open(t, nil)
	for _, q := range []string{"eu", "us", "all", "audit"} {
		h.queue("acme", q, QueueSpec{})
	}
	app := Ref{Tenant: "acme", Environment: "production", Application: "orders"}
	ref := func(n string) Ref { r := app; r.Name = n; return r }

	if _, err := h.fab.CreateExchange(ctx, ref("direct"), Direct); err != nil {
		t.Fatal(err)
	}
	if _, err := h.fab.CreateExchange(ctx, ref("fan"), Fanout); err != nil {
		t.Fatal(err)
	}
	if _, err := h.fab.CreateExchange(ctx, ref("topics"), Topic); err != nil {
		t.Fatal(err)
	}
	binds := []struct {
		x string
		b QueueBinding
	}{
		{"direct", QueueBinding{Queue: "eu", Key: "eu"}},
		{"direct", QueueBinding{Queue: "us", Key: "us"}},
		{"fan", QueueBinding{Queue: "eu"}},
		{"fan", QueueBinding{Queue: "us"}},
		{"fan", QueueBinding{Queue: "all"}},
		{"topics", QueueBinding{Queue: "eu", Key: "order.eu.*"}},
		{"topics", QueueBinding{Queue: "all", Key: "order.#"}},
		{"topics", QueueBinding{Queue: "audit", Key: "#.refund"}},
	}
	for _, b := range binds {
		if _, err := h.fab.Bind(ctx, ref(b.x), b.b); err != nil {
			t.Fatalf("bind %+v: %v", b, err)
		}
	}
	if _, err := h.fab.Bind(ctx, ref("fan"), QueueBinding{Queue: "eu", Key: "x"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("fanout with a key: %v", err)
	}
	if _, err := h.fab.Bind(ctx, ref("direct"), QueueBinding{Queue: "nope", Key: "x"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("bind to a missing queue: %v", err)
	}

	pub := func(x, key, data string) {
		t.Helper()
		if _, err := h.fab.Publish(ctx, Target{Ref: ref(x), Exchange: true}, []Message{{RoutingKey: key, Data: []byte(data)}}); err != nil {
			t.Fatal(err)
		}
	}
	pub("direct", "eu", "d-eu")
	pub("direct", "us", "d-us")
	pub("direct", "asia", "d-asia") // unroutable
	pub("fan", "", "f")
	pub("topics", "order.eu.new", "t-eu-new")
	pub("topics", "order.us.refund", "t-us-refund")
	pub("topics", "order", "t-order")
	pub("topics", "payment.refund", "t-payment-refund")

	want := map[string][]string{
		"eu":    {"d-eu", "f", "t-eu-new"},
		"us":    {"d-us", "f"},
		"all":   {"f", "t-eu-new", "t-order", "t-us-refund"},
		"audit": {"t-payment-refund", "t-us-refund"},
	}
	for q, w := range want {
		var got []string
		waitFor(t, "queue "+q, func() bool {
			ds, err := h.fab.Consume(ctx, ref(q), 100, 100*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range ds {
				got = append(got, string(d.Data))
				if d.Exchange == "" {
					t.Fatalf("delivery without its exchange: %+v", d)
				}
				if err := h.fab.Settle(ctx, ref(q), []string{d.AckToken}, Ack, 0); err != nil {
					t.Fatal(err)
				}
			}
			return len(got) >= len(w)
		})
		slices.Sort(got)
		if !slices.Equal(got, w) {
			t.Errorf("queue %s got %v, want %v", q, got, w)
		}
	}
	// Unbinding stops the routing; deleting a queue removes its bindings.
	if _, err := h.fab.Unbind(ctx, ref("direct"), QueueBinding{Queue: "eu", Key: "eu"}); err != nil {
		t.Fatal(err)
	}
	if err := h.fab.DeleteQueue(ctx, ref("us")); err != nil {
		t.Fatal(err)
	}
	x, err := h.fab.GetExchange(ctx, ref("fan"))
	if err != nil || len(x.Bindings) != 2 || slices.ContainsFunc(x.Bindings, func(b QueueBinding) bool { return b.Queue == "us" }) {
		t.Fatalf("fan after deleting us: %+v %v", x, err)
	}
	x, _ = h.fab.GetExchange(ctx, ref("direct"))
	if len(x.Bindings) != 0 {
		t.Fatalf("direct bindings: %+v", x.Bindings)
	}
	if err := h.fab.DeleteExchange(ctx, ref("topics")); err != nil {
		t.Fatal(err)
	}
	xs, err := h.fab.Exchanges(ctx, app)
	if err != nil || len(xs) != 2 {
		t.Fatalf("exchanges: %+v %v", xs, err)
	}
}

// An application may be named pub, and its exchange q, with routing key k: its messages go to
// the queues bound to it, and never into application x's queue k (the fabric's own subjects
// for native publishes once began with "pub.", which such a message's subject matched). Every
// publish is answered as stored.
func TestAnApplicationNamedPubReachesOnlyItsOwnQueues(t *testing.T) {
	h := open(t, nil)
	other := Ref{Tenant: "acme", Environment: "production", Application: "x", Name: "k"}
	jobs := Ref{Tenant: "acme", Environment: "production", Application: "pub", Name: "jobs"}
	for _, r := range []Ref{other, jobs} {
		if _, err := h.id.CreateApp(ctx, r.Tenant, r.Environment, r.Application); err != nil {
			t.Fatal(err)
		}
		if _, err := h.fab.CreateQueue(ctx, r, QueueSpec{}); err != nil {
			t.Fatal(err)
		}
	}
	x := Ref{Tenant: "acme", Environment: "production", Application: "pub", Name: "q"}
	if _, err := h.fab.CreateExchange(ctx, x, Direct); err != nil {
		t.Fatal(err)
	}
	if _, err := h.fab.Bind(ctx, x, QueueBinding{Queue: "jobs", Key: "k"}); err != nil {
		t.Fatal(err)
	}
	const n = 100
	for i := range n {
		if _, err := h.fab.Publish(ctx, Target{Ref: x, Exchange: true}, []Message{{Data: []byte("m"), RoutingKey: "k"}}); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	waitFor(t, "the exchange's messages in pub/jobs", func() bool {
		q, err := h.fab.Queue(ctx, jobs)
		return err == nil && q.Stats.Depth == n
	})
	if q, err := h.fab.Queue(ctx, other); err != nil || q.Stats.Depth != 0 {
		t.Fatalf("application x's queue k holds %d messages of application pub (%v)", q.Stats.Depth, err)
	}
}

// Two fabrics on one engine stand for two nodes. An exchange made on one and deleted on the
// other before that one took up the tenant-environment's exchanges is gone for both, and both
// start again: an exchange record whose stream is gone never stops a start.
func TestAnExchangeDeletedOnAnotherNodeIsGone(t *testing.T) {
	h := open(t, nil)
	q := h.queue("acme", "jobs", QueueSpec{})
	other, err := Open(ctx, Options{Engine: h.stack.Engine, Identity: h.id, Audit: h.audit, Config: config.Default().Fabric,
		Registry: prometheus.NewRegistry(), SweepInterval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	x := q
	x.Name = "events"
	if _, err := h.fab.CreateExchange(ctx, x, Fanout); err != nil {
		t.Fatal(err)
	}
	if err := other.DeleteExchange(ctx, x); err != nil {
		t.Fatalf("delete on the other node: %v", err)
	}
	for i, f := range []*Service{h.fab, other} {
		if _, err := f.GetExchange(ctx, x); !errors.Is(err, ErrNotFound) {
			t.Fatalf("node %d: the deleted exchange: %v", i+1, err)
		}
	}
	if _, err := other.CreateExchange(ctx, x, Fanout); err != nil {
		t.Fatalf("the exchange made again: %v", err)
	}
	// A record left without its stream (a crash between the two) is skipped, not fatal.
	acc, err := h.stack.Engine.Account(ctx, AccountName("acme", "production"))
	if err != nil {
		t.Fatal(err)
	}
	if err := acc.JetStream().DeleteStream(ctx, x.exchangeStream()); err != nil {
		t.Fatal(err)
	}
	other.Close()
	again, err := Open(ctx, Options{Engine: h.stack.Engine, Identity: h.id, Audit: h.audit, Config: config.Default().Fabric,
		Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatalf("a start with an exchange record whose stream is gone: %v", err)
	}
	again.Close()
}

// An exchange made on one node after another took the exchanges up is routed by the other
// too once it sweeps the tenant-environment: with its maker down, its messages still reach
// their queues.
func TestAnotherNodeRoutesAnExchangeOnceItSweeps(t *testing.T) {
	h := open(t, nil)
	q := h.queue("acme", "jobs", QueueSpec{})
	other, err := Open(ctx, Options{Engine: h.stack.Engine, Identity: h.id, Audit: h.audit, Config: config.Default().Fabric,
		Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	first, second := q, q
	first.Name, second.Name = "first", "second"
	if _, err := h.fab.CreateExchange(ctx, first, Fanout); err != nil {
		t.Fatal(err)
	}
	if _, err := other.GetExchange(ctx, first); err != nil { // takes the exchanges up
		t.Fatal(err)
	}
	if _, err := h.fab.CreateExchange(ctx, second, Fanout); err != nil {
		t.Fatal(err)
	}
	if _, err := h.fab.Bind(ctx, second, QueueBinding{Queue: "jobs"}); err != nil {
		t.Fatal(err)
	}
	ta, err := other.account(ctx, "acme", "production")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the other node to follow the binding", func() bool {
		ta.mu.RLock()
		defer ta.mu.RUnlock()
		return len(ta.exchanges["orders/second"].Bindings) == 1
	})
	other.sweepDead(ctx, ta)
	h.fab.Close() // the exchange's maker is down
	if _, err := other.Publish(ctx, Target{Ref: second, Exchange: true}, []Message{{Data: []byte("routed")}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the message routed by the other node", func() bool {
		st, err := other.Queue(ctx, q)
		return err == nil && st.Stats.Depth == 1
	})
}
