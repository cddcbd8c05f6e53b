package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// hookReceiver is a webhook endpoint that checks every request's signature and counts the
// deliveries it took, by delivery id; while down, it answers 503.
type hookReceiver struct {
	mu        sync.Mutex
	down      bool
	attempts  int
	delivered map[string]int
	bad       []string
	srv       *httptest.Server
}

func newHookReceiver(t *testing.T, secret string) *hookReceiver {
	h := &hookReceiver{delivered: map[string]int{}}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mac := hmac.New(sha256.New, []byte(secret))
		mac.Write([]byte(r.Header.Get("X-Penstock-Timestamp") + "."))
		mac.Write(body)
		h.mu.Lock()
		defer h.mu.Unlock()
		h.attempts++
		if !hmac.Equal([]byte(r.Header.Get("X-Penstock-Signature")), []byte("v1="+hex.EncodeToString(mac.Sum(nil)))) {
			h.bad = append(h.bad, "signature")
			http.Error(w, "bad signature", http.StatusBadRequest)
			return
		}
		if h.down {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		h.delivered[r.Header.Get("X-Penstock-Delivery")]++
		w.WriteHeader(204)
	}))
	t.Cleanup(h.srv.Close)
	return h
}

func (h *hookReceiver) state() (int, map[string]int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	d := map[string]int{}
	for k, v := range h.delivered {
		d[k] = v
	}
	return h.attempts, d
}

// The notification commands, then kill -9 while one channel keeps refusing a notice another
// confirmed: after the restart the refusing channel gets it once, the other never again.
func TestNotifyKill9MidRetry(t *testing.T) {
	dir := t.TempDir()
	env := append([]string{"PENSTOCK_NOTIFY_TICK=100ms", "PENSTOCK_NOTIFY_RETRY_BASE=200ms", "PENSTOCK_NOTIFY_RETRY_MAX=1s"}, fabricEnv...)
	p := serveEnv(t, dir, env)
	key := setupQueue(t, p)
	good := newHookReceiver(t, "good-secret-0123456789")
	flaky := newHookReceiver(t, "flaky-secret-0123456789")
	flaky.down = true
	must := func(stdin string, args ...string) string {
		t.Helper()
		code, out := p.cli(stdin, args...)
		if code != 0 {
			t.Fatalf("penstock %s: %d\n%s", strings.Join(args, " "), code, out)
		}
		return out
	}
	must("", "egress", "set", "--tenant", "acme", good.srv.Listener.Addr().String(), flaky.srv.Listener.Addr().String())
	files := t.TempDir()
	for name, doc := range map[string]string{
		"good.yaml":  "type: webhook\nurl: " + good.srv.URL + "/hook\nsecret: good-secret-0123456789\n",
		"flaky.yaml": "type: webhook\nurl: " + flaky.srv.URL + "/hook\nsecret: flaky-secret-0123456789\n",
		"dead.yaml":  "event: queue.dead_letters\napplication: shop\nwindow: 10m\nseverity: critical\nchannels: [good, flaky]\n",
	} {
		if err := os.WriteFile(filepath.Join(files, name), []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if out := must("", "notify", "channel", "put", "--tenant", "acme", "-f", filepath.Join(files, "good.yaml"), "good"); strings.Contains(out, "good-secret") {
		t.Fatalf("channel put shows the secret:\n%s", out)
	}
	if code, out := p.cli(mustRead(t, filepath.Join(files, "flaky.yaml")), "notify", "channel", "put", "--tenant", "acme", "-f", "-", "flaky"); code != 0 {
		t.Fatalf("channel put from stdin: %d\n%s", code, out)
	}
	if code, out := p.cli("", "notify", "rule", "put", "--tenant", "acme", "-f", filepath.Join(files, "dead.yaml"), "dead"); code != 0 {
		t.Fatalf("rule put: %d\n%s", code, out)
	}
	if out := must("", "notify", "test", "--tenant", "acme", "good"); !strings.Contains(out, "took the test notice") {
		t.Fatalf("notify test:\n%s", out)
	}
	if code, out := p.cli("", "notify", "test", "--tenant", "acme", "flaky"); code == 0 || !strings.Contains(out, "503") {
		t.Fatalf("notify test of a refusing channel: %d\n%s", code, out)
	}
	if out := must("", "notify", "channel", "list", "--tenant", "acme"); strings.Contains(out, "secret-0123456789") || !strings.Contains(out, `"credentials_set"`) {
		t.Fatalf("channel list:\n%s", out)
	}

	base := "/v1/tenants/acme/environments/production/applications/shop/queues/orders"
	c := p.client()
	if st, body, err := p.post(c, key, base+"/messages", map[string]any{"messages": []map[string]string{{"data": "PAYLOAD-x"}, {"data": "PAYLOAD-y"}}}); err != nil || st != 200 {
		t.Fatalf("publish: %d %v %s", st, err, body)
	}
	st, body, err := p.post(c, key, base+"/consume", map[string]any{"max": 2, "wait_ms": 2000})
	var got consumed
	if err != nil || st != 200 || json.Unmarshal(body, &got) != nil || len(got.Messages) != 2 {
		t.Fatalf("consume: %d %v %s", st, err, body)
	}
	if st, body, err := p.post(c, key, base+"/reject", map[string]any{"tokens": []string{got.Messages[0].AckToken, got.Messages[1].AckToken}}); err != nil || st != 204 {
		t.Fatalf("reject: %d %v %s", st, err, body)
	}

	// After the restart the CLI goes on with an owner's API key of the tenant (a saved login is
	// for one server address).
	code, out := p.cli("", "apikey", "create", "--role", "owner", "--scope", "acme")
	var created struct {
		Key string `json:"key"`
	}
	if err := firstJSON(out, &created); code != 0 || err != nil {
		t.Fatalf("apikey create: %d %v\n%s", code, err, out)
	}
	keyFile := filepath.Join(files, "owner.key")
	if err := os.WriteFile(keyFile, []byte(created.Key), 0o600); err != nil {
		t.Fatal(err)
	}
	type alert struct {
		ID      string `json:"id"`
		Count   int    `json:"count"`
		Notices []struct {
			Channel, State string
			Attempts       int
		} `json:"notices"`
	}
	alerts := func(p *proc) []alert {
		t.Helper()
		code, out := p.cli("", "alerts", "list", "--tenant", "acme", "-o", "json", "--api-key-file", keyFile)
		var list struct{ Alerts []alert }
		if code != 0 || firstJSON(out, &list) != nil {
			t.Fatalf("alerts list: %d\n%s", code, out)
		}
		return list.Alerts
	}
	// The good channel's notice is recorded as sent, the flaky one's has failed twice.
	var id string
	waitUntil(t, time.Minute, "a confirmed notice and a refused one", func() bool {
		list := alerts(p)
		if len(list) != 1 || len(list[0].Notices) != 2 {
			return false
		}
		id = list[0].ID
		n := list[0].Notices
		return n[0].Channel == "good" && n[0].State == "sent" && n[1].State == "pending" && n[1].Attempts >= 2
	})
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-p.exited
	flaky.mu.Lock()
	flaky.down = false
	flaky.mu.Unlock()

	p = serveEnv(t, dir, env)
	waitUntil(t, time.Minute, "the refused notice delivered after the restart", func() bool {
		_, d := flaky.state()
		return d[id+"/2"] == 1
	})
	waitUntil(t, time.Minute, "both notices recorded as sent", func() bool {
		n := alerts(p)[0].Notices
		return n[0].State == "sent" && n[1].State == "sent"
	})
	_, g := good.state()
	_, f := flaky.state()
	if g[id+"/1"] != 1 || f[id+"/2"] != 1 || len(f) != 1 {
		t.Fatalf("deliveries: good %v, flaky %v", g, f)
	}
	if good.bad != nil || flaky.bad != nil {
		t.Fatalf("bad requests: %v %v", good.bad, flaky.bad)
	}
	if code, out := p.cli("", "alerts", "ack", "--tenant", "acme", id, "--api-key-file", keyFile); code != 0 || !strings.Contains(out, `"acked_by"`) {
		t.Fatalf("alerts ack: %d\n%s", code, out)
	}
	code, out = p.cli("", "alerts", "show", "--tenant", "acme", id, "-o", "json", "--api-key-file", keyFile)
	var shown struct {
		AckedBy string `json:"acked_by"`
	}
	if code != 0 || firstJSON(out, &shown) != nil || !strings.HasPrefix(shown.AckedBy, "apikey:") {
		t.Fatalf("alerts show after ack: %d\n%s", code, out)
	}
	if strings.Contains(p.logs.String(), "PAYLOAD-") || strings.Contains(p.logs.String(), "secret-0123456789") {
		t.Fatal("the server log holds a payload or a channel secret")
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// In a cluster of three, dead letters rejected through every node are one alert, delivered by
// one node (the holder of the delivery lease); kill -9 of that node while the receiver refuses
// the notice: another node takes the lease over and delivers it once.
func TestClusterNotifyOneAlertOneDeliveryAcrossKill9(t *testing.T) {
	tc := newTestCluster(t)
	tc.env = append(tc.env, "PENSTOCK_NOTIFY_TICK=100ms", "PENSTOCK_NOTIFY_RETRY_BASE=200ms", "PENSTOCK_NOTIFY_RETRY_MAX=1s")
	tc.start()
	admin := tc.admin()
	key := setupQueue(t, admin)
	hook := newHookReceiver(t, "cluster-secret-0123456789")
	hook.down = true
	cli := func(i int, stdin string, args ...string) {
		t.Helper()
		if code, out := adminCLIStdin(t, admin, tc.node(i).api, stdin, args...); code != 0 {
			t.Fatalf("penstock %s: %d\n%s", strings.Join(args, " "), code, out)
		}
	}
	cli(0, "", "egress", "set", "--tenant", "acme", hook.srv.Listener.Addr().String())
	cli(1, "type: webhook\nurl: "+hook.srv.URL+"\nsecret: cluster-secret-0123456789\n", "notify", "channel", "put", "--tenant", "acme", "-f", "-", "hook")
	cli(2, "event: queue.dead_letters\nwindow: 10m\nchannels: [hook]\n", "notify", "rule", "put", "--tenant", "acme", "-f", "-", "dead")

	base := "/v1/tenants/acme/environments/production/applications/shop/queues/orders"
	for i := range 3 {
		p := tc.node(i)
		c := clientFor(p)
		if st, body, err := p.post(c, key, base+"/messages", map[string]any{"messages": []map[string]string{{"data": fmt.Sprint("PAYLOAD-", i)}}}); err != nil || st != 200 {
			t.Fatalf("publish on node %d: %d %v %s", i, st, err, body)
		}
		var got consumed
		waitUntil(t, time.Minute, "a delivery", func() bool {
			st, body, err := p.post(c, key, base+"/consume", map[string]any{"max": 1, "wait_ms": 1000})
			return err == nil && st == 200 && json.Unmarshal(body, &got) == nil && len(got.Messages) == 1
		})
		if st, body, err := p.post(c, key, base+"/reject", map[string]any{"tokens": []string{got.Messages[0].AckToken}}); err != nil || st != 204 {
			t.Fatalf("reject on node %d: %d %v %s", i, st, err, body)
		}
	}
	// The node that tries to deliver (and is refused) holds the lease: it logs the refusal.
	holder := -1
	waitUntil(t, 2*time.Minute, "a refused delivery", func() bool {
		for i := range 3 {
			if strings.Contains(tc.node(i).logs.String(), "notice not delivered") {
				holder = i
				return true
			}
		}
		return false
	})
	other := (holder + 1) % 3
	type alert struct {
		ID    string `json:"id"`
		Count int    `json:"count"`
	}
	var alerts []alert
	var last string
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("alerts last listed:\n%s", last)
		}
	})
	waitUntil(t, time.Minute, "one alert counting the three dead letters", func() bool {
		code, out := adminCLI(t, admin, tc.node(other).api, "alerts", "list", "--tenant", "acme", "-o", "json")
		last = out
		var list struct{ Alerts []alert }
		if code != 0 || firstJSON(out, &list) != nil {
			return false
		}
		alerts = list.Alerts
		return len(alerts) == 1 && alerts[0].Count == 3
	})
	if err := tc.node(holder).cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-tc.node(holder).exited
	hook.mu.Lock()
	hook.down = false
	hook.mu.Unlock()
	waitUntil(t, 2*time.Minute, "the delivery by another node", func() bool {
		_, d := hook.state()
		return d[alerts[0].ID+"/1"] == 1
	})
	_, d := hook.state()
	if len(d) != 1 || hook.bad != nil {
		t.Fatalf("deliveries %v, bad %v", d, hook.bad)
	}
}
