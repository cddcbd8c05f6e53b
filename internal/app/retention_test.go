package app

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/penstock/penstock/internal/api"
	"github.com/penstock/penstock/internal/audit"
	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/keyring"
	"github.com/penstock/penstock/internal/retention"
	"github.com/penstock/penstock/internal/testenv"
)

// clock is a controllable clock: the real one, moved ahead by the test.
type clock struct{ ahead atomic.Int64 }

func (c *clock) now() time.Time                { return time.Now().Add(time.Duration(c.ahead.Load())) }
func (c *clock) advance(d time.Duration)       { c.ahead.Add(int64(d)) }
func (c *clock) at(t0 time.Time) time.Duration { return c.now().Sub(t0) }

const day = 24 * time.Hour

// runRetention runs retention as the scheduler does and returns what it did.
func runRetention(t *testing.T, ta *testApp, dry bool) retention.RunResult {
	t.Helper()
	_, _, raw := ta.call(t, "POST", "/v1/retention/run", "", map[string]any{"dry_run": dry})
	var res retention.RunResult
	if err := json.Unmarshal([]byte(raw), &res); err != nil || res.At.IsZero() {
		t.Fatalf("retention run: %s", raw)
	}
	return res
}

func actionsOf(res retention.RunResult) []string {
	var out []string
	for _, a := range res.Actions {
		s := a.Action + " " + a.Tenant + "/" + a.Environment
		if a.Days != 0 {
			s += " " + strconv.Itoa(a.Days)
		}
		if a.Error != "" {
			s += " error: " + a.Error
		}
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

// envStatus reads an environment as the platform administrator (whose calls are not use), with
// the retention warning header of the response.
func envStatus(t *testing.T, ta *testApp, tenant, env string) (retention.EnvStatus, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", ta.url("/v1/tenants/"+tenant+"/environments/"+env), nil)
	req.Header.Set("Authorization", "Bearer "+ta.adminSession(t))
	resp, err := ta.client("", nil).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Retention retention.EnvStatus `json:"retention"`
	}
	if resp.StatusCode != 200 {
		t.Fatalf("env get %s/%s: %d", tenant, env, resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out.Retention, resp.Header.Get(api.RetentionWarningHeader)
}

// An environment nobody uses is warned on each date (by mail, through a real SMTP server),
// then deleted with its keys: nothing of it reads from the store or from a backup taken
// before. The exempt production environment and the test environment in use stay; a restart
// between two warnings sends nothing twice.
func TestRetentionWarnsThenDeletesAnUnusedEnvironment(t *testing.T) {
	mp := testenv.StartMailpit(t)
	clk := &clock{}
	targetDir := t.TempDir()
	dataDir := t.TempDir()
	mutate := func(c *config.Config) {
		fastNotify(c)
		c.DataDir = dataDir
		c.API.Limits.RequestRate, c.API.Limits.RequestBurst = 1e6, 1e6
		c.API.Limits.ConnRate, c.API.Limits.ConnBurst = 1e6, 1e6
		c.Backup.Target, c.Backup.Schedule = "file://"+targetDir, 0
		c.Retention.Exempt = []string{"*/production"}
		c.Retention.CheckEvery = time.Hour // the test runs it when it has moved the clock
	}
	ta := startAppOpts(t, mutate, nil, WithClock(clk.now))
	t0 := clk.now()
	ta.must(t, "POST", "/v1/tenants", map[string]string{"name": "acme"}, 201)
	for _, env := range []string{"production", "staging", "test"} {
		ta.must(t, "POST", "/v1/tenants/acme/environments/"+env+"/applications", map[string]string{"name": "shop"}, 201)
		ta.must(t, "POST", appPath("acme/"+env+"/shop")+"/queues", map[string]any{"name": "orders"}, 201)
	}
	owner := ta.must(t, "POST", "/v1/apikeys", map[string]any{"role": "owner", "scope": "acme"}, 201)["key"].(string)
	publish := func(env, data string) {
		t.Helper()
		st, _, raw := ta.call(t, "POST", appPath("acme/"+env+"/shop")+"/queues/orders/messages", owner,
			map[string]any{"messages": []map[string]string{{"data": data}}})
		if st != 200 {
			t.Fatalf("publish to %s: %d %s", env, st, raw)
		}
	}
	for _, env := range []string{"production", "staging", "test"} {
		publish(env, "kept-in-"+env)
	}
	email := map[string]any{"type": "email", "smtp_host": "localhost", "smtp_port": mp.SMTPPort, "tls": "starttls",
		"username": mp.User, "password": mp.Password, "from": "Penstock <alerts@penstock.test>", "to": []string{"owner@acme.test"},
		"ca_pem": mp.CAPEM}
	ta.must(t, "PUT", "/v1/tenants/acme/egress", map[string]any{"rules": []string{"localhost:" + strconv.Itoa(mp.SMTPPort)}}, 200)
	ta.must(t, "PUT", "/v1/notify/channels/owners?tenant=acme", email, 200)
	// No rule for retention.warning: the warnings take the built-in one (every channel).

	if got := actionsOf(runRetention(t, ta, false)); len(got) != 0 {
		t.Fatalf("first run: %q", got)
	}
	backup := (&backupWorld{testApp: ta, admin: ta.adminSession(t)}).job(t, "POST", "/v1/backups", map[string]any{})
	if backup["state"] != "done" {
		t.Fatalf("backup: %v", backup)
	}
	backedUp := time.Now()

	mails := func() []testenv.Mail {
		var out []testenv.Mail
		for _, m := range mp.Messages(t) {
			if strings.Contains(m.Subject, "retention.warning") {
				out = append(out, m)
			}
		}
		return out
	}
	// Each date: the test environment is used (through the API, by the tenant's key), staging
	// is not; the run sends one warning, by mail.
	for i, step := range []struct {
		at   time.Duration
		days int
	}{{61 * day, 30}, {84 * day, 7}, {89*day + time.Hour, 1}} {
		clk.advance(step.at - clk.at(t0))
		publish("test", fmt.Sprint("still in use ", i))
		if got := actionsOf(runRetention(t, ta, false)); !slices.Equal(got, []string{"warn acme/staging " + strconv.Itoa(step.days)}) {
			t.Fatalf("run at day %d: %q", step.at/day, got)
		}
		waitUntil(t, fmt.Sprintf("the %d-day warning by mail", step.days), func() bool { return len(mails()) == i+1 })
		m := mails()[i]
		if !strings.Contains(m.Subject, "staging") || !strings.Contains(m.Text, "will be deleted with all of its data on") ||
			!strings.Contains(m.Text, fmt.Sprintf("%d-day warning", step.days)) || m.To[0] != "owner@acme.test" {
			t.Fatalf("warning mail %d: %s\n%s", i, m.Subject, m.Text)
		}
		if strings.Contains(m.Text, "kept-in-") || strings.Contains(m.Text, mp.Password) {
			t.Fatalf("the warning carries a payload or the SMTP password:\n%s", m.Text)
		}
		st, header := envStatus(t, ta, "acme", "staging")
		due := t0.Add(90 * day)
		if st.State != "warned" || st.DeleteAt.Before(due.Add(-time.Minute)) || st.DeleteAt.After(due.Add(2*time.Hour)) ||
			!strings.Contains(header, "acme/staging") {
			t.Fatalf("staging after the %d-day warning: %+v, header %q", step.days, st, header)
		}
		if i == 0 {
			// Warnings and activity are in the store: a restart sends nothing again.
			ta.stop()
			admin := ta.admin
			ta = startAppOpts(t, mutate, nil, WithClock(clk.now))
			ta.admin = admin
			if got := actionsOf(runRetention(t, ta, false)); len(got) != 0 {
				t.Fatalf("run after the restart: %q", got)
			}
		}
	}
	report := ta.must(t, "GET", "/v1/retention?tenant=acme", nil, 200)
	states := map[string]string{}
	for _, e := range report["environments"].([]any) {
		m := e.(map[string]any)
		states[m["environment"].(string)] = fmt.Sprint(m["state"], " ", m["exempt_by"])
	}
	if states["production"] != "exempt retention.exempt */production" || states["test"] != "active <nil>" || states["staging"] != "warned <nil>" {
		t.Fatalf("report: %v", states)
	}
	if _, header := envStatus(t, ta, "acme", "test"); header != "" {
		t.Fatalf("the used environment's responses warn: %q", header)
	}

	if !slices.ContainsFunc(allRecords(t, ta.App, "acme"), func(r keyring.Record) bool {
		return r.Bucket == retention.Bucket && r.Key == "acme.staging.activity"
	}) {
		t.Fatal("no activity record of staging in the store")
	}
	// The deletion waits for the grace after the last warning (24 h): at the date it is due.
	clk.advance(90*day + 2*time.Hour - clk.at(t0))
	publish("test", "used on the day")
	if got := actionsOf(runRetention(t, ta, true)); !slices.Equal(got, []string{"delete acme/staging"}) {
		t.Fatalf("dry run: %q", got)
	}
	if st, _ := envStatus(t, ta, "acme", "staging"); st.State != "due" {
		t.Fatalf("after the dry run: %+v", st)
	}
	if got := actionsOf(runRetention(t, ta, false)); !slices.Equal(got, []string{"delete acme/staging"}) {
		t.Fatalf("run: %q", got)
	}
	out := ta.must(t, "GET", "/v1/tenants/acme/environments", nil, 200)
	if envs := fmt.Sprint(out["environments"]); strings.Contains(envs, "staging") || !strings.Contains(envs, "test") {
		t.Fatalf("environments after retention: %s", envs)
	}
	ctx := context.Background()
	if gone, err := ta.keys.IsDestroyed(ctx, keyring.Scope{Tenant: "acme", Environment: "staging"}); err != nil || !gone {
		t.Fatalf("staging's keys: %v %v", gone, err)
	}
	if st, _, raw := ta.call(t, "GET", appPath("acme/staging/shop")+"/queues/orders", "", nil); st != 404 {
		t.Fatalf("staging's queue: %d %s", st, raw)
	}
	for _, r := range allRecords(t, ta.App, "acme") {
		if strings.HasPrefix(r.Key, "acme.staging.") {
			t.Fatalf("a record of staging is left: %s %s", r.Bucket, r.Key)
		}
	}
	ev := ta.auditEvents(t, "", "tenant=acme")
	warned, deleted := 0, 0
	for _, e := range ev.Events {
		switch {
		case e.Action == "retention.warned" && e.Environment == "staging":
			warned++
		case e.Action == "environment.deleted" && e.Environment == "staging":
			deleted++
			if e.Actor != retention.Actor || !strings.Contains(e.Details["reason"], "no use since") || e.Result != audit.ResultOK {
				t.Fatalf("deletion event: %+v", e)
			}
		}
	}
	if warned != 3 || deleted != 1 {
		t.Fatalf("audit: %d warnings, %d deletions of staging", warned, deleted)
	}
	if got := actionsOf(runRetention(t, ta, false)); len(got) != 0 {
		t.Fatalf("the run after: %q", got)
	}
	// A new environment of the same name starts afresh: no warning stands for it.
	ta.must(t, "POST", "/v1/tenants/acme/environments", map[string]string{"name": "staging"}, 201)
	if st, header := envStatus(t, ta, "acme", "staging"); header != "" || len(st.WarnAt) > 0 && st.WarnAt[0].Sent {
		t.Fatalf("the new staging: %+v %q", st, header)
	}
	for _, env := range []string{"production", "test"} {
		if got := (&backupWorld{testApp: ta}).drain(t, owner, "acme/"+env+"/shop", "orders", 1); !got["kept-in-"+env] {
			t.Fatalf("%s lost its messages: %v", env, got)
		}
	}

	// The backup taken before: staging's part no longer opens, the others restore.
	ta.stop()
	nd := masterKeyOnly(t, dataDir)
	rep, err := restoreInto(t, nd, "file://"+targetDir, backup["backup"].(string), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(rep.Skipped, func(s string) bool { return strings.Contains(s, "acme/staging") }) {
		t.Fatalf("restore report: %+v", rep)
	}
	tb := startApp(t, func(c *config.Config) { c.DataDir = nd })
	tb.admin = ta.admin
	out = tb.must(t, "GET", "/v1/tenants/acme/environments", nil, 200)
	if envs := fmt.Sprint(out["environments"]); strings.Contains(envs, "staging") || !strings.Contains(envs, "production") {
		t.Fatalf("environments restored from the backup taken before: %s", envs)
	}
	if st, _, raw := tb.call(t, "GET", appPath("acme/staging/shop")+"/queues/orders", "", nil); st != 404 {
		t.Fatalf("staging's queue after the restore: %d %s", st, raw)
	}
	if gone, err := tb.keys.IsDestroyed(ctx, keyring.Scope{Tenant: "acme", Environment: "staging"}); err != nil || !gone {
		t.Fatalf("staging's keys after the restore: %v %v", gone, err)
	}
	// The backup's records of use are as old as the backup: the restored environments count
	// from the restore, with no warning standing.
	for _, env := range []string{"production", "test"} {
		st, header := envStatus(t, tb, "acme", env)
		if !st.Since.After(backedUp) || header != "" || st.State != "active" && st.State != "exempt" {
			t.Fatalf("acme/%s after the restore: %+v %q", env, st, header)
		}
	}
}

// What is in use stays however quiet: an environment whose only use is a connected native
// client, one whose only use is a continuous pipeline. A tenant's own policy (a shorter
// inactive_after, an exempt environment) applies to it alone; a tenant's own rule for
// retention.warning decides where its warnings go, and a tenant without one gets them on every
// channel. Bad policies and deletions without their confirmation are refused, naming the field.
func TestRetentionKeepsWhatIsInUseAndFollowsTenantPolicies(t *testing.T) {
	mp := testenv.StartMailpit(t)
	clk := &clock{}
	ta := startAppOpts(t, func(c *config.Config) {
		fastNotify(c)
		c.Fabric.NATSListen = "127.0.0.1:0"
		c.Retention.CheckEvery = time.Hour
		// Many calls from one address, each on a connection of its own.
		c.API.Limits.RequestRate, c.API.Limits.RequestBurst = 1e6, 1e6
		c.API.Limits.ConnRate, c.API.Limits.ConnBurst = 1e6, 1e6
	}, nil, WithClock(clk.now))
	t0 := clk.now()
	channel := func(tenant, name, to string) {
		t.Helper()
		ta.must(t, "PUT", "/v1/notify/channels/"+name+"?tenant="+tenant, map[string]any{"type": "email", "smtp_host": "localhost",
			"smtp_port": mp.SMTPPort, "tls": "starttls", "username": mp.User, "password": mp.Password, "from": "alerts@penstock.test",
			"to": []string{to}, "ca_pem": mp.CAPEM}, 200)
	}
	for _, tenant := range []string{"acme", "globex"} {
		ta.must(t, "POST", "/v1/tenants", map[string]string{"name": tenant}, 201)
		ta.must(t, "PUT", "/v1/tenants/"+tenant+"/egress", map[string]any{"rules": []string{"localhost:" + strconv.Itoa(mp.SMTPPort)}}, 200)
	}
	channel("acme", "owners", "owners@acme.test")
	channel("acme", "ops", "ops@acme.test")
	channel("globex", "all", "all@globex.test")
	ta.must(t, "PUT", "/v1/notify/rules/unused?tenant=acme", map[string]any{"event": "retention.warning", "channels": []string{"ops"}}, 200)

	// acme/production: a native client, connected and quiet.
	ta.must(t, "POST", "/v1/tenants/acme/environments/production/applications", map[string]string{"name": "shop"}, 201)
	svc := ta.must(t, "POST", "/v1/apikeys", map[string]any{"role": "developer", "scope": "acme/production/shop", "service": true}, 201)["key"].(string)
	nc, err := nats.Connect("tls://"+ta.eng.NativeAddrs().NATS, nats.UserInfo("acme/production", svc),
		nats.Secure(nil), nats.RootCAs(filepath.Join(ta.cfg.DataDir, "tls", "ca.crt")))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	// acme/staging: a continuous pipeline between two queues nobody else touches.
	ta.must(t, "POST", "/v1/tenants/acme/environments/staging/applications", map[string]string{"name": "etl"}, 201)
	etl := appPath("acme/staging/etl")
	for _, q := range []string{"in", "out"} {
		ta.must(t, "POST", etl+"/queues", map[string]any{"name": q}, 201)
	}
	ta.must(t, "PUT", etl+"/pipelines/copy", map[string]any{"source": map[string]any{"type": "queue", "queue": "in"},
		"sink": map[string]any{"type": "queue", "queue": "out"}, "schedule": "continuous"}, 200)
	waitUntil(t, "the continuous run", func() bool {
		_, out, _ := ta.call(t, "GET", etl+"/pipelines/copy/runs", "", nil)
		runs, _ := out["runs"].([]any)
		return len(runs) > 0 && runs[0].(map[string]any)["status"] == "running"
	})

	// Bad policies name the field; a platform admin sets globex's: 45 days, staging exempt.
	for _, bad := range []struct {
		body  map[string]any
		field string
	}{
		{map[string]any{"inactive_after": "soon"}, "inactive_after"},
		{map[string]any{"inactive_after": "30m"}, "inactive_after"},
		{map[string]any{"exempt": []string{"Bad Name"}}, "exempt[0]"},
	} {
		if st, out, raw := ta.call(t, "PUT", "/v1/retention/tenants/globex", "", bad.body); st != 422 || !strings.Contains(fmt.Sprint(out["message"]), bad.field) {
			t.Fatalf("policy %v: %d %s", bad.body, st, raw)
		}
	}
	ta.must(t, "PUT", "/v1/retention/tenants/globex", map[string]any{"inactive_after": "70d", "exempt": []string{"staging"}}, 200)
	owner := ta.must(t, "POST", "/v1/apikeys", map[string]any{"role": "owner", "scope": "acme"}, 201)["key"].(string)
	for _, c := range []struct {
		method, path string
		status       int
		code         string
	}{
		{"PUT", "/v1/retention/tenants/acme", 403, "forbidden"},
		{"GET", "/v1/retention", 403, "forbidden"},
		{"GET", "/v1/retention?tenant=globex", 404, "not_found"},
		{"DELETE", "/v1/tenants/acme/environments/test", 400, "confirmation_required"},
		{"DELETE", "/v1/tenants/acme/environments/test?confirm=globex/test", 400, "confirmation_required"},
		{"GET", "/v1/tenants/acme/environments/nope", 404, "not_found"},
	} {
		var body any
		if c.method == "PUT" {
			body = map[string]any{"inactive_after": "0"}
		}
		if st, out, raw := ta.call(t, c.method, c.path, owner, body); st != c.status || out["code"] != c.code {
			t.Fatalf("%s %s as acme's owner: %d %s", c.method, c.path, st, raw)
		}
	}

	if got := actionsOf(runRetention(t, ta, false)); len(got) != 0 {
		t.Fatalf("first run: %q", got)
	}
	clk.advance(41 * day)
	globexWarned := []string{"warn globex/production 30", "warn globex/test 30"}
	if got := actionsOf(runRetention(t, ta, false)); !slices.Equal(got, globexWarned) {
		t.Fatalf("run at day 41: %q", got)
	}
	if st, _ := envStatus(t, ta, "globex", "staging"); st.State != "exempt" || st.ExemptBy != "tenant policy" || st.InactiveAfter != "70d" {
		t.Fatalf("globex/staging: %+v", st)
	}
	// A longer policy voids the warnings (they named an earlier date); back to the shorter
	// one, they start again.
	ta.must(t, "PUT", "/v1/retention/tenants/globex", map[string]any{"inactive_after": "120d", "exempt": []string{"staging"}}, 200)
	if got := actionsOf(runRetention(t, ta, false)); !slices.Equal(got, []string{"cleared globex/production", "cleared globex/test"}) {
		t.Fatalf("run after the lengthening: %q", got)
	}
	ta.must(t, "PUT", "/v1/retention/tenants/globex", map[string]any{"inactive_after": "70d", "exempt": []string{"staging"}}, 200)
	if got := actionsOf(runRetention(t, ta, false)); !slices.Equal(got, globexWarned) {
		t.Fatalf("run after the shortening: %q", got)
	}
	clk.advance(64*day - clk.at(t0))
	if got := actionsOf(runRetention(t, ta, false)); !slices.Equal(got, []string{"warn acme/test 30", "warn globex/production 7", "warn globex/test 7"}) {
		t.Fatalf("run at day 64: %q", got)
	}
	clk.advance(69*day + time.Hour - clk.at(t0))
	if got := actionsOf(runRetention(t, ta, false)); !slices.Equal(got, []string{"warn globex/production 1", "warn globex/test 1"}) {
		t.Fatalf("run at day 69: %q", got)
	}
	for env, kind := range map[string]string{"production": "native", "staging": "pipeline"} {
		st, header := envStatus(t, ta, "acme", env)
		if st.State != "active" || st.LastActivityKind != kind && !(kind == "pipeline" && st.LastActivityKind == "consume") || header != "" ||
			st.LastActivity.Before(t0.Add(60*day)) {
			t.Fatalf("acme/%s, in use: %+v %q", env, st, header)
		}
	}
	waitUntil(t, "seven warnings by mail", func() bool { return len(mp.Messages(t)) == 7 })
	to := map[string]int{}
	for _, m := range mp.Messages(t) {
		to[m.To[0]]++
	}
	if to["ops@acme.test"] != 1 || to["owners@acme.test"] != 0 || to["all@globex.test"] != 6 {
		t.Fatalf("warnings went to %v", to)
	}
	// globex's environments go after the grace; acme's own rule and exemptions are untouched.
	clk.advance(70*day + time.Hour + 2*retention.Settle - clk.at(t0))
	if got := actionsOf(runRetention(t, ta, false)); !slices.Equal(got, []string{"delete globex/production", "delete globex/test"}) {
		t.Fatalf("run at day 70: %q", got)
	}
	out := ta.must(t, "GET", "/v1/tenants/globex/environments", nil, 200)
	if envs := fmt.Sprint(out["environments"]); envs != "[staging]" {
		t.Fatalf("globex after retention: %s", envs)
	}
	if !nc.IsConnected() {
		t.Fatal("acme's native client was disconnected")
	}

	// A record that does not read (damage): that environment is said to be in error and is
	// never deleted; the others' reports and runs go on.
	st, err := ta.keys.Sealed(context.Background(), retention.Bucket, "retention")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Put(context.Background(), keyring.Scope{Tenant: "acme", Environment: "test"}, "activity", []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	report := ta.must(t, "GET", "/v1/retention", nil, 200)
	states := map[string]string{}
	for _, e := range report["environments"].([]any) {
		m := e.(map[string]any)
		states[fmt.Sprint(m["tenant"], "/", m["environment"])] = fmt.Sprint(m["state"])
	}
	if states["acme/test"] != "error" || states["acme/production"] != "active" || states["globex/staging"] != "exempt" {
		t.Fatalf("report with a damaged record: %v", states)
	}
	if got := actionsOf(runRetention(t, ta, false)); len(got) != 1 || !strings.HasPrefix(got[0], "error acme/test") {
		t.Fatalf("run with a damaged record: %q", got)
	}
	if out := ta.must(t, "GET", "/v1/tenants/acme/environments", nil, 200); !strings.Contains(fmt.Sprint(out["environments"]), "test") {
		t.Fatalf("the environment with a damaged record was deleted: %v", out)
	}
}
