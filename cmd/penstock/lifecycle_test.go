package main

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// lifeApps are the applications of the lifecycle tests: acme/production/shop is deleted (or
// its tenant is), the others must come through untouched.
var lifeApps = []string{"acme/production/shop", "acme/production/other", "globex/production/shop"}

type lifePopulated struct {
	populated
	serviceKey string // acme/production/shop's service key
}

// newLifePopulated makes a stopped data directory with tenants acme and globex and the
// lifeApps, each with a queue "in" holding nothing, a queue "out" that a continuous pipeline
// "copy" filled with two messages from "in", and a secret; and a service key of the shop.
func newLifePopulated(t *testing.T) lifePopulated {
	t.Helper()
	dir := t.TempDir()
	p := serveEnv(t, dir, fabricEnv)
	p.loginAsAdmin()
	spec := filepath.Join(t.TempDir(), "copy.yaml")
	os.WriteFile(spec, []byte("name: copy\nsource: {type: queue, queue: in}\nsink: {type: queue, queue: out}\nschedule: continuous\nbatch: {size: 1}\n"), 0o600)
	steps := [][]string{{"tenant", "create", "acme"}, {"tenant", "create", "globex"}}
	for _, app := range lifeApps {
		te, name := filepath.Dir(app), filepath.Base(app)
		steps = append(steps, [][]string{
			{"app", "create", "--env", te, name},
			{"queue", "create", "--app", app, "in"},
			{"queue", "create", "--app", app, "out"},
			{"pipeline", "apply", "--app", app, "-f", spec},
			{"queue", "publish", "--app", app, "in", "--data", "one"},
			{"queue", "publish", "--app", app, "in", "--data", "two"},
		}...)
	}
	for _, s := range steps {
		if code, out := p.cli("", s...); code != 0 {
			t.Fatalf("penstock %s: %d\n%s", strings.Join(s, " "), code, out)
		}
	}
	for _, app := range lifeApps {
		if code, out := p.cli("token-of-"+filepath.Base(app)+"\n", "secrets", "put", "--app", app, "token"); code != 0 {
			t.Fatalf("secrets put: %d %s", code, out)
		}
		waitDepth(t, p, app, "out", 2)
	}
	code, out := p.cli("", "apikey", "create", "--role", "developer", "--scope", lifeApps[0], "--service")
	var created struct {
		Key string `json:"key"`
	}
	if err := firstJSON(out, &created); code != 0 || err != nil {
		t.Fatalf("apikey create: %d %v\n%s", code, err, out)
	}
	if st := p.whoami(created.Key); st != 200 {
		t.Fatalf("the service key does not work: %d", st)
	}
	if err := p.stop(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	return lifePopulated{populated{dir: dir, home: p.home, addr: strings.TrimPrefix(p.api, "https://")}, created.Key}
}

// waitDepth waits until a queue holds want messages.
func waitDepth(t *testing.T, p *proc, app, queue string, want int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, out := p.cli("", "queue", "stats", "--app", app, queue)
		if code == 0 && strings.Contains(out, `"depth": `+itoa(want)+",") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s queue %s: want depth %d:\n%s", app, queue, want, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

func (p *proc) whoami(key string) int {
	p.t.Helper()
	req, _ := http.NewRequest("GET", p.api+"/v1/auth/whoami", nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := p.client().Do(req)
	if err != nil {
		p.t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// checkDeleted asserts that nothing of the deleted scope is left usable or running and that
// every other application is intact and running, then that the name makes an empty scope.
func checkDeleted(t *testing.T, p *proc, lp lifePopulated, deleted string) {
	t.Helper()
	shop := lifeApps[0]
	if code, out := p.cli("", "app", "list", "--env", "acme/production"); strings.Contains(out, `"shop"`) ||
		deleted == "app" && (code != 0 || !strings.Contains(out, `"other"`)) {
		t.Fatalf("app list: %d\n%s", code, out)
	}
	if code, out := p.cli("", "queue", "stats", "--app", shop, "out"); code == 0 {
		t.Fatalf("the deleted queue answers: %s", out)
	}
	if code, out := p.cli("", "secrets", "list", "--app", shop); code == 0 || !strings.Contains(out, "not_found") {
		t.Fatalf("the deleted application's secrets: %d %s", code, out)
	}
	if _, out := p.cli("", "pipeline", "list", "--app", shop); strings.Contains(out, `"copy"`) {
		t.Fatalf("the deleted application's pipeline is listed:\n%s", out)
	}
	if strings.Contains(p.logs.String(), `"app":"`+shop+`"`) {
		t.Fatalf("the deleted application's pipeline ran after the restart:\n%s", grepLines(p.logs.String(), shop))
	}
	if st := p.whoami(lp.serviceKey); st != 401 {
		t.Fatalf("the deleted application's service key: %d", st)
	}
	intact := lifeApps[1:]
	if deleted == "tenant" {
		intact = lifeApps[2:]
		if code, out := p.cli("", "tenant", "list"); code != 0 || strings.Contains(out, `"acme"`) || !strings.Contains(out, `"globex"`) {
			t.Fatalf("tenant list: %d\n%s", code, out)
		}
	}
	for _, app := range intact {
		if code, out := p.cli("", "secrets", "list", "--app", app); code != 0 || !strings.Contains(out, "token") {
			t.Fatalf("%s secrets: %d %s", app, code, out)
		}
		// Its pipeline still runs: a new message is copied.
		if code, out := p.cli("", "queue", "publish", "--app", app, "in", "--data", "three"); code != 0 {
			t.Fatalf("publish to %s: %d %s", app, code, out)
		}
		waitDepth(t, p, app, "out", 3)
	}
	if code, out := p.cli("", "audit", "verify"); code != 0 || !strings.HasPrefix(out, "ok: ") {
		t.Fatalf("audit verify: %d\n%s", code, out)
	}
	action := map[string]string{"app": "application.deleted", "tenant": "tenant.deleted"}[deleted]
	if code, out := p.cli("", "audit", "list", "--tenant", "acme", "--action", action, "--limit", "1000"); code != 0 || strings.Count(out, `"action": "`+action+`"`) != 1 {
		t.Fatalf("audit of the deletion: %d\n%s", code, out)
	}

	// The name again: empty, with new keys.
	if deleted == "tenant" {
		if code, out := p.cli("", "tenant", "create", "acme"); code != 0 {
			t.Fatalf("tenant create again: %d %s", code, out)
		}
	}
	if code, out := p.cli("", "app", "create", "--env", "acme/production", "shop"); code != 0 {
		t.Fatalf("app create again: %d %s", code, out)
	}
	for _, s := range [][]string{{"queue", "list", "--app", shop}, {"secrets", "list", "--app", shop}, {"pipeline", "list", "--app", shop}} {
		code, out := p.cli("", s...)
		if code != 0 || strings.Contains(out, `"out"`) || strings.Contains(out, "token") || strings.Contains(out, `"copy"`) {
			t.Fatalf("penstock %s on the new application: %d\n%s", strings.Join(s, " "), code, out)
		}
	}
	if st := p.whoami(lp.serviceKey); st != 401 {
		t.Fatalf("the old service key works for the new application: %d", st)
	}
}

// A deletion killed at each of its steps finishes at the next start: nothing of the deleted
// application or tenant is usable or running, and nothing of the others was touched.
func TestDeletionKilledAtEachStepFinishes(t *testing.T) {
	lp := newLifePopulated(t)
	appSteps := []string{"marked", "pipelines-stopped", "connections-closed", "queues-deleted", "keys-destroyed",
		"records-purged", "identity-removed", "audited"}
	type tc struct{ kind, point string }
	var cases []tc
	for _, s := range appSteps {
		cases = append(cases, tc{"app", "delete-app/" + s})
	}
	for _, s := range []string{"marked", "queues-deleted", "files-deleted", "keys-destroyed", "identity-removed"} {
		cases = append(cases, tc{"tenant", "delete-tenant/" + s})
	}
	for _, c := range cases {
		t.Run(strings.ReplaceAll(c.point, "/", "-"), func(t *testing.T) {
			dir := lp.copy(t)
			p := lp.serve(t, dir, append([]string{"PENSTOCK_CRASHPOINT=" + c.point}, fabricEnv...)...)
			args := []string{"app", "delete", "--env", "acme/production", "shop"}
			if c.kind == "tenant" {
				args = []string{"tenant", "delete", "acme", "--confirm", "acme"}
			}
			p.cli("", args...) // the server dies under it
			p.waitExit()
			p = lp.serve(t, dir, fabricEnv...)
			checkDeleted(t, p, lp, c.kind)
		})
	}
}
