package app

import (
	"encoding/base64"
	"testing"

	"github.com/penstock/penstock/internal/config"
)

// The HTTPS API end to end: queue, publish (text, binary, idempotent), long-poll consume,
// ack, dead letters, an exchange, the publish-rate quota, and the audit trail of management
// calls but not of each message.
func TestFabricOverHTTPS(t *testing.T) {
	ta := startApp(t, func(c *config.Config) {
		c.API.Limits.RequestRate, c.API.Limits.RequestBurst = 1e6, 1e6
		c.API.Limits.ConnRate, c.API.Limits.ConnBurst = 1e6, 1e6
		c.Fabric.PublishRate = 50
	})
	admin := ta.adminSession(t)
	must := func(status int, want int, raw string) {
		t.Helper()
		if status != want {
			t.Fatalf("status %d, want %d: %s", status, want, raw)
		}
	}
	st, _, raw := ta.call(t, "POST", "/v1/tenants", admin, map[string]string{"name": "acme"})
	must(st, 201, raw)
	st, _, raw = ta.call(t, "POST", "/v1/tenants/acme/environments/production/applications", admin, map[string]string{"name": "shop"})
	must(st, 201, raw)
	base := "/v1/tenants/acme/environments/production/applications/shop"
	st, out, raw := ta.call(t, "POST", "/v1/apikeys", admin, map[string]string{"role": "developer", "scope": "acme/production/shop"})
	must(st, 201, raw)
	key := out["key"].(string)

	st, _, raw = ta.call(t, "POST", base+"/queues", key, map[string]any{"name": "orders", "max_deliveries": 3, "ack_wait": "5s"})
	must(st, 201, raw)
	st, _, raw = ta.call(t, "POST", base+"/queues", key, map[string]any{"name": "orders"})
	must(st, 409, raw)
	st, body, raw := ta.call(t, "POST", base+"/queues", key, map[string]any{"name": "bad", "ack_wait": "soon"})
	if st != 422 || body["code"] != "invalid_request" {
		t.Fatalf("bad duration: %d %s", st, raw)
	}

	bin := []byte{0, 1, 2, 0xff}
	st, out, raw = ta.call(t, "POST", base+"/queues/orders/messages", key, map[string]any{"messages": []map[string]any{
		{"id": "o-1", "data": "hello", "headers": map[string]string{"Trace": "t1"}},
		{"data_base64": base64.StdEncoding.EncodeToString(bin)},
	}})
	must(st, 200, raw)
	if rec := out["receipts"].([]any); len(rec) != 2 {
		t.Fatalf("receipts %s", raw)
	}
	st, out, raw = ta.call(t, "POST", base+"/queues/orders/messages", key, map[string]any{"messages": []map[string]any{{"id": "o-1", "data": "hello"}}})
	must(st, 200, raw)
	if out["receipts"].([]any)[0].(map[string]any)["duplicate"] != true {
		t.Fatalf("repeated id not reported as duplicate: %s", raw)
	}
	st, _, raw = ta.call(t, "POST", base+"/queues/orders/messages", key, map[string]any{"messages": []map[string]any{{"data": "x", "headers": map[string]string{"Nats-Msg-Id": "sneaky"}}}})
	must(st, 422, raw)

	st, out, raw = ta.call(t, "POST", base+"/queues/orders/consume", key, map[string]any{"max": 10, "wait_ms": 1000})
	must(st, 200, raw)
	msgs := out["messages"].([]any)
	if len(msgs) != 2 {
		t.Fatalf("consume: %s", raw)
	}
	m0, m1 := msgs[0].(map[string]any), msgs[1].(map[string]any)
	if m0["data"] != "hello" || m0["id"] != "o-1" || m0["headers"].(map[string]any)["Trace"] != "t1" || m1["data_base64"] != base64.StdEncoding.EncodeToString(bin) {
		t.Fatalf("deliveries: %s", raw)
	}
	st, _, raw = ta.call(t, "POST", base+"/queues/orders/ack", key, map[string]any{"tokens": []string{m0["ack_token"].(string)}})
	must(st, 204, raw)
	st, _, raw = ta.call(t, "POST", base+"/queues/orders/reject", key, map[string]any{"tokens": []string{m1["ack_token"].(string)}})
	must(st, 204, raw)
	st, out, raw = ta.call(t, "GET", base+"/queues/orders", key, nil)
	must(st, 200, raw)
	stats := out["stats"].(map[string]any)
	if stats["depth"].(float64) != 0 || stats["dead_letters"].(float64) != 1 {
		t.Fatalf("stats: %s", raw)
	}
	st, out, raw = ta.call(t, "GET", base+"/queues/orders/dead-letters", key, nil)
	must(st, 200, raw)
	if dl := out["dead_letters"].([]any); len(dl) != 1 || dl[0].(map[string]any)["reason"] != "rejected" {
		t.Fatalf("dead letters: %s", raw)
	}
	st, out, raw = ta.call(t, "POST", base+"/queues/orders/dead-letters/replay", key, map[string]any{})
	must(st, 200, raw)
	if out["count"].(float64) != 1 {
		t.Fatalf("replay: %s", raw)
	}

	// An exchange routes to the queue.
	st, _, raw = ta.call(t, "POST", base+"/exchanges", key, map[string]any{"name": "events", "type": "topic"})
	must(st, 201, raw)
	st, _, raw = ta.call(t, "POST", base+"/exchanges/events/bind", key, map[string]any{"queue": "orders", "key": "order.#"})
	must(st, 200, raw)
	st, _, raw = ta.call(t, "POST", base+"/exchanges/events/messages", key, map[string]any{"messages": []map[string]any{{"routing_key": "order.created", "data": "routed"}}})
	must(st, 200, raw)
	seen := map[string]bool{}
	for range 20 {
		_, out, _ = ta.call(t, "POST", base+"/queues/orders/consume", key, map[string]any{"max": 10, "wait_ms": 500})
		for _, m := range out["messages"].([]any) {
			mm := m.(map[string]any)
			seen[fmtString(mm["data"])] = true
			if mm["data"] == "routed" && mm["routing_key"] != "order.created" {
				t.Fatalf("routed message: %v", mm)
			}
		}
		if seen["routed"] {
			break
		}
	}
	if !seen["routed"] {
		t.Fatalf("routed message never arrived: %v", seen)
	}

	// The publish-rate quota (50 messages/s): 429 with a stable code. Requests of 40 messages
	// spend it however slowly the machine answers.
	forty := make([]map[string]any, 40)
	for i := range forty {
		forty[i] = map[string]any{"data": "x"}
	}
	var last int
	for range 10 {
		last, body, raw = ta.call(t, "POST", base+"/queues/orders/messages", key, map[string]any{"messages": forty})
		if last != 200 {
			break
		}
	}
	if last != 429 || body["code"] != "quota.publish_rate" {
		t.Fatalf("rate quota: %d %s", last, raw)
	}

	// Management is audited; single messages are not.
	ev := ta.auditEvents(t, admin, "tenant=acme&limit=500")
	var created, published, quota int
	for _, e := range ev.Events {
		switch {
		case e.Details["operation"] == "queue-create" && e.Result == "ok":
			created++
		case e.Details["operation"] == "queue-publish":
			published++
		case e.Action == "fabric.quota":
			quota++
		}
	}
	if created != 1 || published != 0 || quota != 1 {
		t.Fatalf("audit: %d queue-create ok, %d publish events, %d quota events", created, published, quota)
	}
}

func fmtString(v any) string {
	s, _ := v.(string)
	return s
}
