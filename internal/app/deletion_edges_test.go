package app

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/fabric"
)

// A tenant created again under a deleted tenant's name shares its audit chain; the new
// tenant's auditors and owners read only the new tenant's events (the old tenant's actors,
// targets and addresses stay for the platform's auditors).
func TestRecreatedTenantReadsOnlyItsOwnAudit(t *testing.T) {
	ta := startApp(t, nil)
	admin := ta.adminSession(t)
	ta.call(t, "POST", "/v1/tenants", admin, map[string]string{"name": "acme"})
	ta.call(t, "POST", "/v1/tenants/acme/environments/production/applications", admin, map[string]string{"name": "payroll-secret-project"})
	ta.call(t, "PUT", "/v1/tenants/acme/environments/production/applications/payroll-secret-project/secrets/bank-api-token", admin, map[string]string{"value": "x"})
	if st, _, raw := ta.call(t, "DELETE", "/v1/tenants/acme", admin, nil); st != 204 {
		t.Fatalf("delete: %d %s", st, raw)
	}
	recreated := time.Now()
	if st, _, raw := ta.call(t, "POST", "/v1/tenants", admin, map[string]string{"name": "acme"}); st != 201 {
		t.Fatalf("recreate: %d %s", st, raw)
	}
	// The new tenant's owner (a different customer, say).
	_, key, _ := ta.call(t, "POST", "/v1/apikeys", admin, map[string]string{"role": "auditor", "scope": "acme"})
	auditor := key["key"].(string)
	ev := ta.auditEvents(t, auditor, "tenant=acme")
	var old []string
	for _, e := range ev.Events {
		if e.Time.Before(recreated) {
			old = append(old, e.Action+" "+e.Target)
		}
	}
	if len(old) > 0 {
		t.Errorf("the new tenant's auditor reads %d events of the deleted tenant, e.g. %q", len(old), old[:min(5, len(old))])
	}
	if len(ev.Events) == 0 {
		t.Error("the new tenant's auditor reads nothing, not even its own creation")
	}
	all := ta.auditEvents(t, admin, "tenant=acme")
	found := false
	for _, e := range all.Events {
		found = found || strings.Contains(e.Target, "payroll-secret-project")
	}
	if !found {
		t.Error("the platform's auditor no longer reads the deleted tenant's events")
	}
}

// Queue creations and publishes racing an application's deletion leave nothing behind: once
// DELETE has answered and the racing requests have ended, the application has no queue.
func TestQueuesRacingADeletionLeaveNothing(t *testing.T) {
	ta := startApp(t, func(c *config.Config) {
		c.API.Limits.RequestRate, c.API.Limits.RequestBurst = 1e6, 1e6
		c.API.Limits.ConnRate, c.API.Limits.ConnBurst = 1e6, 1e6
	})
	admin := ta.adminSession(t)
	ta.call(t, "POST", "/v1/tenants", admin, map[string]string{"name": "acme"})
	ctx := context.Background()
	for round := 0; round < 15; round++ {
		app := fmt.Sprintf("race%d", round)
		base := "/v1/tenants/acme/environments/production/applications/" + app
		if st, _, raw := ta.call(t, "POST", "/v1/tenants/acme/environments/production/applications", admin, map[string]string{"name": app}); st != 201 {
			t.Fatalf("create: %d %s", st, raw)
		}
		var wg sync.WaitGroup
		for i := 0; i < 12; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				q := fmt.Sprintf("q%d", i)
				ta.call(t, "POST", base+"/queues", admin, map[string]any{"name": q})
				ta.call(t, "POST", base+"/queues/"+q+"/messages", admin, map[string]any{"messages": []map[string]any{{"data": `{"pii":"leftover"}`}}})
			}(i)
		}
		time.Sleep(time.Duration(round%5) * 3 * time.Millisecond) // a different interleaving each round
		st, _, raw := ta.call(t, "DELETE", base, admin, nil)
		if st != 204 {
			t.Fatalf("delete: %d %s", st, raw)
		}
		deletedAt := time.Now()
		wg.Wait()
		qs, err := ta.fabric.Queues(ctx, fabric.Ref{Tenant: "acme", Environment: "production", Application: app})
		if err != nil {
			t.Fatal(err)
		}
		if len(qs) > 0 {
			var names []string
			var msgs uint64
			for _, q := range qs {
				names = append(names, q.Name)
				msgs += q.Stats.Depth
			}
			t.Errorf("round %d: after DELETE %s answered 204 (%s ago), the deleted application still has queues %s holding %d messages",
				round, app, time.Since(deletedAt).Round(time.Millisecond), strings.Join(names, ","), msgs)
			return
		}
	}
}

// Nothing is made or stored inside an application that was deleted or never created.
func TestRoutesRefuseAnApplicationThatDoesNotExist(t *testing.T) {
	ta := startApp(t, nil)
	admin := ta.adminSession(t)
	ta.call(t, "POST", "/v1/tenants", admin, map[string]string{"name": "acme"})
	base := "/v1/tenants/acme/environments/production/applications/"
	ta.call(t, "POST", "/v1/tenants/acme/environments/production/applications", admin, map[string]string{"name": "shop"})
	if st, _, raw := ta.call(t, "DELETE", base+"shop", admin, nil); st != 204 {
		t.Fatalf("delete: %d %s", st, raw)
	}
	for _, app := range []string{"shop", "never-made"} {
		st, _, raw := ta.call(t, "POST", base+app+"/queues", admin, map[string]any{"name": "in"})
		t.Logf("POST queue on %s: %d %s", app, st, raw)
		st2, _, raw2 := ta.call(t, "POST", base+app+"/queues/in/messages", admin, map[string]any{"messages": []map[string]any{{"data": `{"a":1}`}}})
		t.Logf("publish on %s: %d %s", app, st2, raw2)
		st3, _, raw3 := ta.call(t, "PUT", base+app+"/secrets/s", admin, map[string]string{"value": "v"})
		t.Logf("secret on %s: %d %s", app, st3, raw3)
		st4, _, raw4 := ta.call(t, "PUT", base+app+"/pipelines/p", admin, map[string]any{
			"source": map[string]any{"type": "queue", "queue": "in"}, "sink": map[string]any{"type": "file", "path": "x.jsonl"}, "schedule": "continuous"})
		t.Logf("pipeline on %s: %d %s", app, st4, raw4)
		if st != 404 || st2 != 404 || st3 != 404 || st4 != 404 {
			t.Errorf("%s: queue %d, publish %d, secret %d, pipeline %d; want 404 for an application that does not exist", app, st, st2, st3, st4)
		}
	}
}

// A secret cannot be written under an application name before the application exists, so a
// new application starts empty.
func TestNoSecretBeforeItsApplication(t *testing.T) {
	ta := startApp(t, nil)
	admin := ta.adminSession(t)
	ta.call(t, "POST", "/v1/tenants", admin, map[string]string{"name": "acme"})
	base := "/v1/tenants/acme/environments/production/applications/"
	if st, _, raw := ta.call(t, "PUT", base+"future/secrets/planted", admin, map[string]string{"value": "from-before"}); st != 404 {
		t.Fatalf("a secret before its application: %d %s", st, raw)
	}
	if st, _, raw := ta.call(t, "POST", "/v1/tenants/acme/environments/production/applications", admin, map[string]string{"name": "future"}); st != 201 {
		t.Fatalf("create: %d %s", st, raw)
	}
	_, out, raw := ta.call(t, "GET", base+"future/secrets", admin, nil)
	if strings.Contains(raw, "planted") {
		t.Errorf("the new application starts with a secret written before it existed: %v", out)
	}
}

// Creating what exists says which thing exists, by name.
func TestAlreadyExistsNamesTheResource(t *testing.T) {
	ta := startApp(t, nil)
	admin := ta.adminSession(t)
	for _, c := range []struct {
		path string
		body map[string]string
		want string
	}{
		{"/v1/tenants", map[string]string{"name": "acme"}, `tenant "acme" already exists`},
		{"/v1/tenants/acme/environments/production/applications", map[string]string{"name": "billing"}, `application "billing" in acme/production already exists`},
		{"/v1/tenants/acme/environments", map[string]string{"name": "staging"}, `environment "staging" of tenant "acme" already exists`},
	} {
		first, _, _ := ta.call(t, "POST", c.path, admin, c.body)
		st, body, raw := ta.call(t, "POST", c.path, admin, c.body)
		if (first != 201 && c.path != "/v1/tenants/acme/environments") || st != 409 || body["code"] != "already_exists" || body["message"] != c.want {
			t.Errorf("POST %s twice: %d then %d %s, want 409 %q", c.path, first, st, raw, c.want)
		}
	}
}

// A request inside an application that does not exist says which application.
func TestNotFoundNamesTheScope(t *testing.T) {
	ta := startApp(t, nil)
	admin := ta.adminSession(t)
	ta.call(t, "POST", "/v1/tenants", admin, map[string]string{"name": "acme"})
	st, body, raw := ta.call(t, "GET", "/v1/tenants/acme/environments/production/applications/nope/queues", admin, nil)
	if st != 404 || body["message"] != "no such application acme/production/nope" {
		t.Fatalf("%d %s", st, raw)
	}
	// A caller with nothing in a tenant learns nothing about it.
	_, key, _ := ta.call(t, "POST", "/v1/apikeys", admin, map[string]string{"role": "developer", "scope": "acme/production"})
	ta.call(t, "POST", "/v1/tenants", admin, map[string]string{"name": "globex"})
	st, body, raw = ta.call(t, "GET", "/v1/tenants/globex/environments/production/applications/nope/queues", key["key"].(string), nil)
	if st != 404 || body["message"] != "no such resource" {
		t.Fatalf("another tenant's missing application: %d %s", st, raw)
	}
}
