package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type consumed struct {
	Messages []struct {
		AckToken   string `json:"ack_token"`
		Data       string `json:"data"`
		Deliveries int    `json:"deliveries"`
	} `json:"messages"`
}

// An ack answered 204 has taken effect: a kill -9 right after it brings none of the
// acknowledged messages back, and a message delivered (not acknowledged) before the kill
// comes back with its delivery count raised, so max_deliveries counts across crashes.
func TestAcknowledgedAcksSurviveKill9(t *testing.T) {
	dir := t.TempDir()
	p := serveEnv(t, dir, fabricEnv)
	key := setupQueue(t, p)
	if code, out := p.cli("", "queue", "create", "--app", "acme/production/shop", "acks", "--ack-wait", "5s", "--max-deliveries", "5"); code != 0 {
		t.Fatalf("queue create: %s", out)
	}
	base := "/v1/tenants/acme/environments/production/applications/shop/queues/acks"
	c := p.client()
	const n = 3000
	for i := 0; i < n; i += 1000 {
		var msgs []map[string]string
		for j := range 1000 {
			msgs = append(msgs, map[string]string{"data": fmt.Sprint(i + j)})
		}
		if st, body, err := p.post(c, key, base+"/messages", map[string]any{"messages": msgs}); err != nil || st != 200 {
			t.Fatalf("publish: %d %v %s", st, err, body)
		}
	}
	consume := func(max int) consumed {
		t.Helper()
		st, body, err := p.post(c, key, base+"/consume", map[string]any{"max": max, "wait_ms": 1000})
		var out consumed
		if err != nil || st != 200 || json.Unmarshal(body, &out) != nil {
			t.Fatalf("consume: %d %v %s", st, err, body)
		}
		return out
	}
	// Ten deliveries left unacknowledged, then the engine has written its consumer state
	// (the engine writes it at most every 100 ms after a change; the file's time shows it).
	held := consume(10)
	if len(held.Messages) != 10 {
		t.Fatalf("consumed %d", len(held.Messages))
	}
	deliveredAt := time.Now()
	acked := map[string]bool{}
	for round := 0; round < 2; round++ {
		got := consume(1000)
		var tokens []string
		for _, m := range got.Messages {
			tokens = append(tokens, m.AckToken)
		}
		if st, body, err := p.post(c, key, base+"/ack", map[string]any{"tokens": tokens}); err != nil || st != 204 {
			t.Fatalf("ack: %d %v %s", st, err, body)
		}
		for _, m := range got.Messages {
			acked[m.Data] = true
		}
	}
	// A held delivery whose ack wait ran out while the machine was slow came back in these
	// rounds and was acknowledged: it is no longer held.
	heldData := map[string]bool{}
	for _, m := range held.Messages {
		if !acked[m.Data] {
			heldData[m.Data] = true
		}
	}
	if len(heldData) == 0 {
		t.Fatal("every held delivery came back before the kill: the machine is too slow for a 5 s ack wait")
	}
	waitForConsumerState(t, dir, "Q_shop_acks", deliveredAt)
	// kill -9 at once after the last 204.
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-p.exited

	p = serveEnv(t, dir, fabricEnv)
	c = p.client()
	seen := map[string]int{}
	deadline := time.Now().Add(2 * time.Minute)
	for len(seen) < n-len(acked) {
		if time.Now().After(deadline) {
			t.Fatalf("after the restart: %d of %d unacknowledged messages delivered", len(seen), n-len(acked))
		}
		got := consume(1000)
		var tokens []string
		for _, m := range got.Messages {
			if acked[m.Data] {
				t.Fatalf("message %s delivered again after its acknowledged ack (deliveries %d)", m.Data, m.Deliveries)
			}
			if heldData[m.Data] && m.Deliveries < 2 {
				t.Fatalf("message %s was delivered before the kill but comes back with deliveries %d", m.Data, m.Deliveries)
			}
			seen[m.Data]++
			tokens = append(tokens, m.AckToken)
		}
		if len(tokens) > 0 {
			if st, body, err := p.post(c, key, base+"/ack", map[string]any{"tokens": tokens}); err != nil || st != 204 {
				t.Fatalf("ack: %d %v %s", st, err, body)
			}
		}
	}
	for d := range heldData {
		if seen[d] == 0 {
			t.Fatalf("held message %s lost", d)
		}
	}
	req, _ := http.NewRequest("GET", p.api+base, nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `"depth":0`) {
		t.Fatalf("queue after consuming everything: %s", body)
	}
}

// waitForConsumerState waits until the engine has written the state of a queue's consumer
// after since: the file o.dat under the stream's consumer directory.
func waitForConsumerState(t *testing.T, dir, stream string, since time.Time) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		files, _ := filepath.Glob(filepath.Join(dir, "jetstream", "*", "streams", stream, "obs", "*", "o.dat"))
		for _, f := range files {
			if fi, err := os.Stat(f); err == nil && fi.ModTime().After(since) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the engine wrote no consumer state for %s (files %v)", stream, files)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
