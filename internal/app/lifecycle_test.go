package app

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/penstock/penstock/internal/authz"
	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/identity"
	"github.com/penstock/penstock/internal/keyring"
)

// lifeWorld is a running app with tenants acme (applications shop and other in production)
// and globex (application shop in production). Each application has a queue "in", a secret,
// and a continuous pipeline that copies "in" to <application>.jsonl in its tenant's files.
type lifeWorld struct {
	*testApp
	admin string
}

func lifeApp(t *testing.T) *lifeWorld {
	t.Helper()
	ta := startApp(t, func(c *config.Config) {
		c.API.Limits.RequestRate, c.API.Limits.RequestBurst = 1e6, 1e6
		c.API.Limits.ConnRate, c.API.Limits.ConnBurst = 1e6, 1e6
		c.Fabric.NATSListen = "127.0.0.1:0"
	})
	w := &lifeWorld{testApp: ta, admin: ta.adminSession(t)}
	w.must(t, "POST", "/v1/tenants", map[string]string{"name": "acme"}, 201)
	w.must(t, "POST", "/v1/tenants", map[string]string{"name": "globex"}, 201)
	for _, app := range []string{"acme/production/shop", "acme/production/other", "globex/production/shop"} {
		w.makeApp(t, app)
	}
	return w
}

func appPath(app string) string {
	p := strings.Split(app, "/")
	return "/v1/tenants/" + p[0] + "/environments/" + p[1] + "/applications/" + p[2]
}

// must calls the API as the administrator and fails unless the status is want.
func (w *lifeWorld) must(t *testing.T, method, path string, body any, want int) map[string]any {
	t.Helper()
	st, out, raw := w.call(t, method, path, w.admin, body)
	if st != want {
		t.Fatalf("%s %s: %d, want %d: %s", method, path, st, want, raw)
	}
	return out
}

// makeApp creates an application with its queue, secret and pipeline.
func (w *lifeWorld) makeApp(t *testing.T, app string) {
	t.Helper()
	p := strings.Split(app, "/")
	w.must(t, "POST", "/v1/tenants/"+p[0]+"/environments/"+p[1]+"/applications", map[string]string{"name": p[2]}, 201)
	w.must(t, "POST", appPath(app)+"/queues", map[string]any{"name": "in"}, 201)
	w.must(t, "PUT", appPath(app)+"/secrets/token", map[string]string{"value": "v-" + p[2]}, 200)
	w.must(t, "PUT", appPath(app)+"/pipelines/copy", map[string]any{
		"source":   map[string]any{"type": "queue", "queue": "in"},
		"sink":     map[string]any{"type": "file", "path": p[2] + ".jsonl"},
		"schedule": "continuous",
		"batch":    map[string]any{"size": 1, "flush_interval": "10ms"},
	}, 200)
}

// publish puts n messages on an application's queue "in".
func (w *lifeWorld) publish(t *testing.T, app string, n int) {
	t.Helper()
	for i := 0; i < n; i += 100 {
		var msgs []map[string]any
		for j := i; j < min(i+100, n); j++ {
			msgs = append(msgs, map[string]any{"data": fmt.Sprintf(`{"n": %d}`, j)})
		}
		w.must(t, "POST", appPath(app)+"/queues/in/messages", map[string]any{"messages": msgs}, 200)
	}
}

// lines counts the lines an application's pipeline wrote.
func (w *lifeWorld) lines(app string) int {
	p := strings.Split(app, "/")
	b, _ := os.ReadFile(filepath.Join(w.cfg.DataDir, "files", p[0], p[2]+".jsonl"))
	return bytes.Count(b, []byte("\n"))
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Deleting an application while its pipeline is mid-run: the delete answers once the run has
// stopped, and from then on nothing of it runs or answers (pipeline, queues, secrets, service
// key over HTTPS and NATS), its keys are destroyed, and the other applications, of its tenant
// and of another, carry on untouched. The name then makes a fresh, empty application.
func TestDeletingAnApplicationStopsEverything(t *testing.T) {
	w := lifeApp(t)
	const shop = "acme/production/shop"
	out := w.must(t, "POST", "/v1/apikeys", map[string]any{"role": "developer", "scope": shop, "service": true}, 201)
	svc := out["key"].(string)
	if st, _, raw := w.call(t, "GET", appPath(shop)+"/queues", svc, nil); st != 200 {
		t.Fatalf("service key: %d %s", st, raw)
	}
	nc, err := nats.Connect("tls://"+w.eng.NativeAddrs().NATS, nats.UserInfo("acme/production", svc),
		nats.Secure(nil), nats.RootCAs(filepath.Join(w.cfg.DataDir, "tls", "ca.crt")), nats.MaxReconnects(-1),
		nats.ReconnectWait(20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	disconnected := make(chan struct{}, 1)
	nc.SetDisconnectErrHandler(func(*nats.Conn, error) {
		select {
		case disconnected <- struct{}{}:
		default:
		}
	})

	const total = 3000
	w.publish(t, shop, total)
	waitUntil(t, "the shop pipeline to be mid-run", func() bool { return w.lines(shop) >= 10 })
	if p := w.must(t, "GET", appPath(shop)+"/pipelines/copy", nil, 200); p["running"] != true {
		t.Fatalf("the pipeline is not running: %v", p)
	}

	w.must(t, "DELETE", appPath(shop), nil, 204)
	written := w.lines(shop)
	t.Logf("%d of %d records written when the delete answered", written, total)
	if written >= total {
		t.Fatal("the run finished before the delete: it was not deleted mid-run")
	}

	select {
	case <-disconnected:
	case <-time.After(10 * time.Second):
		t.Fatal("the native connection of the deleted application's key stayed open")
	}
	// Its things are gone (404) or unreadable (410 scope.deleted); its listings are empty.
	if out := w.must(t, "GET", "/v1/tenants/acme/environments/production/applications", nil, 200); strings.Contains(fmt.Sprint(out), "name:shop") {
		t.Fatalf("the deleted application is listed: %v", out)
	}
	for _, path := range []string{appPath(shop) + "/queues/in", appPath(shop) + "/pipelines/copy"} {
		if st, _, raw := w.call(t, "GET", path, w.admin, nil); st != 404 && st != 410 {
			t.Errorf("GET %s after the delete: %d %s", path, st, raw)
		}
	}
	for _, list := range []struct{ path, field string }{{"/queues", "queues"}, {"/secrets", "secrets"}, {"/pipelines", "pipelines"}} {
		st, out, raw := w.call(t, "GET", appPath(shop)+list.path, w.admin, nil)
		if items, _ := out[list.field].([]any); st != 404 && st != 410 && (st != 200 || len(items) != 0) {
			t.Errorf("GET %s after the delete: %d %s", list.path, st, raw)
		}
	}
	if st, _, _ := w.call(t, "GET", "/v1/auth/whoami", svc, nil); st != 401 {
		t.Fatalf("the deleted application's service key still authenticates: %d", st)
	}
	if _, err := nats.Connect("tls://"+w.eng.NativeAddrs().NATS, nats.UserInfo("acme/production", svc),
		nats.RootCAs(filepath.Join(w.cfg.DataDir, "tls", "ca.crt")), nats.NoReconnect()); err == nil {
		t.Fatal("the deleted application's key connected over NATS")
	}
	ctx := context.Background()
	if gone, err := w.keys.IsDestroyed(ctx, keyring.Scope{Tenant: "acme", Environment: "production", Application: "shop"}); err != nil || !gone {
		t.Fatalf("the application's keys are not destroyed: %v %v", gone, err)
	}
	if st, _, _ := w.call(t, "DELETE", appPath(shop), w.admin, nil); st != 404 {
		t.Fatalf("a second delete: %d", st)
	}

	// The other applications run on: their pipelines copy what is published next, which also
	// shows that the deleted one wrote nothing after the delete answered.
	for _, app := range []string{"acme/production/other", "globex/production/shop"} {
		w.publish(t, app, 5)
		waitUntil(t, app+" to copy its messages", func() bool { return w.lines(app) == 5 })
		w.must(t, "GET", appPath(app)+"/queues/in", nil, 200)
		if out := w.must(t, "GET", appPath(app)+"/secrets", nil, 200); !strings.Contains(fmt.Sprint(out), "token") {
			t.Fatalf("%s lost its secret: %v", app, out)
		}
	}
	if n := w.lines(shop); n != written {
		t.Fatalf("the deleted application's pipeline wrote %d records after the delete answered", n-written)
	}
	events := w.auditEvents(t, w.admin, "tenant=acme&action=application.deleted")
	if len(events.Events) != 1 || events.Events[0].Application != "shop" || events.Events[0].Result != "ok" {
		t.Fatalf("audit of the deletion: %+v", events.Events)
	}

	// The same name again: a new, empty application with new keys.
	w.must(t, "POST", "/v1/tenants/acme/environments/production/applications", map[string]string{"name": "shop"}, 201)
	for _, list := range []struct{ path, field string }{{"/queues", "queues"}, {"/secrets", "secrets"}, {"/pipelines", "pipelines"}} {
		out := w.must(t, "GET", appPath(shop)+list.path, nil, 200)
		if items, _ := out[list.field].([]any); len(items) != 0 {
			t.Fatalf("the new application has old %s: %v", list.field, out)
		}
	}
	if st, _, _ := w.call(t, "GET", "/v1/auth/whoami", svc, nil); st != 401 {
		t.Fatalf("the old service key works for the new application: %d", st)
	}
	w.must(t, "PUT", appPath(shop)+"/secrets/token", map[string]string{"value": "new"}, 200)
	w.must(t, "POST", appPath(shop)+"/queues", map[string]any{"name": "in"}, 201)
	if n := w.lines(shop); n != written {
		t.Fatalf("something wrote to the old application's file after it was made again: %d", n-written)
	}
}

// Deleting a tenant removes all of it, files included, and leaves the other tenant alone; the
// name then makes a fresh tenant.
func TestDeletingATenantRemovesAllOfIt(t *testing.T) {
	w := lifeApp(t)
	w.publish(t, "acme/production/shop", 3)
	waitUntil(t, "acme's pipeline to copy", func() bool { return w.lines("acme/production/shop") == 3 })
	w.must(t, "DELETE", "/v1/tenants/acme", nil, 204)
	if st, _, _ := w.call(t, "GET", "/v1/tenants/acme", w.admin, nil); st != 404 {
		t.Fatalf("tenant after delete: %d", st)
	}
	if _, err := os.Stat(filepath.Join(w.cfg.DataDir, "files", "acme")); !os.IsNotExist(err) {
		t.Fatalf("the tenant's files are still there: %v", err)
	}
	w.publish(t, "globex/production/shop", 4)
	waitUntil(t, "globex's pipeline to copy", func() bool { return w.lines("globex/production/shop") == 4 })

	w.must(t, "POST", "/v1/tenants", map[string]string{"name": "acme"}, 201)
	if out := w.must(t, "GET", "/v1/tenants/acme/environments/production/applications", nil, 200); len(out["applications"].([]any)) != 0 {
		t.Fatalf("the new tenant has old applications: %v", out)
	}
	w.makeApp(t, "acme/production/shop")
	if out := w.must(t, "GET", appPath("acme/production/shop")+"/pipelines", nil, 200); len(out["pipelines"].([]any)) != 1 {
		t.Fatalf("pipelines of the new application: %v", out)
	}
}

// From the moment a deletion is marked (as a crash right after the mark leaves it), the
// application is unusable: its routes answer 404, its key is refused, its name cannot be made
// again; a repeated delete finishes the deletion.
func TestAMarkedDeletionIsInvisibleAndFinishesOnRetry(t *testing.T) {
	w := lifeApp(t)
	const shop = "acme/production/shop"
	out := w.must(t, "POST", "/v1/apikeys", map[string]any{"role": "developer", "scope": shop, "service": true}, 201)
	svc := out["key"].(string)
	sc := authz.Scope{Tenant: "acme", Environment: "production", Application: "shop"}
	if _, err := w.ident.MarkDeletion(context.Background(), identity.Deletion{Scope: sc, Actor: "user:admin"}); err != nil {
		t.Fatal(err)
	}
	if st, _, _ := w.call(t, "GET", "/v1/auth/whoami", svc, nil); st != 401 {
		t.Fatalf("the key of an application being deleted: %d", st)
	}
	for _, path := range []string{"/queues", "/queues/in", "/secrets", "/pipelines/copy"} {
		if st, out, raw := w.call(t, "GET", appPath(shop)+path, w.admin, nil); st != 404 || out["code"] != "not_found" {
			t.Errorf("GET %s while being deleted: %d %s", path, st, raw)
		}
	}
	if st, out, raw := w.call(t, "POST", "/v1/tenants/acme/environments/production/applications", w.admin, map[string]string{"name": "shop"}); st != 409 || out["code"] != "scope.deleting" {
		t.Fatalf("create while being deleted: %d %s", st, raw)
	}
	w.must(t, "DELETE", appPath(shop), nil, 204)
	if _, ok := w.ident.Deletion(sc); ok {
		t.Fatal("the deletion is still marked")
	}
	w.must(t, "POST", "/v1/tenants/acme/environments/production/applications", map[string]string{"name": "shop"}, 201)
}

// An environment (deleted by the lifecycle for the retention purge; no route yet) goes with
// its applications; the tenant's other environments and the other tenant stay.
func TestDeletingAnEnvironment(t *testing.T) {
	w := lifeApp(t)
	w.makeApp(t, "acme/staging/shop")
	ctx := context.Background()
	if err := w.life.Delete(ctx, "system", authz.Scope{Tenant: "acme", Environment: "production"}); err != nil {
		t.Fatal(err)
	}
	out := w.must(t, "GET", "/v1/tenants/acme/environments", nil, 200)
	if envs := fmt.Sprint(out["environments"]); strings.Contains(envs, "production") || !strings.Contains(envs, "staging") {
		t.Fatalf("environments after the delete: %s", envs)
	}
	if st, _, raw := w.call(t, "GET", appPath("acme/production/other")+"/queues/in", w.admin, nil); st != 404 && st != 410 {
		t.Fatalf("a queue of the deleted environment: %d %s", st, raw)
	}
	if gone, err := w.keys.IsDestroyed(ctx, keyring.Scope{Tenant: "acme", Environment: "production"}); err != nil || !gone {
		t.Fatalf("the environment's keys: %v %v", gone, err)
	}
	for _, app := range []string{"acme/staging/shop", "globex/production/shop"} {
		w.publish(t, app, 2)
		waitUntil(t, app+" to copy", func() bool { return w.lines(app) >= 2 })
	}
	w.must(t, "POST", "/v1/tenants/acme/environments", map[string]string{"name": "production"}, 201)
	if out := w.must(t, "GET", "/v1/tenants/acme/environments/production/applications", nil, 200); len(out["applications"].([]any)) != 0 {
		t.Fatalf("the new environment has old applications: %v", out)
	}
	w.makeApp(t, "acme/production/other")
}

// A deletion waiting for a pipeline to drain (its sink hangs) holds up only its own tenant:
// another tenant is created and deleted meanwhile.
func TestSlowDeletionHoldsUpOnlyItsTenant(t *testing.T) {
	w := lifeApp(t)
	release := make(chan struct{})
	var releaseOnce sync.Once
	letGo := func() { releaseOnce.Do(func() { close(release) }) }
	var reached atomic.Int64
	sink := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		reached.Add(1)
		<-release
	}))
	defer sink.Close()
	defer letGo()
	w.must(t, "PUT", "/v1/tenants/acme/egress", map[string]any{"rules": []string{sink.Listener.Addr().String()}}, 200)
	w.must(t, "PUT", appPath("acme/production/other")+"/pipelines/hang", map[string]any{
		"source":   map[string]any{"type": "queue", "queue": "in"},
		"sink":     map[string]any{"type": "http", "url": sink.URL},
		"schedule": "continuous",
		"batch":    map[string]any{"size": 1, "flush_interval": "10ms"},
	}, 200)
	w.publish(t, "acme/production/other", 5)
	waitUntil(t, "the hanging sink to be called", func() bool { return reached.Load() > 0 })
	deleted := make(chan int, 1)
	go func() {
		req, _ := http.NewRequest("DELETE", w.url(appPath("acme/production/other")), nil)
		req.Header.Set("Authorization", "Bearer "+w.admin)
		c := w.client("", nil)
		c.Timeout = 2 * time.Minute // it waits for the drain
		resp, err := c.Do(req)
		if err != nil {
			deleted <- -1
			return
		}
		resp.Body.Close()
		deleted <- resp.StatusCode
	}()
	waitUntil(t, "the deletion to be marked", func() bool {
		st, _, _ := w.call(t, "GET", appPath("acme/production/other")+"/queues", w.admin, nil)
		return st == 404
	})
	w.must(t, "POST", "/v1/tenants", map[string]string{"name": "initech"}, 201)
	w.must(t, "DELETE", "/v1/tenants/initech", nil, 204)
	select {
	case st := <-deleted:
		t.Fatalf("the deletion ended (%d) before the other tenant's changes could show they did not wait", st)
	default:
	}
	letGo() // the sink answers; the drain ends, and the deletion with it
	if st := <-deleted; st != 204 {
		t.Fatalf("delete after the drain: %d", st)
	}
}
