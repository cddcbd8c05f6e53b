package app

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/penstock/penstock/internal/audit"
	"github.com/penstock/penstock/internal/backup"
	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/keyring"
	"github.com/penstock/penstock/internal/redact"
	"github.com/penstock/penstock/internal/retention"
	"github.com/penstock/penstock/internal/testenv"
)

// backupWorld is a platform with a backup target, and what a test put in it.
type backupWorld struct {
	*testApp
	target string // file:// URL
	dir    string // the target's directory
	admin  string
}

func newBackupWorld(t *testing.T, target string) *backupWorld {
	t.Helper()
	dir := t.TempDir()
	if target == "" {
		target = "file://" + dir
	}
	ta := startApp(t, func(c *config.Config) {
		c.API.Limits.RequestRate, c.API.Limits.RequestBurst = 1e6, 1e6
		c.API.Limits.ConnRate, c.API.Limits.ConnBurst = 1e6, 1e6
		c.Backup.Target, c.Backup.Schedule = target, 0
		c.Fabric.DuplicateWindow = 10 * time.Minute // a restore keeps it: tested below
	})
	return &backupWorld{testApp: ta, target: target, dir: dir, admin: ta.adminSession(t)}
}

func (w *backupWorld) must(t *testing.T, method, path string, body any, want int) map[string]any {
	t.Helper()
	st, out, raw := w.call(t, method, path, w.admin, body)
	if st != want {
		t.Fatalf("%s %s: %d, want %d: %s", method, path, st, want, raw)
	}
	return out
}

// loadTenant makes tenant/production/shop with a queue "orders" of n messages, some of them
// delivered and unacknowledged, some acknowledged, an exchange bound to it, a secret and a
// pipeline that ran once (so it has a checkpoint and a run).
func (w *backupWorld) loadTenant(t *testing.T, tenant string, n int) {
	t.Helper()
	w.must(t, "POST", "/v1/tenants", map[string]string{"name": tenant}, 201)
	w.must(t, "POST", "/v1/tenants/"+tenant+"/environments/production/applications", map[string]string{"name": "shop"}, 201)
	base := appPath(tenant + "/production/shop")
	w.must(t, "POST", base+"/queues", map[string]any{"name": "orders", "ack_wait": "2s", "max_deliveries": 100}, 201)
	var msgs []map[string]any
	for i := range n {
		msgs = append(msgs, map[string]any{"id": fmt.Sprintf("%s-o-%d", tenant, i), "data": fmt.Sprintf("order %d of %s", i, tenant)})
	}
	w.must(t, "POST", base+"/queues/orders/messages", map[string]any{"messages": msgs}, 200)
	// Five acknowledged, five delivered and left unacknowledged.
	out := w.must(t, "POST", base+"/queues/orders/consume", map[string]any{"max": 10, "wait_ms": 2000}, 200)
	got := out["messages"].([]any)
	if len(got) != 10 {
		t.Fatalf("consume: %d messages", len(got))
	}
	var acks []string
	for _, m := range got[:5] {
		acks = append(acks, m.(map[string]any)["ack_token"].(string))
	}
	w.must(t, "POST", base+"/queues/orders/ack", map[string]any{"tokens": acks}, 204)
	w.must(t, "POST", base+"/exchanges", map[string]any{"name": "events", "type": "topic"}, 201)
	w.must(t, "POST", base+"/exchanges/events/bind", map[string]any{"queue": "orders", "key": "order.#"}, 200)
	w.must(t, "PUT", base+"/secrets/token", map[string]string{"value": "s3cret-of-" + tenant}, 200)
	files := filepath.Join(w.cfg.DataDir, "files", tenant)
	if err := os.MkdirAll(files, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(files, "in.csv"), []byte("id,name\n1,a\n2,b\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	w.must(t, "PUT", base+"/pipelines/copy", map[string]any{
		"source": map[string]any{"type": "file", "path": "in.csv"}, "sink": map[string]any{"type": "file", "path": "out.jsonl"},
		"schedule": "every 1h"}, 200)
	w.must(t, "POST", base+"/pipelines/copy/run", nil, 202)
	waitUntil(t, tenant+"'s pipeline run", func() bool {
		_, out, _ := w.call(t, "GET", base+"/pipelines/copy/runs", w.admin, nil)
		runs, _ := out["runs"].([]any)
		return len(runs) > 0 && runs[0].(map[string]any)["status"] == "succeeded"
	})
}

// job starts a backup job and waits for its end.
func (w *backupWorld) job(t *testing.T, method, path string, body any) map[string]any {
	t.Helper()
	j := w.must(t, method, path, body, 202)
	var out map[string]any
	waitUntil(t, "backup job "+fmt.Sprint(j["id"]), func() bool {
		out = w.must(t, "GET", "/v1/backups/jobs/"+j["id"].(string), nil, 200)
		return out["state"] != "running"
	})
	return out
}

// records is every record of the tenant in the platform's sealed stores, still sealed, but for
// retention's: those change with use and are started afresh by a restore, so a restore is not
// expected to give them back as they were.
func records(t *testing.T, a *App, tenant string) []keyring.Record {
	t.Helper()
	var out []keyring.Record
	for _, r := range allRecords(t, a, tenant) {
		if r.Bucket != retention.Bucket {
			out = append(out, r)
		}
	}
	return out
}

// allRecords is every record of the tenant in the platform's sealed stores, still sealed.
func allRecords(t *testing.T, a *App, tenant string) []keyring.Record {
	t.Helper()
	recs, err := a.keys.ExportRecords(context.Background(), keyring.Scope{Tenant: tenant})
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// drain consumes and acknowledges everything a queue gives until it has seen want distinct
// payloads, and returns them.
func (w *backupWorld) drain(t *testing.T, token, app, queue string, want int) map[string]bool {
	t.Helper()
	seen := map[string]bool{}
	deadline := time.Now().Add(60 * time.Second)
	for len(seen) < want && time.Now().Before(deadline) {
		_, out, raw := w.call(t, "POST", appPath(app)+"/queues/"+queue+"/consume", token, map[string]any{"max": 100, "wait_ms": 500})
		msgs, ok := out["messages"].([]any)
		if !ok {
			t.Fatalf("consume %s: %s", queue, raw)
		}
		var acks []string
		for _, m := range msgs {
			mm := m.(map[string]any)
			seen[fmtString(mm["data"])] = true
			acks = append(acks, mm["ack_token"].(string))
		}
		if len(acks) > 0 {
			w.call(t, "POST", appPath(app)+"/queues/"+queue+"/ack", token, map[string]any{"tokens": acks})
		}
	}
	return seen
}

// wipe empties a data directory but for its master key, as after losing the machine with the
// key kept apart.
func wipe(t *testing.T, dir string) {
	t.Helper()
	key, err := os.ReadFile(filepath.Join(dir, keyring.MasterKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, keyring.MasterKeyFile), key, 0o600); err != nil {
		t.Fatal(err)
	}
}

// The first must-show: a loaded platform backed up while publishers run, its data
// directory wiped and restored: every acknowledged message, consumer positions, records and
// the audit chain as at the backup.
func TestBackupWhilePublishingThenRestoreIntoAnEmptyDirectory(t *testing.T) {
	w := newBackupWorld(t, "")
	w.loadTenant(t, "acme", 50)
	w.loadTenant(t, "globex", 30)
	w.must(t, "POST", "/v1/users", map[string]any{"name": "dana", "email": "dana@example.com"}, 201)
	w.must(t, "POST", appPath("acme/production/shop")+"/queues", map[string]any{"name": "live"}, 201)

	// Publishers run through the backup; every message acknowledged before it began must be
	// in it.
	var (
		mu        sync.Mutex
		acked     []string
		stop      atomic.Bool
		published sync.WaitGroup
	)
	published.Add(1)
	go func() {
		defer published.Done()
		for i := 0; !stop.Load(); i++ {
			data := fmt.Sprintf("live-%d", i)
			st, _, _ := w.call(t, "POST", appPath("acme/production/shop")+"/queues/live/messages", w.admin,
				map[string]any{"messages": []map[string]any{{"data": data}}})
			if st == 200 {
				mu.Lock()
				acked = append(acked, data)
				mu.Unlock()
			}
		}
	}()
	waitUntil(t, "publishers to get going", func() bool { mu.Lock(); defer mu.Unlock(); return len(acked) >= 20 })
	mu.Lock()
	before := slices.Clone(acked)
	mu.Unlock()
	job := w.job(t, "POST", "/v1/backups", map[string]any{})
	stop.Store(true)
	published.Wait()
	if job["state"] != "done" {
		t.Fatalf("backup: %v", job)
	}
	id := job["backup"].(string)
	want := map[string][]keyring.Record{"acme": records(t, w.App, "acme"), "globex": records(t, w.App, "globex")}
	for tenant, recs := range want {
		kinds := map[string]int{}
		for _, r := range recs {
			kinds[r.Bucket]++
		}
		for _, b := range []string{"penstock_secrets", "penstock_pipelines", "penstock_pipeline_state", "penstock_pipeline_runs"} {
			if kinds[b] == 0 {
				t.Fatalf("%s has no record in %s before the backup: %v", tenant, b, kinds)
			}
		}
	}
	list := w.must(t, "GET", "/v1/backups", nil, 200)
	if b := list["backups"].([]any); len(b) != 1 || b[0].(map[string]any)["id"] != id {
		t.Fatalf("list: %v", list)
	}
	if v := w.job(t, "POST", "/v1/backups/"+id+"/verify", map[string]any{}); v["state"] != "done" {
		t.Fatalf("verify: %v", v)
	}
	st, out, raw := w.call(t, "GET", "/v1/audit/verify", w.admin, nil)
	if st != 200 || out["ok"] != true {
		t.Fatalf("audit verify before: %d %s", st, raw)
	}

	// The machine is lost; the master key was kept apart.
	dataDir := w.cfg.DataDir
	w.stop()
	wipe(t, dataDir)
	tb := startAppOpts(t, func(c *config.Config) {
		c.DataDir = dataDir
		c.API.Limits.RequestRate, c.API.Limits.RequestBurst = 1e6, 1e6
		c.API.Limits.ConnRate, c.API.Limits.ConnBurst = 1e6, 1e6
		c.Backup.Target, c.Backup.Schedule = w.target, 0
		c.Fabric.DuplicateWindow = 10 * time.Minute
	}, nil, RestoreFrom(w.target, "", false))
	rep := tb.Restored()
	if rep == nil || rep.ID != id || !slices.Equal(rep.Restored, []string{"acme", "globex"}) || len(rep.Shredded) != 0 {
		t.Fatalf("restore report: %+v", rep)
	}
	if !tb.BootstrapPassword().IsZero() {
		t.Fatal("a restored platform made a new administrator")
	}
	w2 := &backupWorld{testApp: tb, target: w.target, dir: w.dir, admin: w.admin}
	// The administrator's session is as it was at the backup.
	for tenant, recs := range want {
		if got := records(t, tb.App, tenant); !slices.EqualFunc(got, recs, func(a, b keyring.Record) bool {
			return a.Bucket == b.Bucket && a.Key == b.Key && bytes.Equal(a.Value, b.Value)
		}) {
			t.Fatalf("%s's records after the restore differ: %d, want %d", tenant, len(got), len(recs))
		}
	}
	// Every message acknowledged before the backup began is there.
	live := w2.drain(t, w.admin, "acme/production/shop", "live", len(before))
	for _, d := range before {
		if !live[d] {
			t.Fatalf("acknowledged message %s lost (%d of %d restored)", d, len(live), len(before))
		}
	}
	// Consumer positions: the acknowledged five never come back; the five delivered and not
	// acknowledged come back once their ack wait passes; the rest are there.
	for tenant, n := range map[string]int{"acme": 50, "globex": 30} {
		got := w2.drain(t, w.admin, tenant+"/production/shop", "orders", n-5)
		for i := range 5 {
			if got[fmt.Sprintf("order %d of %s", i, tenant)] {
				t.Fatalf("%s: acknowledged order %d delivered again after the restore", tenant, i)
			}
		}
		if len(got) != n-5 {
			t.Fatalf("%s: %d orders after the restore, want %d", tenant, len(got), n-5)
		}
	}
	// The duplicate window came back with the queue: an order published again with its id is
	// recognised.
	out = w2.must(t, "POST", appPath("acme/production/shop")+"/queues/orders/messages",
		map[string]any{"messages": []map[string]any{{"id": "acme-o-7", "data": "order 7 of acme"}}}, 200)
	if out["receipts"].([]any)[0].(map[string]any)["duplicate"] != true {
		t.Fatalf("a message id from before the backup is not a duplicate after the restore: %v", out)
	}
	// The exchange routes again, to the restored queue.
	w2.must(t, "POST", appPath("globex/production/shop")+"/exchanges/events/messages",
		map[string]any{"messages": []map[string]any{{"routing_key": "order.new", "data": "after"}}}, 200)
	if got := w2.drain(t, w.admin, "globex/production/shop", "orders", 1); !got["after"] {
		t.Fatalf("exchange after the restore: %v", got)
	}
	// The audit chain verifies; the restore is the first event after the restored chain.
	st, out, raw = tb.call(t, "GET", "/v1/audit/verify", w.admin, nil)
	if st != 200 || out["ok"] != true {
		t.Fatalf("audit verify after: %d %s", st, raw)
	}
	ev := tb.auditEvents(t, w.admin, "")
	restoredAt := slices.IndexFunc(ev.Events, func(e audit.Event) bool { return e.Action == "backup.restored" })
	if restoredAt < 0 || ev.Events[restoredAt].Target != id {
		t.Fatalf("no backup.restored event for %s", id)
	}
	if _, ok := ev.Events[restoredAt].Details["audit_reanchored"]; !ok {
		t.Fatalf("backup.restored does not record the chains re-anchored: %v", ev.Events[restoredAt].Details)
	}
	for _, e := range ev.Events {
		// The backup's own end was recorded after its cut: gone with everything after it.
		if e.Action == "backup.created" {
			t.Fatalf("an event from after the backup survived the restore: %+v", e)
		}
	}
}

// restoreInto restores a target's backup into dir as `penstock backup restore --to-data-dir`
// does, and returns the report or the error.
func restoreInto(t *testing.T, dir, target, id string, mutate func(*config.Config)) (*backup.RestoreReport, error) {
	t.Helper()
	cfg := config.Default()
	cfg.DataDir, cfg.API.Listen, cfg.Backup.Schedule = dir, "127.0.0.1:0", 0
	if mutate != nil {
		mutate(&cfg)
	}
	a, err := New(context.Background(), cfg, slog.New(slog.DiscardHandler), "test", RestoreFrom(target, id, true))
	if err != nil {
		return nil, err
	}
	rep := a.Restored()
	return rep, a.RestoreOnly()
}

// masterKeyOnly is a new data directory holding only dir's master key.
func masterKeyOnly(t *testing.T, dir string) string {
	t.Helper()
	key, err := os.ReadFile(filepath.Join(dir, keyring.MasterKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	nd := t.TempDir()
	if err := os.WriteFile(filepath.Join(nd, keyring.MasterKeyFile), key, 0o600); err != nil {
		t.Fatal(err)
	}
	return nd
}

// A tampered manifest, a tampered part and another master key are each refused with an error
// that says which, and nothing is restored.
func TestBackupRefusesTamperingAndAnotherKey(t *testing.T) {
	w := newBackupWorld(t, "")
	w.loadTenant(t, "acme", 20)
	job := w.job(t, "POST", "/v1/backups", map[string]any{})
	if job["state"] != "done" {
		t.Fatalf("backup: %v", job)
	}
	id := job["backup"].(string)
	dataDir := w.cfg.DataDir
	w.stop()

	// Another master key: the target's signing key does not open, so nothing is trusted.
	other := t.TempDir()
	if err := os.WriteFile(filepath.Join(other, keyring.MasterKeyFile), []byte(strings.Repeat("ab", 32)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := restoreInto(t, other, w.target, id, nil); err == nil || !strings.Contains(err.Error(), "does not open with this master key") {
		t.Fatalf("another master key: %v", err)
	}

	// A part changed in one byte.
	part := filepath.Join(w.dir, id, "acme_production", "Q_shop_orders")
	orig, err := os.ReadFile(part)
	if err != nil {
		t.Fatal(err)
	}
	bad := slices.Clone(orig)
	bad[len(bad)/2] ^= 1
	os.WriteFile(part, bad, 0o600)
	if _, err := restoreInto(t, masterKeyOnly(t, dataDir), w.target, id, nil); err == nil || !strings.Contains(err.Error(), "Q_shop_orders") {
		t.Fatalf("tampered part: %v", err)
	}
	os.WriteFile(part, orig, 0o600)

	// The manifest changed (a part made to restore as another stream): its signature fails.
	mf := filepath.Join(w.dir, id, "manifest")
	orig, _ = os.ReadFile(mf)
	os.WriteFile(mf, bytes.Replace(orig, []byte(`"stream": "Q_shop_orders"`), []byte(`"stream": "Q_shop_ordert"`), 1), 0o600)
	if bytes.Equal(orig, mustRead(t, mf)) {
		t.Fatal("the manifest names no stream Q_shop_orders to change")
	}
	if _, err := restoreInto(t, masterKeyOnly(t, dataDir), w.target, id, nil); err == nil || !strings.Contains(err.Error(), "signature does not verify") {
		t.Fatalf("tampered manifest: %v", err)
	}
	os.WriteFile(mf, orig, 0o600)

	// Untouched, it restores; into a directory that holds a platform, it does not.
	nd := masterKeyOnly(t, dataDir)
	if rep, err := restoreInto(t, nd, w.target, id, nil); err != nil || rep.ID != id {
		t.Fatalf("restore: %+v %v", rep, err)
	}
	if _, err := restoreInto(t, nd, w.target, id, nil); err == nil || !strings.Contains(err.Error(), "already holds a platform") {
		t.Fatalf("restore over a platform: %v", err)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A tenant deleted (its keys destroyed) after a backup stays deleted when that backup is
// restored: its escrow went with its keys, so its parts cannot be read; the others restore.
func TestShreddedTenantIsNotRestored(t *testing.T) {
	w := newBackupWorld(t, "")
	w.loadTenant(t, "acme", 10)
	w.loadTenant(t, "globex", 10)
	job := w.job(t, "POST", "/v1/backups", map[string]any{})
	if job["state"] != "done" {
		t.Fatalf("backup: %v", job)
	}
	id := job["backup"].(string)
	if _, err := os.Stat(filepath.Join(w.dir, "keys", "escrow", "globex")); err != nil {
		t.Fatalf("no escrow for globex: %v", err)
	}
	w.must(t, "DELETE", "/v1/tenants/globex", nil, 204)
	if _, err := os.Stat(filepath.Join(w.dir, "keys", "escrow", "globex")); !os.IsNotExist(err) {
		t.Fatalf("globex's escrow outlived its keys: %v", err)
	}
	// The backup still verifies for acme; for globex it cannot be read any more.
	if v := w.job(t, "POST", "/v1/backups/"+id+"/verify", map[string]any{"tenant": "acme"}); v["state"] != "done" {
		t.Fatalf("verify acme: %v", v)
	}
	dataDir := w.cfg.DataDir
	w.stop()
	nd := masterKeyOnly(t, dataDir)
	rep, err := restoreInto(t, nd, w.target, id, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rep.Shredded, []string{"globex"}) || !slices.Equal(rep.Restored, []string{"acme"}) {
		t.Fatalf("report: %+v", rep)
	}
	tb := startApp(t, func(c *config.Config) { c.DataDir = nd })
	tb.admin = w.admin
	st, out, raw := tb.call(t, "GET", "/v1/tenants", w.admin, nil)
	if st != 200 || strings.Contains(raw, "globex") || !strings.Contains(raw, "acme") {
		t.Fatalf("tenants after the restore: %d %s", st, raw)
	}
	_ = out
	if st, _, raw := tb.call(t, "GET", appPath("globex/production/shop")+"/queues/orders", w.admin, nil); st != 404 {
		t.Fatalf("globex's queue after the restore: %d %s", st, raw)
	}
	if got := (&backupWorld{testApp: tb, admin: w.admin}).drain(t, w.admin, "acme/production/shop", "orders", 5); len(got) != 5 {
		t.Fatalf("acme's orders: %d", len(got))
	}
	ev := tb.auditEvents(t, w.admin, "")
	if i := slices.IndexFunc(ev.Events, func(e audit.Event) bool { return e.Action == "backup.restored" }); i < 0 || ev.Events[i].Details["shredded"] != "globex" {
		t.Fatalf("the restore event does not say globex stays shredded")
	}
}

// Automatic restore: an empty directory restores with backup.auto_restore and starts a new
// platform without it; a damaged one is set aside and restored with it, and without it starts
// as it is with its damage reported.
func TestAutomaticRestore(t *testing.T) {
	w := newBackupWorld(t, "")
	w.loadTenant(t, "acme", 200)
	if job := w.job(t, "POST", "/v1/backups", map[string]any{}); job["state"] != "done" {
		t.Fatalf("backup: %v", job)
	}
	dataDir := w.cfg.DataDir
	w.stop()
	auto := func(on bool, dir string) func(*config.Config) {
		return func(c *config.Config) {
			c.DataDir, c.Backup.Target, c.Backup.Schedule, c.Backup.AutoRestore = dir, w.target, 0, on
		}
	}
	tenants := func(ta *testApp) string {
		ta.admin = w.admin
		_, _, raw := ta.call(t, "GET", "/v1/tenants", w.admin, nil)
		return raw
	}

	// Empty, without the setting: a new platform, with its first administrator.
	empty := masterKeyOnly(t, dataDir)
	os.Remove(filepath.Join(empty, keyring.MasterKeyFile))
	fresh := startApp(t, auto(false, empty))
	if fresh.Restored() != nil || fresh.BootstrapPassword().IsZero() {
		t.Fatal("an empty directory without backup.auto_restore did not start a new platform")
	}
	fresh.stop()

	// Empty but for the master key, with the setting: restored.
	restored := startApp(t, auto(true, masterKeyOnly(t, dataDir)))
	if restored.Restored() == nil || !strings.Contains(tenants(restored), `"acme"`) {
		t.Fatal("backup.auto_restore did not restore into an empty directory")
	}
	restored.stop()

	// Damaged: the newest block of acme's queue cut short.
	damage := func(t *testing.T) string {
		d := t.TempDir()
		if err := os.CopyFS(d, os.DirFS(dataDir)); err != nil {
			t.Fatal(err)
		}
		filepath.WalkDir(d, func(p string, e os.DirEntry, err error) error {
			if err == nil && !e.IsDir() {
				os.Chmod(p, 0o600)
			}
			return nil
		})
		blocks, _ := filepath.Glob(filepath.Join(d, "jetstream", "acme_production", "streams", "Q_shop_orders", "msgs", "*.blk"))
		if len(blocks) == 0 {
			t.Fatal("no blocks for acme's queue")
		}
		b := mustRead(t, blocks[len(blocks)-1])
		os.WriteFile(blocks[len(blocks)-1], b[:len(b)*6/10], 0o600)
		return d
	}
	d := damage(t)
	kept := startApp(t, auto(false, d))
	if kept.Restored() != nil || len(kept.damage()) == 0 {
		t.Fatalf("without backup.auto_restore a damaged directory was replaced, or its damage not found: %v", kept.damage())
	}
	kept.stop()
	if aside, _ := filepath.Glob(filepath.Join(d, "replaced-*")); len(aside) != 0 {
		t.Fatalf("set aside without the setting: %v", aside)
	}

	d = damage(t)
	replaced := startApp(t, auto(true, d))
	if replaced.Restored() == nil || len(replaced.damage()) != 0 {
		t.Fatalf("with backup.auto_restore a damaged directory was not replaced: %v", replaced.damage())
	}
	aside, _ := filepath.Glob(filepath.Join(d, "replaced-*", "jetstream"))
	if len(aside) != 1 {
		t.Fatalf("the damaged store was not kept aside: %v", aside)
	}
	if got := (&backupWorld{testApp: replaced, admin: w.admin}).drain(t, w.admin, "acme/production/shop", "orders", 195); len(got) != 195 {
		t.Fatalf("acme's orders after the replacement: %d", len(got))
	}
	ev := replaced.auditEvents(t, w.admin, "")
	if i := slices.IndexFunc(ev.Events, func(e audit.Event) bool { return e.Action == "backup.restored" }); i < 0 ||
		!strings.Contains(ev.Events[i].Details["replaced_damage"], "Q_shop_orders") || ev.Events[i].Details["set_aside"] != filepath.Dir(aside[0]) {
		t.Fatal("the restore event does not say what damage it replaced and where the directory went")
	}
}

// One tenant restored into the running platform: its queues, consumer positions, exchanges,
// secrets and pipelines as at its backup, what it made since gone, the other tenant untouched;
// a tenant's owner backs up and restores that tenant only.
func TestRestoreOneTenantIntoTheRunningPlatform(t *testing.T) {
	w := newBackupWorld(t, "")
	w.loadTenant(t, "acme", 20)
	w.loadTenant(t, "globex", 10)
	_, out, raw := w.call(t, "POST", "/v1/apikeys", w.admin, map[string]string{"role": "owner", "scope": "acme"})
	owner, _ := out["key"].(string)
	if owner == "" {
		t.Fatalf("owner key: %s", raw)
	}
	for _, c := range []struct {
		body any
		want int
	}{{map[string]any{}, 403}, {map[string]any{"tenant": "globex"}, 404}} {
		if st, _, raw := w.call(t, "POST", "/v1/backups", owner, c.body); st != c.want {
			t.Fatalf("owner of acme backing up %v: %d %s", c.body, st, raw)
		}
	}
	asOwner := &backupWorld{testApp: w.testApp, admin: owner}
	job := asOwner.job(t, "POST", "/v1/backups", map[string]any{"tenant": "acme"})
	if job["state"] != "done" || !strings.HasSuffix(fmt.Sprint(job["backup"]), "-acme") {
		t.Fatalf("tenant backup: %v", job)
	}
	id := job["backup"].(string)
	want := records(t, w.App, "acme")
	// The owner sees acme's backup; the platform's list has it too.
	if _, out, raw := w.call(t, "GET", "/v1/backups?tenant=acme", owner, nil); len(out["backups"].([]any)) != 1 {
		t.Fatalf("owner's list: %s", raw)
	}
	if st, _, _ := w.call(t, "GET", "/v1/backups", owner, nil); st != 403 {
		t.Fatalf("owner listing every backup: %d", st)
	}

	// Life goes on after the backup.
	acme, globex := appPath("acme/production/shop"), appPath("globex/production/shop")
	w.must(t, "POST", acme+"/queues/orders/messages", map[string]any{"messages": []map[string]any{{"data": "after the backup"}}}, 200)
	w.must(t, "POST", acme+"/queues", map[string]any{"name": "extra"}, 201)
	w.must(t, "PUT", acme+"/secrets/token", map[string]string{"value": "changed"}, 200)
	w.must(t, "DELETE", acme+"/pipelines/copy", nil, 204)
	w.must(t, "POST", globex+"/queues/orders/messages", map[string]any{"messages": []map[string]any{{"data": "globex after"}}}, 200)
	globexBefore := records(t, w.App, "globex")

	if st, _, raw := w.call(t, "POST", "/v1/backups/"+id+"/restore", w.admin, map[string]any{}); st != 422 {
		t.Fatalf("restore without a tenant: %d %s", st, raw)
	}
	rj := asOwner.job(t, "POST", "/v1/backups/"+id+"/restore", map[string]any{"tenant": "acme"})
	if rj["state"] != "done" {
		t.Fatalf("restore: %v", rj)
	}
	if got := records(t, w.App, "acme"); !slices.EqualFunc(got, want, func(a, b keyring.Record) bool {
		return a.Bucket == b.Bucket && a.Key == b.Key && bytes.Equal(a.Value, b.Value)
	}) {
		t.Fatalf("acme's records after the restore differ: %d, want %d", len(got), len(want))
	}
	if got := records(t, w.App, "globex"); len(got) != len(globexBefore) {
		t.Fatalf("globex's records changed: %d, were %d", len(got), len(globexBefore))
	}
	if st, _, raw := w.call(t, "GET", acme+"/queues/extra", w.admin, nil); st != 404 {
		t.Fatalf("a queue made after the backup survived the restore: %d %s", st, raw)
	}
	w.must(t, "GET", acme+"/pipelines/copy", nil, 200)
	// The exchange routes into the restored queue, and the queue holds what it held.
	w.must(t, "POST", acme+"/exchanges/events/messages", map[string]any{"messages": []map[string]any{{"routing_key": "order.x", "data": "routed"}}}, 200)
	got := w.drain(t, w.admin, "acme/production/shop", "orders", 16)
	if len(got) != 16 || !got["routed"] || got["after the backup"] || got["order 0 of acme"] || !got["order 19 of acme"] {
		t.Fatalf("acme's orders after the restore: %d %v", len(got), got)
	}
	if g := w.drain(t, w.admin, "globex/production/shop", "orders", 6); len(g) != 6 || !g["globex after"] {
		t.Fatalf("globex's orders: %v", g)
	}
	ev := w.auditEvents(t, w.admin, "tenant=acme")
	if i := slices.IndexFunc(ev.Events, func(e audit.Event) bool { return e.Action == "backup.restored" && e.Result == "ok" }); i < 0 ||
		ev.Events[i].Target != id || !strings.Contains(ev.Events[i].Actor, "apikey") {
		t.Fatal("no backup.restored event by the owner's key")
	}
}

// The same life against S3-compatible object storage, its credentials given as configuration
// secrets: a backup, its listing and a restore into an empty directory; the secret key
// reaches no log line.
func TestBackupToS3Target(t *testing.T) {
	s3 := testenv.S3Target(t)
	creds := func(c *config.Config) {
		c.Backup.AccessKeyID, c.Backup.SecretAccessKey = redact.NewSecret(s3.AccessKey), redact.NewSecret(s3.SecretKey)
	}
	ta := startApp(t, func(c *config.Config) {
		c.API.Limits.RequestRate, c.API.Limits.RequestBurst = 1e6, 1e6
		c.Backup.Target, c.Backup.Schedule = s3.URL(), 0
		creds(c)
	})
	w := &backupWorld{testApp: ta, target: s3.URL(), admin: ta.adminSession(t)}
	w.loadTenant(t, "acme", 30)
	job := w.job(t, "POST", "/v1/backups", map[string]any{})
	if job["state"] != "done" {
		t.Fatalf("backup to s3: %v", job)
	}
	id := job["backup"].(string)
	if _, out, raw := w.call(t, "GET", "/v1/backups", w.admin, nil); len(out["backups"].([]any)) != 1 {
		t.Fatalf("list: %s", raw)
	}
	want := records(t, w.App, "acme")
	dataDir := w.cfg.DataDir
	w.stop()
	if strings.Contains(ta.logs.String(), s3.SecretKey) {
		t.Fatal("the S3 secret key is in the log")
	}
	// Without the credentials the target refuses; with them the backup restores.
	if _, err := restoreInto(t, masterKeyOnly(t, dataDir), s3.URL(), id, func(c *config.Config) {
		c.Backup.AccessKeyID, c.Backup.SecretAccessKey = redact.NewSecret(s3.AccessKey), redact.NewSecret("wrong-secret-key")
	}); err == nil || strings.Contains(err.Error(), "wrong-secret-key") {
		t.Fatalf("wrong credentials: %v", err)
	}
	nd := masterKeyOnly(t, dataDir)
	rep, err := restoreInto(t, nd, s3.URL(), id, creds)
	if err != nil || rep.ID != id {
		t.Fatalf("restore from s3: %+v %v", rep, err)
	}
	tb := startApp(t, func(c *config.Config) { c.DataDir = nd })
	if got := records(t, tb.App, "acme"); len(got) != len(want) {
		t.Fatalf("records after the restore from s3: %d, want %d", len(got), len(want))
	}
}

// Scheduled backups: taken every backup.schedule, pruned to the retention policy, counted in
// penstock_backup_last_success_timestamp_seconds; a failed one is audited as failed and
// tried again.
func TestScheduledBackupsAndRetention(t *testing.T) {
	dir := t.TempDir()
	ta := startApp(t, func(c *config.Config) {
		c.Backup.Target, c.Backup.Schedule = "file://"+dir, time.Second
		c.Backup.KeepDaily, c.Backup.KeepWeekly, c.Backup.KeepMonthly = 1, 0, 0
		// The test polls the audit log while backups run: not the edge's limits under test.
		c.API.Limits.RequestRate, c.API.Limits.RequestBurst = 1e6, 1e6
		c.API.Limits.ConnRate, c.API.Limits.ConnBurst = 1e6, 1e6
	})
	admin := ta.adminSession(t)
	ta.call(t, "POST", "/v1/tenants", admin, map[string]string{"name": "acme"})
	created := func() []audit.Event {
		var out []audit.Event
		for _, e := range ta.auditEvents(t, admin, "").Events {
			if e.Action == "backup.created" && e.Actor == "system" {
				out = append(out, e)
			}
		}
		return out
	}
	waitUntil(t, "three scheduled backups", func() bool { return len(created()) >= 3 })
	// Keep the newest of one day: one backup is left, the newest.
	var list []any
	waitUntil(t, "pruning to one backup", func() bool {
		_, out, _ := ta.call(t, "GET", "/v1/backups", admin, nil)
		list, _ = out["backups"].([]any)
		return len(list) == 1
	})
	if v := metricValue(t, metrics(t, ta), "penstock_backup_last_success_timestamp_seconds"); v < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Fatalf("last success metric: %v", v)
	}
	// The target becomes unwritable: the next scheduled backup fails, and says so.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir, []byte("not a directory"), 0o600); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "a failed scheduled backup in the audit log", func() bool {
		for _, e := range ta.auditEvents(t, admin, "").Events {
			if e.Action == "backup.created" && e.Result == audit.ResultError && e.Details["error"] != "" {
				return true
			}
		}
		return false
	})
}
