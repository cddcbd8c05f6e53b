package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// An unused environment deleted by retention, with the server killed (kill -9) in the middle
// of the deletion, after the environment's keys were destroyed: the next start finishes it
// before serving, audited once. The exempt environments stay; a tenant owner's early deletion
// of another environment (with its confirmation) takes the same path.
func TestRetentionKill9MidDeletionFinishes(t *testing.T) {
	dir := t.TempDir()
	env := append([]string{
		"PENSTOCK_RETENTION_INACTIVE_AFTER=8s", "PENSTOCK_RETENTION_CHECK_EVERY=1s", "PENSTOCK_RETENTION_GRACE=1s",
		"PENSTOCK_RETENTION_EXEMPT=*/production,acme/qa",
	}, fabricEnv...)
	p := serveEnv(t, dir, append([]string{"PENSTOCK_CRASHPOINT=delete-env/keys-destroyed"}, env...))
	addr := strings.TrimPrefix(p.api, "https://")
	key := setupQueue(t, p)
	base := "/v1/tenants/acme/environments/production/applications/shop/queues/orders"
	if st, body, err := p.post(p.client(), key, base+"/messages", map[string]any{"messages": []map[string]string{{"data": "kept"}}}); err != nil || st != 200 {
		t.Fatalf("publish: %d %v %s", st, err, body)
	}
	if code, out := p.cli("", "env", "create", "--tenant", "acme", "qa"); code != 0 {
		t.Fatalf("env create: %d\n%s", code, out)
	}
	// staging is unused: warned (every warning's date has passed: the 1-day one goes), deleted a
	// second later, and the server dies with its keys destroyed.
	p.waitExit()

	home := p.home
	p = serveEnv(t, dir, env, "--listen", addr)
	p.home = home
	if !strings.Contains(p.logs.String(), "resuming an interrupted deletion") {
		t.Fatalf("no deletion resumed at start:\n%s", p.logs.String())
	}
	var envs string
	waitUntil(t, time.Minute, "staging and test deleted by retention", func() bool {
		_, envs = p.cli("", "env", "list", "--tenant", "acme", "-o", "json")
		return !strings.Contains(envs, "staging") && !strings.Contains(envs, `"test"`)
	})
	if !strings.Contains(envs, "production") || !strings.Contains(envs, "qa") {
		t.Fatalf("exempt environments went: %s", envs)
	}
	code, out := p.cli("", "audit", "list", "--tenant", "acme", "--action", "environment.deleted", "-o", "json")
	if code != 0 || strings.Count(out, `"environment": "staging"`) != 1 || !strings.Contains(out, `"resumed": "true"`) ||
		!strings.Contains(out, `"actor": "system:retention"`) || !strings.Contains(out, "no use since") {
		t.Fatalf("deletion events: %d\n%s", code, out)
	}
	code, out = p.cli("", "retention", "report", "--tenant", "acme", "-o", "json")
	if code != 0 || !strings.Contains(out, `"exempt_by": "retention.exempt */production"`) || !strings.Contains(out, `"exempt_by": "retention.exempt acme/qa"`) {
		t.Fatalf("retention report: %d\n%s", code, out)
	}
	if code, out := p.cli("", "retention", "run", "--dry-run", "-o", "json"); code != 0 || !strings.Contains(out, `"dry_run": true`) {
		t.Fatalf("retention run --dry-run: %d\n%s", code, out)
	}
	// A tenant's policy, one flag at a time: what a flag leaves out stays.
	for _, args := range [][]string{{"--inactive-after", "400d"}, {"--exempt", "production,qa"}} {
		if code, out := p.cli("", append([]string{"retention", "policy", "set", "acme"}, args...)...); code != 0 {
			t.Fatalf("retention policy set %v: %d\n%s", args, code, out)
		}
	}
	if code, out := p.cli("", "retention", "policy", "get", "acme", "-o", "json"); code != 0 || !strings.Contains(out, `"inactive_after": "400d"`) ||
		!strings.Contains(out, `"qa"`) {
		t.Fatalf("retention policy get: %d\n%s", code, out)
	}
	if code, out := p.cli("", "retention", "policy", "set", "acme", "--inactive-after", "soon"); code == 0 || !strings.Contains(out, "inactive_after") {
		t.Fatalf("a bad policy: %d\n%s", code, out)
	}

	// Early deletion by the tenant's owner: refused without the confirmation, done with it.
	code, out = p.cli("", "apikey", "create", "--role", "owner", "--scope", "acme")
	var created struct {
		Key string `json:"key"`
	}
	if err := firstJSON(out, &created); code != 0 || err != nil {
		t.Fatalf("apikey create: %d %v\n%s", code, err, out)
	}
	keyFile := filepath.Join(t.TempDir(), "owner.key")
	if err := os.WriteFile(keyFile, []byte(created.Key), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out := p.cli("", "env", "delete", "--tenant", "acme", "qa", "--confirm", "acme/production", "--api-key-file", keyFile); code == 0 || !strings.Contains(out, "--confirm must repeat the environment as acme/qa") {
		t.Fatalf("env delete with a wrong confirmation: %d\n%s", code, out)
	}
	if code, out := p.cli("", "env", "delete", "--tenant", "acme", "qa", "--confirm", "acme/qa", "--api-key-file", keyFile); code != 0 || !strings.Contains(out, "acme/qa deleted") {
		t.Fatalf("env delete: %d\n%s", code, out)
	}
	code, out = p.cli("", "audit", "list", "--tenant", "acme", "--action", "environment.deleted", "-o", "json")
	if code != 0 || !strings.Contains(out, `"environment": "qa"`) || !strings.Contains(out, "early deletion asked by apikey:") {
		t.Fatalf("early deletion event: %d\n%s", code, out)
	}
	c := p.client()
	st, body, err := p.post(c, key, base+"/consume", map[string]any{"max": 1, "wait_ms": 2000})
	if err != nil || st != 200 || !strings.Contains(string(body), "a2VwdA") && !strings.Contains(string(body), "kept") {
		t.Fatalf("production's message: %d %v %s", st, err, body)
	}
}
