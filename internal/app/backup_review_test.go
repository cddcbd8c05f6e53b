package app

// Review of issue 16 (backups): each test asserts the behaviour the feature promises and fails
// on the snapshot under review.

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/penstock/penstock/internal/config"
)

// lightTenant makes tenant/production/<app> with queue <queue> holding n messages
// "<marker>-<i>"; the tenant is created if it does not exist.
func (w *backupWorld) lightTenant(t *testing.T, tenant, app, queue, marker string, n int) {
	t.Helper()
	if st, _, _ := w.call(t, "GET", "/v1/tenants/"+tenant, w.admin, nil); st == 404 {
		w.must(t, "POST", "/v1/tenants", map[string]string{"name": tenant}, 201)
	}
	w.must(t, "POST", "/v1/tenants/"+tenant+"/environments/production/applications", map[string]string{"name": app}, 201)
	base := appPath(tenant + "/production/" + app)
	w.must(t, "POST", base+"/queues", map[string]any{"name": queue}, 201)
	var msgs []map[string]any
	for i := range n {
		msgs = append(msgs, map[string]any{"data": fmt.Sprintf("%s-%d", marker, i)})
	}
	w.must(t, "POST", base+"/queues/"+queue+"/messages", map[string]any{"messages": msgs}, 200)
}

// R1. Deleting an application destroys its keys ("every backup of it is unreadable from
// here"), but backups seal its queues with the environment's key and keep it in the restored
// identity. A full restore of any backup taken before an application was deleted writes the
// deleted application's messages into the new directory, then the start fails
// (pipeline.Open: ErrDestroyed), and a plain start of that directory fails the same way: the
// platform cannot be restored from any backup older than the last application deletion.
func TestReviewFullRestoreAfterAnApplicationDeletion(t *testing.T) {
	w := newBackupWorld(t, "")
	w.lightTenant(t, "acme", "shop", "orders", "order", 3)
	w.lightTenant(t, "acme", "secret", "plans", "confidential", 3)
	job := w.job(t, "POST", "/v1/backups", map[string]any{})
	if job["state"] != "done" {
		t.Fatalf("backup: %v", job)
	}
	id := job["backup"].(string)
	w.must(t, "DELETE", appPath("acme/production/secret"), nil, 204)
	dataDir := w.cfg.DataDir
	w.stop()
	nd := masterKeyOnly(t, dataDir)
	if _, err := restoreInto(t, nd, w.target, id, nil); err != nil {
		t.Fatalf("full restore of a backup taken before an application deletion: %v", err)
	}
	tb := startApp(t, func(c *config.Config) { c.DataDir = nd })
	st, out, raw := tb.call(t, "POST", appPath("acme/production/secret")+"/queues/plans/consume", w.admin,
		map[string]any{"max": 10, "wait_ms": 500})
	if msgs, _ := out["messages"].([]any); st == 200 && len(msgs) > 0 {
		t.Errorf("deleted application's messages readable after a full restore: %s", raw)
	}
}

// R1b. A tenant restore recreates the deleted application's streams (plaintext to the
// engine, no identity entry, nothing shows them): crypto-shredded data back on disk.
func TestReviewTenantRestoreRecreatesDeletedApplicationStreams(t *testing.T) {
	w := newBackupWorld(t, "")
	w.lightTenant(t, "acme", "shop", "orders", "order", 3)
	w.lightTenant(t, "acme", "secret", "plans", "confidential", 3)
	job := w.job(t, "POST", "/v1/backups", map[string]any{"tenant": "acme"})
	if job["state"] != "done" {
		t.Fatalf("backup: %v", job)
	}
	id := job["backup"].(string)
	w.must(t, "DELETE", appPath("acme/production/secret"), nil, 204)
	if rj := w.job(t, "POST", "/v1/backups/"+id+"/restore", map[string]any{"tenant": "acme"}); rj["state"] != "done" {
		t.Fatalf("tenant restore: %v", rj)
	}
	acc, err := w.eng.Account(context.Background(), "acme_production")
	if err != nil {
		t.Fatal(err)
	}
	if s, err := acc.JetStream().Stream(context.Background(), "Q_secret_plans"); err == nil {
		info, _ := s.Info(context.Background())
		t.Errorf("tenant restore recreated stream Q_secret_plans (%d messages) of the deleted application", info.State.Msgs)
	}
}

// R2. keys rotate-master retires the old master key; the target's signing key stays sealed by
// it. After the next restart no backup can be taken or listed, and with only the current
// master.key no backup, not even one taken after the rotation, can be restored.
func TestReviewMasterRotationOrphansBackups(t *testing.T) {
	w := newBackupWorld(t, "")
	w.lightTenant(t, "acme", "shop", "orders", "order", 3)
	if job := w.job(t, "POST", "/v1/backups", map[string]any{}); job["state"] != "done" {
		t.Fatalf("backup before rotation: %v", job)
	}
	w.must(t, "POST", "/v1/keys/rotate-master", nil, 200)
	job := w.job(t, "POST", "/v1/backups", map[string]any{})
	if job["state"] != "done" {
		t.Fatalf("backup after rotation (same process): %v", job)
	}
	after := job["backup"].(string)
	dataDir := w.cfg.DataDir
	w.stop()

	// The machine is lost; the operator kept the current master.key.
	if _, err := restoreInto(t, masterKeyOnly(t, dataDir), w.target, after, nil); err != nil {
		t.Errorf("restore of a backup taken after rotate-master, with the current master key: %v", err)
	}

	// Or the platform simply restarts.
	tb := startApp(t, func(c *config.Config) {
		c.DataDir = dataDir
		c.API.Limits.RequestRate, c.API.Limits.RequestBurst = 1e6, 1e6
		c.Backup.Target, c.Backup.Schedule = w.target, 0
	})
	w2 := &backupWorld{testApp: tb, target: w.target, dir: w.dir, admin: w.admin}
	if j := w2.job(t, "POST", "/v1/backups", map[string]any{}); j["state"] != "done" {
		t.Errorf("backup after a restart following rotate-master: %v", j["error"])
	}
}

// R3. A full restore of a named backup writes parts before checking the others: a bad part
// fails the restore half way, and the half-restored directory (still "initializing") then
// starts as a platform with a plain serve, silently missing a tenant's queue.
func TestReviewFailedFullRestoreLeavesAServableHalfPlatform(t *testing.T) {
	w := newBackupWorld(t, "")
	w.lightTenant(t, "acme", "shop", "orders", "order", 3)
	w.lightTenant(t, "globex", "shop", "orders", "gorder", 3)
	job := w.job(t, "POST", "/v1/backups", map[string]any{})
	if job["state"] != "done" {
		t.Fatalf("backup: %v", job)
	}
	id := job["backup"].(string)
	dataDir := w.cfg.DataDir
	w.stop()
	part := filepath.Join(w.dir, id, "globex_production", "Q_shop_orders")
	b := mustRead(t, part)
	b[len(b)-20] ^= 1 // damage in the target, or a kill -9 / Ctrl-C at this point of the restore
	if err := os.WriteFile(part, b, 0o600); err != nil {
		t.Fatal(err)
	}
	nd := masterKeyOnly(t, dataDir)
	if _, err := restoreInto(t, nd, w.target, id, nil); err == nil {
		t.Fatal("restore with a damaged part succeeded")
	}
	// What did the failed restore leave? A plain start must refuse it, not serve it.
	cfg := config.Default()
	cfg.DataDir, cfg.API.Listen, cfg.Metrics.Listen = nd, "127.0.0.1:0", ""
	a, err := New(context.Background(), cfg, slog.New(slog.DiscardHandler), "test")
	if err == nil {
		defer a.closeAll()
		var tenants []string
		for _, tn := range a.ident.Tenants() {
			tenants = append(tenants, tn.Name)
		}
		t.Errorf("a half-restored directory started as a platform (tenants %v, bootstrap password made: %v)",
			tenants, !a.BootstrapPassword().IsZero())
	}
}

// R4. A tenant name used again: the new tenant's owner is shown the backups of the deleted
// tenant that had the name (their sizes and message counts) and, through a verify job's
// error, its application and queue names.
func TestReviewReusedTenantNameSeesPreviousTenantsBackups(t *testing.T) {
	w := newBackupWorld(t, "")
	w.lightTenant(t, "acme", "secret-project", "merger-talks", "m", 3)
	job := w.job(t, "POST", "/v1/backups", map[string]any{})
	if job["state"] != "done" {
		t.Fatalf("backup: %v", job)
	}
	id := job["backup"].(string)
	w.must(t, "DELETE", "/v1/tenants/acme", nil, 204)
	w.must(t, "POST", "/v1/tenants", map[string]string{"name": "acme"}, 201)
	_, out, raw := w.call(t, "POST", "/v1/apikeys", w.admin, map[string]string{"role": "owner", "scope": "acme"})
	owner, _ := out["key"].(string)
	if owner == "" {
		t.Fatalf("owner key: %s", raw)
	}
	_, _, raw = w.call(t, "GET", "/v1/backups?tenant=acme", owner, nil)
	if strings.Contains(raw, id) {
		t.Errorf("the new acme's owner lists the old acme's backup: %s", raw)
	}
	asOwner := &backupWorld{testApp: w.testApp, admin: owner}
	v := asOwner.job(t, "POST", "/v1/backups/"+id+"/verify", map[string]any{"tenant": "acme"})
	if e := fmt.Sprint(v["error"]); strings.Contains(e, "secret-project") || strings.Contains(e, "merger-talks") {
		t.Errorf("the new acme's owner learns the old acme's names: %s", e)
	}
}

// R6. A missing escrow object is taken as proof of crypto-shredding: whoever can delete one
// object in the target (or a copy of the target that left keys/ behind) makes the next full
// restore tombstone that tenant's keys and delete it, instead of refusing.
func TestReviewMissingEscrowDestroysTenantOnRestore(t *testing.T) {
	w := newBackupWorld(t, "")
	w.lightTenant(t, "acme", "shop", "orders", "order", 3)
	w.lightTenant(t, "globex", "shop", "orders", "gorder", 3)
	job := w.job(t, "POST", "/v1/backups", map[string]any{})
	if job["state"] != "done" {
		t.Fatalf("backup: %v", job)
	}
	id := job["backup"].(string)
	dataDir := w.cfg.DataDir
	w.stop()
	if err := os.Remove(filepath.Join(w.dir, "keys", "escrow", "globex")); err != nil {
		t.Fatal(err)
	}
	rep, err := restoreInto(t, masterKeyOnly(t, dataDir), w.target, id, nil)
	if err == nil {
		t.Errorf("restore without globex's escrow succeeded and destroyed globex: shredded %v, restored %v", rep.Shredded, rep.Restored)
	}
}

// R7. A stop (a deploy) during a tenant restore's replace phase: the stop waits for the
// replacement to end, and the tenant's queue is whole at the next start. (It lost the queue
// before: the stop canceled the job, whose cleanup deleted the partial stream.)
func TestReviewInterruptedTenantRestoreLosesQueue(t *testing.T) {
	w := newBackupWorld(t, "")
	w.lightTenant(t, "acme", "shop", "orders", "order", 1)
	ctx := context.Background()
	acc, err := w.eng.Account(ctx, "acme_production")
	if err != nil {
		t.Fatal(err)
	}
	js := acc.JetStream()
	for i := range 4000 {
		big := make([]byte, 4000) // incompressible, so the restore takes a moment
		_, _ = rand.Read(big)
		if _, err := js.PublishAsync("shop.q.orders", big); err != nil {
			t.Fatal(err)
		}
		if i%500 == 0 {
			<-js.PublishAsyncComplete()
		}
	}
	<-js.PublishAsyncComplete()
	job := w.job(t, "POST", "/v1/backups", map[string]any{"tenant": "acme"})
	if job["state"] != "done" {
		t.Fatalf("backup: %v", job)
	}
	id := job["backup"].(string)
	j := w.must(t, "POST", "/v1/backups/"+id+"/restore", map[string]any{"tenant": "acme"}, 202)
	for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(2 * time.Millisecond) {
		out := w.must(t, "GET", "/v1/backups/jobs/"+j["id"].(string), nil, 200)
		if out["state"] != "running" {
			t.Logf("the restore ended before the stop: %v", out)
			break
		}
		// The live queue is being replaced: deleted, or restored part way.
		if s, err := js.Stream(ctx, "Q_shop_orders"); err != nil {
			break
		} else if info, err := s.Info(ctx); err == nil && info.State.Msgs < 4001 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("restore not under way: %v", out)
		}
	}
	dataDir := w.cfg.DataDir
	t0 := time.Now()
	w.stop()
	t.Logf("stop took %s", time.Since(t0))
	tb := startApp(t, func(c *config.Config) {
		c.DataDir = dataDir
		c.Backup.Target, c.Backup.Schedule = w.target, 0
	})
	for _, e := range tb.auditEvents(t, w.admin, "tenant=acme").Events {
		if strings.HasPrefix(e.Action, "backup.") {
			t.Logf("audit: %s %s %v", e.Action, e.Result, e.Details)
		}
	}
	a2, err := tb.eng.Account(ctx, "acme_production")
	if err != nil {
		t.Fatal(err)
	}
	s, err := a2.JetStream().Stream(ctx, "Q_shop_orders")
	if err != nil {
		t.Fatalf("after a restore interrupted by a stop, acme's queue is gone: %v", err)
	}
	if info, _ := s.Info(ctx); info.State.Msgs < 4000 {
		t.Fatalf("after a restore interrupted by a stop, acme's queue holds %d messages", info.State.Msgs)
	}
}

// R8. Streams are snapshotted one after another in name order, so a queue's dead-letter
// stream (D_) is cut before the queue (Q_), and an exchange (X_) after the queues it routes to:
// a message moved from Q_ to D_ (rejected, or out of deliveries) between the two cuts is in
// neither, though it was stored before the backup began. Here the move is a reject while D_
// is being snapshotted.
func TestReviewMessageMovedToDeadLettersDuringBackupIsLost(t *testing.T) {
	w := newBackupWorld(t, "")
	w.lightTenant(t, "acme", "shop", "orders", "victim", 1)
	ctx := context.Background()
	acc, err := w.eng.Account(ctx, "acme_production")
	if err != nil {
		t.Fatal(err)
	}
	js := acc.JetStream()
	// The dead-letter queue is made with the queue's first dead letter: the victim is that,
	// and a second message takes its place.
	base := appPath("acme/production/shop")
	first := w.must(t, "POST", base+"/queues/orders/consume", map[string]any{"max": 1, "wait_ms": 2000}, 200)
	w.must(t, "POST", base+"/queues/orders/reject", map[string]any{"tokens": []string{first["messages"].([]any)[0].(map[string]any)["ack_token"].(string)}}, 204)
	w.must(t, "POST", base+"/queues/orders/messages", map[string]any{"messages": []map[string]string{{"data": "second"}}}, 200)
	const dead = 8000
	for i := range dead { // a large dead-letter queue, so its snapshot takes a moment
		b := make([]byte, 4000)
		_, _ = rand.Read(b)
		if _, err := js.PublishAsync("shop.dlq.orders", b); err != nil {
			t.Fatal(err)
		}
		if i%500 == 0 {
			<-js.PublishAsyncComplete()
		}
	}
	<-js.PublishAsyncComplete()
	out := w.must(t, "POST", appPath("acme/production/shop")+"/queues/orders/consume", map[string]any{"max": 1, "wait_ms": 2000}, 200)
	token := out["messages"].([]any)[0].(map[string]any)["ack_token"].(string)

	q, d := rejectDuringBackup(t, w, token)
	if strings.Contains(q, `"messages": 0,`) && strings.Contains(d, fmt.Sprintf(`"messages": %d,`, dead+1)) {
		t.Errorf("the rejected message is in neither the queue's part nor its dead letters' part:\nQ: %s\nD: %s", firstLines(q, 12), firstLines(d, 12))
	}
}

// A queue's dead-letter queue is made with its first dead letter. Made while the backup cuts
// the account's streams (after it listed them), it is cut after them, so that a message moved
// into it after its queue's cut is in the backup.
func TestFirstDeadLetterDuringBackupIsCut(t *testing.T) {
	w := newBackupWorld(t, "")
	w.lightTenant(t, "acme", "shop", "orders", "victim", 1)
	base := appPath("acme/production/shop")
	w.must(t, "POST", base+"/queues", map[string]any{"name": "big"}, 201) // Q_shop_big is cut before Q_shop_orders
	ctx := context.Background()
	acc, err := w.eng.Account(ctx, "acme_production")
	if err != nil {
		t.Fatal(err)
	}
	js := acc.JetStream()
	for i := range 8000 { // a large queue cut first, so the backup takes a moment
		b := make([]byte, 4000)
		_, _ = rand.Read(b)
		if _, err := js.PublishAsync("shop.q.big", b); err != nil {
			t.Fatal(err)
		}
		if i%500 == 0 {
			<-js.PublishAsyncComplete()
		}
	}
	<-js.PublishAsyncComplete()
	out := w.must(t, "POST", base+"/queues/orders/consume", map[string]any{"max": 1, "wait_ms": 2000}, 200)
	token := out["messages"].([]any)[0].(map[string]any)["ack_token"].(string)

	q, d := rejectDuringBackup(t, w, token)
	if q == "" || strings.Contains(q, `"messages": 0,`) && !strings.Contains(d, `"messages": 1,`) {
		t.Errorf("the rejected message is in neither the queue's part nor a dead-letter part:\nQ: %s\nD: %s", firstLines(q, 12), firstLines(d, 12))
	}
}

// rejectDuringBackup starts a backup, rejects the delivery of acme/production/shop's queue
// orders named by token once the backup is cutting acme's streams, and returns the manifest's
// parts of that queue (q) and of its dead letters (d, "" if none).
func rejectDuringBackup(t *testing.T, w *backupWorld, token string) (q, d string) {
	t.Helper()
	ctx := context.Background()
	plat, err := w.eng.Account(ctx, "platform")
	if err != nil {
		t.Fatal(err)
	}
	platformParts := 0
	for n := range plat.JetStream().StreamNames(ctx).Name() {
		if n != "KV_penstock_keyring" && n != "KV_penstock_nonces" && n != "KV_penstock_health" {
			platformParts++
		}
	}
	j := w.must(t, "POST", "/v1/backups", map[string]any{}, 202)
	// Once the platform's parts are stored, acme's streams are being cut.
	waitUntil(t, "the backup to reach acme's streams", func() bool {
		st := w.must(t, "GET", "/v1/backups/jobs/"+j["id"].(string), nil, 200)
		if st["state"] != "running" {
			t.Fatalf("backup ended before the reject: %v", st)
		}
		p, _ := st["progress"].(map[string]any)
		n, _ := p["parts"].(float64)
		return int(n) >= platformParts
	})
	w.must(t, "POST", appPath("acme/production/shop")+"/queues/orders/reject", map[string]any{"tokens": []string{token}}, 204)
	var st map[string]any
	waitUntil(t, "the backup", func() bool {
		st = w.must(t, "GET", "/v1/backups/jobs/"+j["id"].(string), nil, 200)
		return st["state"] != "running"
	})
	if st["state"] != "done" {
		t.Fatalf("backup: %v", st)
	}
	raw := string(mustRead(t, filepath.Join(w.dir, st["backup"].(string), "manifest")))
	for _, part := range strings.Split(raw, `"object": `)[1:] {
		if strings.HasPrefix(part, `"`+st["backup"].(string)+`/acme_production/Q_shop_orders"`) {
			q = part
		}
		if strings.HasPrefix(part, `"`+st["backup"].(string)+`/acme_production/D_shop_orders"`) {
			d = part
		}
	}
	return q, d
}

func firstLines(s string, n int) string {
	l := strings.Split(s, "\n")
	return strings.Join(l[:min(n, len(l))], "\n")
}
