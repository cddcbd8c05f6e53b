package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// fabricEnv opens the native listeners and lifts the per-IP limits for load from one address.
var fabricEnv = []string{
	"PENSTOCK_FABRIC_NATS_LISTEN=127.0.0.1:0", "PENSTOCK_FABRIC_MQTT_LISTEN=127.0.0.1:0", "PENSTOCK_FABRIC_WEBSOCKET_LISTEN=127.0.0.1:0",
	"PENSTOCK_API_LIMITS_REQUEST_RATE=1000000", "PENSTOCK_API_LIMITS_REQUEST_BURST=1000000",
	"PENSTOCK_API_LIMITS_CONN_RATE=1000000", "PENSTOCK_API_LIMITS_CONN_BURST=1000000",
}

// setupQueue creates tenant acme, application shop, queue orders and a developer key for it
// with the CLI, and returns the key.
func setupQueue(t *testing.T, p *proc) string {
	t.Helper()
	p.loginAsAdmin()
	steps := [][]string{
		{"tenant", "create", "acme"},
		{"app", "create", "--env", "acme/production", "shop"},
		{"queue", "create", "--app", "acme/production/shop", "orders", "--max-deliveries", "3", "--ack-wait", "10s"},
	}
	for _, s := range steps {
		if code, out := p.cli("", s...); code != 0 {
			t.Fatalf("penstock %s: %d\n%s", strings.Join(s, " "), code, out)
		}
	}
	code, out := p.cli("", "apikey", "create", "--role", "developer", "--scope", "acme/production/shop")
	var created struct {
		Key string `json:"key"`
	}
	if err := firstJSON(out, &created); code != 0 || err != nil {
		t.Fatalf("apikey create: %d %v\n%s", code, err, out)
	}
	return created.Key
}

func (p *proc) post(c *http.Client, key, path string, body any) (int, []byte, error) {
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest("POST", p.api+path, bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(resp.Body)
	return resp.StatusCode, buf.Bytes(), nil
}

// The queue commands, then kill -9 in the middle of a publish and consume load over HTTPS and
// native NATS: every message whose publish was acknowledged is, after a restart, either one a
// consumer acknowledged before the kill or still in the queue. Every id is counted.
func TestFabricKill9LosesNoAcknowledgedMessage(t *testing.T) {
	dir := t.TempDir()
	p := serveEnv(t, dir, fabricEnv)
	key := setupQueue(t, p)
	app := "acme/production/shop"
	for _, s := range []struct {
		args []string
		want string
	}{
		{[]string{"queue", "publish", "--app", app, "orders", "--data", "hello", "--id", "cli-1", "--header", "Kind=greeting"}, `"seq": 1`},
		{[]string{"queue", "stats", "--app", app, "orders"}, `"depth": 1`},
		{[]string{"queue", "consume", "--app", app, "orders", "--max", "5", "--wait", "1s"}, `"data": "hello"`},
		{[]string{"exchange", "create", "--app", app, "events", "--type", "topic"}, `"type": "topic"`},
		{[]string{"exchange", "bind", "--app", app, "events", "--queue", "orders", "--key", "order.*"}, `"queue": "orders"`},
		{[]string{"queue", "dead-letters", "list", "--app", app, "orders"}, `"dead_letters": []`},
		{[]string{"queue", "create", "--app", app, "Bad_Name"}, `queue name "Bad_Name" is not valid`},
	} {
		_, out := p.cli("", s.args...)
		if !strings.Contains(out, s.want) {
			t.Fatalf("penstock %s: want %q:\n%s", strings.Join(s.args, " "), s.want, out)
		}
	}
	// Settle the CLI's delivery so the load starts from an empty queue.
	_, out := p.cli("", "queue", "consume", "--app", app, "orders", "--max", "5", "--wait", "11s")
	if tok := between(out, `"ack_token": "`, `"`); tok != "" {
		if code, out := p.cli("", "queue", "ack", "--app", app, "orders", tok); code != 0 {
			t.Fatalf("ack: %s", out)
		}
	}

	base := "/v1/tenants/acme/environments/production/applications/shop/queues/orders"
	c := p.client()
	var mu sync.Mutex
	published := map[string]bool{} // acknowledged publishes
	consumed := map[string]bool{}  // acknowledged consumptions
	unsure := map[string]bool{}    // in an ack the kill left unanswered: it may have taken effect
	seqOf := map[string]uint64{}   // stream sequences the engine acknowledged to the native publisher
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				var msgs []map[string]string
				var ids []string
				for j := range 1 + i%5 {
					id := fmt.Sprintf("h%d-%d-%d", w, i, j)
					ids = append(ids, id)
					msgs = append(msgs, map[string]string{"id": id, "data": id})
				}
				st, _, err := p.post(c, key, base+"/messages", map[string]any{"messages": msgs})
				if err != nil || st != 200 {
					return // the server is gone
				}
				mu.Lock()
				for _, id := range ids {
					published[id] = true
				}
				mu.Unlock()
			}
		})
	}
	// A native NATS publisher with the same key: its acknowledgements come from the engine.
	nc, err := nats.Connect(p.nats, nats.UserInfo("acme/production", key),
		nats.Secure(&tls.Config{RootCAs: p.caPool(), ServerName: "localhost"}), nats.MaxReconnects(0))
	if err != nil {
		t.Fatalf("native connect to %s: %v", p.nats, err)
	}
	js, _ := jetstream.New(nc)
	wg.Go(func() {
		for i := 0; ; i++ {
			id := fmt.Sprintf("n-%d", i)
			ack, err := js.Publish(t.Context(), "shop.q.orders", []byte(id), jetstream.WithMsgID(id))
			if err != nil {
				return
			}
			mu.Lock()
			published[id] = true
			seqOf[id] = ack.Sequence
			mu.Unlock()
		}
	})
	// An asynchronous native publisher, up to 256 unacknowledged: its messages are gathered
	// into the fabric's atomic batches with other publishers', and must still be stored in
	// the order it sent them.
	anc, err := nats.Connect(p.nats, nats.UserInfo("acme/production", key),
		nats.Secure(&tls.Config{RootCAs: p.caPool(), ServerName: "localhost"}), nats.MaxReconnects(0))
	if err != nil {
		t.Fatalf("native connect to %s: %v", p.nats, err)
	}
	ajs, _ := jetstream.New(anc, jetstream.WithPublishAsyncMaxPending(256))
	var asyncOrder []string // ids in the order they were sent
	wg.Go(func() {
		type sent struct {
			id string
			f  jetstream.PubAckFuture
		}
		window := make(chan sent, 256)
		go func() {
			defer close(window)
			for i := 0; ; i++ {
				id := fmt.Sprintf("a-%d", i)
				f, err := ajs.PublishAsync("shop.q.orders", []byte(id), jetstream.WithMsgID(id))
				if err != nil {
					return
				}
				mu.Lock()
				asyncOrder = append(asyncOrder, id)
				mu.Unlock()
				select {
				case window <- sent{id, f}:
				case <-stop:
					return
				}
			}
		}()
		for s := range window {
			select {
			case ack := <-s.f.Ok():
				mu.Lock()
				published[s.id] = true
				seqOf[s.id] = ack.Sequence
				mu.Unlock()
			case <-s.f.Err():
			case <-stop:
				return
			}
		}
	})
	var ackedBeforeKill map[string]bool // set at the kill: acks answered 204 before it
	var redelivered []string            // of those, delivered again after the restart
	consume := func(c *http.Client) int {
		st, body, err := p.post(c, key, base+"/consume", map[string]any{"max": 100, "wait_ms": 200})
		if err != nil || st != 200 {
			return -1
		}
		var out struct {
			Messages []struct {
				AckToken string `json:"ack_token"`
				Data     string `json:"data"`
			} `json:"messages"`
		}
		_ = json.Unmarshal(body, &out)
		var tokens []string
		mu.Lock()
		for _, m := range out.Messages {
			if ackedBeforeKill[m.Data] {
				redelivered = append(redelivered, m.Data)
			}
		}
		mu.Unlock()
		for _, m := range out.Messages {
			tokens = append(tokens, m.AckToken)
		}
		if len(tokens) == 0 {
			return 0
		}
		if st, _, err := p.post(c, key, base+"/ack", map[string]any{"tokens": tokens}); err != nil || st != 204 {
			mu.Lock()
			for _, m := range out.Messages {
				unsure[m.Data] = true
			}
			mu.Unlock()
			return -1
		}
		mu.Lock()
		for _, m := range out.Messages {
			consumed[m.Data] = true
		}
		mu.Unlock()
		return len(tokens)
	}
	wg.Go(func() {
		for consume(c) >= 0 {
		}
	})
	// Kill once the load has done enough of each, however slow the machine.
	waitUntil(t, 180*time.Second, "300 acknowledged publishes (100 asynchronous native) and 100 acknowledged consumptions", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(published) >= 300 && len(consumed) >= 100 && seqOf["a-99"] != 0
	})
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-p.exited
	close(stop)
	nc.Close()
	anc.Close()
	wg.Wait()
	mu.Lock()
	np, nc0 := len(published), len(consumed)
	ackedBeforeKill = maps.Clone(consumed)
	mu.Unlock()

	// Restart and drain what is left, until the queue is empty: deliveries in flight at the
	// kill come back when their ack wait (10s) runs out.
	p = serveEnv(t, dir, fabricEnv)
	c = p.client()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if consume(c) < 0 {
			t.Fatal("consume after restart failed")
		}
		req, _ := http.NewRequest("GET", p.api+base, nil)
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var q struct {
			Stats struct {
				Depth int `json:"depth"`
			} `json:"stats"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&q)
		resp.Body.Close()
		if q.Stats.Depth == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d messages still in the queue", q.Stats.Depth)
		}
	}
	// No message here is delivered more than twice (once before the kill, once after its ack
	// wait), so none may reach the dead-letter queue (max 3 deliveries).
	req, _ := http.NewRequest("GET", p.api+base+"/dead-letters", nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var dead struct {
		DeadLetters []struct {
			Data string `json:"data"`
		} `json:"dead_letters"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&dead)
	resp.Body.Close()
	for _, d := range dead.DeadLetters {
		t.Errorf("message %s was dead-lettered (unsure ack before the kill: %v)", d.Data, unsure[d.Data])
	}
	// The asynchronous publisher's acknowledged messages are in the queue in the order it
	// sent them.
	var last uint64
	for _, id := range asyncOrder {
		seq, ok := seqOf[id]
		if !ok {
			continue
		}
		if seq <= last {
			t.Fatalf("asynchronous native publish %s stored at %d, after a later one's %d", id, seq, last)
		}
		last = seq
	}
	missing, ambiguous := 0, 0
	for id := range published {
		switch {
		case consumed[id]:
		case unsure[id]:
			ambiguous++ // its ack reached the server or not: gone and redelivered are both right
		default:
			missing++
			if missing < 5 {
				t.Errorf("acknowledged message %s (stream sequence %d if native) is gone", id, seqOf[id])
			}
		}
	}
	if missing > 0 {
		t.Fatalf("%d of %d acknowledged messages lost", missing, np)
	}
	if len(redelivered) > 0 {
		t.Fatalf("%d messages whose ack was answered before the kill were delivered again, e.g. %s", len(redelivered), redelivered[0])
	}
	t.Logf("%d acknowledged publishes (HTTPS batches and native NATS), %d consumed before kill -9, %d in an ack the kill left unanswered, all accounted for after restart", np, nc0, ambiguous)
}

// firstJSON decodes the JSON value that starts out: a command's answer on standard output,
// before any notice it printed on standard error (apikey create's "shown once").
func firstJSON(out string, v any) error {
	return json.NewDecoder(strings.NewReader(out)).Decode(v)
}

func between(s, a, b string) string {
	_, rest, ok := strings.Cut(s, a)
	if !ok {
		return ""
	}
	v, _, _ := strings.Cut(rest, b)
	return v
}

func (p *proc) caPool() *x509.CertPool {
	pem, err := os.ReadFile(filepath.Join(p.dataDir, "tls", "ca.crt"))
	if err != nil {
		p.t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return pool
}
