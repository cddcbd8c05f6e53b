package fabric

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
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
