package app

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"

	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/engine"
	"github.com/penstock/penstock/internal/fabric"
	"github.com/penstock/penstock/internal/redact"
	"github.com/penstock/penstock/internal/testenv"
)

// Penstock on a NATS deployment it does not run, in operator mode: every tenant-environment is
// an account Penstock signs into the servers' resolver, so two tenants with the same queue
// names hold and deliver only their own messages, in NATS accounts of their own; a restart of
// Penstock finds the accounts and what was left in them.
func TestOperatorModeIsolatesTenants(t *testing.T) {
	srv := testenv.StartOperatorNATS(t)
	mk := make([]byte, 32)
	_, _ = rand.Read(mk)
	dataDir := t.TempDir()
	setup := func(c *config.Config) {
		c.DataDir = dataDir
		c.Engine.NATSURL = srv.URL
		c.Engine.NATSOperatorKeyFile = srv.OperatorKeyFile
		c.Engine.NATSSystemCredsFile = srv.SystemCredsFile
		c.Keyring.MasterKey = redact.NewSecret(hex.EncodeToString(mk))
		c.API.Limits.RequestRate, c.API.Limits.RequestBurst = 1e6, 1e6
		c.Fabric.MaxStorage = 1 << 20
		c.Fabric.MaxPayload = 128 << 10
	}
	ta := startApp(t, setup)
	if !ta.eng.Operator() {
		t.Fatal("the engine is not in operator mode")
	}
	admin := ta.adminSession(t)
	keys := map[string]string{}
	for _, tenant := range []string{"acme", "globex"} {
		if st, _, raw := ta.call(t, "POST", "/v1/tenants", admin, map[string]string{"name": tenant}); st != 201 {
			t.Fatalf("tenant %s: %d %s", tenant, st, raw)
		}
		if st, _, raw := ta.call(t, "POST", "/v1/tenants/"+tenant+"/environments/production/applications", admin, map[string]string{"name": "shop"}); st != 201 {
			t.Fatalf("application: %d %s", st, raw)
		}
		st, out, raw := ta.call(t, "POST", "/v1/apikeys", admin, map[string]string{"role": "developer", "scope": tenant + "/production/shop"})
		if st != 201 {
			t.Fatalf("key: %d %s", st, raw)
		}
		keys[tenant] = out["key"].(string)
		base := "/v1/tenants/" + tenant + "/environments/production/applications/shop/queues"
		if st, _, raw := ta.call(t, "POST", base, keys[tenant], map[string]any{"name": "orders"}); st != 201 {
			t.Fatalf("queue: %d %s", st, raw)
		}
		for i := range 3 {
			msg := map[string]any{"messages": []map[string]any{{"data": fmt.Sprintf("%s-order-%d", tenant, i)}}}
			if st, _, raw := ta.call(t, "POST", base+"/orders/messages", keys[tenant], msg); st != 200 {
				t.Fatalf("publish: %d %s", st, raw)
			}
		}
	}
	// Each tenant's account is its own NATS account, signed into the resolver.
	acme, _ := ta.eng.NATSAccount(fabric.AccountName("acme", "production"))
	globex, _ := ta.eng.NATSAccount(fabric.AccountName("globex", "production"))
	plat, _ := ta.eng.NATSAccount(engine.PlatformAccount)
	if acme == globex || acme == plat || globex == plat {
		t.Fatalf("accounts are shared: acme %s, globex %s, platform %s", acme, globex, plat)
	}

	consume := func(ta *testApp, tenant string, max int) []string {
		t.Helper()
		base := "/v1/tenants/" + tenant + "/environments/production/applications/shop/queues/orders"
		st, out, raw := ta.call(t, "POST", base+"/consume", keys[tenant], map[string]any{"max": max, "wait_ms": 2000})
		if st != 200 {
			t.Fatalf("consume %s: %d %s", tenant, st, raw)
		}
		var got, tokens []string
		for _, m := range out["messages"].([]any) {
			mm := m.(map[string]any)
			got = append(got, fmtString(mm["data"]))
			tokens = append(tokens, mm["ack_token"].(string))
		}
		if len(tokens) > 0 {
			if st, _, raw := ta.call(t, "POST", base+"/ack", keys[tenant], map[string]any{"tokens": tokens}); st != 204 {
				t.Fatalf("ack: %d %s", st, raw)
			}
		}
		return got
	}
	// Two of three now; the third after a restart of Penstock.
	for _, tenant := range []string{"acme", "globex"} {
		got := consume(ta, tenant, 2)
		if len(got) != 2 || got[0] != tenant+"-order-0" || got[1] != tenant+"-order-1" {
			t.Fatalf("%s consumed %v", tenant, got)
		}
	}
	// One tenant's key opens nothing of the other's.
	if st, _, raw := ta.call(t, "POST", "/v1/tenants/globex/environments/production/applications/shop/queues/orders/consume", keys["acme"], map[string]any{"max": 10}); st != 403 && st != 404 {
		t.Fatalf("acme's key on globex's queue: %d %s", st, raw)
	}
	// fabric.max_storage holds there too: the account's JWT carries it.
	big := strings.Repeat("x", 60<<10)
	stored, status := 0, 0
	bulk := "/v1/tenants/globex/environments/production/applications/shop/queues"
	if st, _, raw := ta.call(t, "POST", bulk, keys["globex"], map[string]any{"name": "bulk"}); st != 201 {
		t.Fatalf("queue: %d %s", st, raw)
	}
	for range 60 {
		st, body, raw := ta.call(t, "POST", bulk+"/bulk/messages", keys["globex"],
			map[string]any{"messages": []map[string]any{{"data": big}}})
		if st != 200 {
			if st != 507 || body["code"] != "quota.storage" {
				t.Fatalf("publish past the quota: %d %.300s", st, raw)
			}
			status = st
			break
		}
		stored++
	}
	if status != 507 || stored > 17 {
		t.Fatalf("a 1 MiB quota took %d messages of 60 KiB (last status %d)", stored, status)
	}
	ta.stop()

	tb := startApp(t, setup)
	for _, tenant := range []string{"acme", "globex"} {
		if got := consume(tb, tenant, 10); len(got) != 1 || got[0] != tenant+"-order-2" {
			t.Fatalf("%s after the restart consumed %v, want only %s-order-2", tenant, got, tenant)
		}
	}
}
