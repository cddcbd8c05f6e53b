package pipeline_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/penstock/penstock/internal/app"
	"github.com/penstock/penstock/internal/audit"
	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/connector"
	"github.com/penstock/penstock/internal/connector/conformance"
	"github.com/penstock/penstock/internal/connector/webhook"
	"github.com/penstock/penstock/internal/egress"
	"github.com/penstock/penstock/internal/fabric"
	"github.com/penstock/penstock/internal/identity"
	"github.com/penstock/penstock/internal/keyring"
	"github.com/penstock/penstock/internal/keyring/keyringtest"
	"github.com/penstock/penstock/internal/pipeline"
	"github.com/penstock/penstock/internal/redact"
	"github.com/penstock/penstock/internal/secrets"
	"github.com/penstock/penstock/internal/testenv"
)

var ctx = context.Background()

type nopAudit struct{}

func (nopAudit) Append(_ context.Context, e audit.Event) (audit.Event, error) { return e, nil }

type harness struct {
	t       *testing.T
	svc     *pipeline.Service
	fab     *fabric.Service
	secrets *secrets.Store
	app     keyring.Scope
	files   string
	rules   []egress.Rule
	mu      sync.Mutex
	opts    pipeline.Options
}

// reopen starts a new pipeline service on the same stores, as a restarted process would.
func (h *harness) reopen() {
	h.t.Helper()
	svc, err := pipeline.Open(ctx, h.opts)
	if err != nil {
		h.t.Fatal(err)
	}
	h.svc = svc
}

// open starts an embedded engine, the fabric, the secrets store and the pipeline service for
// application acme/production/shop, whose tenant may reach 127.0.0.1 (as the tests
// allow it explicitly).
func open(t *testing.T) *harness {
	t.Helper()
	dir := t.TempDir()
	st, err := keyringtest.Open(ctx, filepath.Join(dir, "data"))
	if err != nil {
		t.Fatal(err)
	}
	icfg := identity.DefaultConfig()
	icfg.Argon2 = identity.Argon2Params{Memory: 1 << 10, Time: 1, Threads: 1}
	ids, err := identity.Open(ctx, st.Platform, st.Keyring, icfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ids.CreateTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	if _, err := ids.CreateApp(ctx, "acme", "production", "shop"); err != nil {
		t.Fatal(err)
	}
	fab, err := fabric.Open(ctx, fabric.Options{Engine: st.Engine, Identity: ids, Audit: nopAudit{}, Config: config.Default().Fabric,
		Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	sec, err := secrets.New(ctx, st.Keyring)
	if err != nil {
		t.Fatal(err)
	}
	loop, _ := egress.ParseRule("127.0.0.1")
	h := &harness{t: t, fab: fab, secrets: sec, app: keyring.Scope{Tenant: "acme", Environment: "production", Application: "shop"},
		files: filepath.Join(dir, "files"), rules: []egress.Rule{loop}}
	h.opts = pipeline.Options{Keyring: st.Keyring, Fabric: fab, Registry: app.Connectors(), FilesRoot: h.files,
		Logger: slog.New(slog.DiscardHandler), DrainTimeout: 10 * time.Second,
		Egress: func(tenant string) egress.Policy {
			h.mu.Lock()
			defer h.mu.Unlock()
			return egress.Policy{Tenant: tenant, Rules: append([]egress.Rule(nil), h.rules...)}
		},
		Secrets: func(ctx context.Context, a keyring.Scope, name string) (redact.Secret, error) {
			v, _, err := sec.Get(ctx, a, name)
			return v, err
		},
		Apps: func() []keyring.Scope { return []keyring.Scope{h.app} }}
	if h.svc, err = pipeline.Open(ctx, h.opts); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		h.svc.Close()
		fab.Close()
		ids.Close()
		st.Close()
	})
	return h
}

func (h *harness) file(name, content string) {
	h.t.Helper()
	p := filepath.Join(h.files, "acme", name)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		h.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) apply(spec string) pipeline.Pipeline {
	h.t.Helper()
	p, _, err := h.svc.Apply(ctx, h.app, []byte(spec))
	if err != nil {
		h.t.Fatal(err)
	}
	return p
}

// runAndWait starts a run and waits for it to end, returning it.
func (h *harness) runAndWait(name string) pipeline.Run {
	h.t.Helper()
	id, err := h.svc.RunNow(ctx, h.app, name)
	if err != nil {
		h.t.Fatal(err)
	}
	deadline := time.Now().Add(120 * time.Second)
	for time.Now().Before(deadline) {
		runs, _ := h.svc.Runs(ctx, h.app, name)
		for _, r := range runs {
			// A run asked for is "queued" until its worker takes it, then "running".
			if r.ID == id && r.Status != "running" && r.Status != "queued" {
				return r
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	h.t.Fatalf("run of %s did not end", name)
	return pipeline.Run{}
}

// oneDeadRecord runs a pipeline of three records into out/<name>.jsonl, checks that two
// reached the file as want and one the dead-letter queue, and returns that one.
func (h *harness) oneDeadRecord(name, want string) pipeline.DeadRecord {
	h.t.Helper()
	r := h.runAndWait(name)
	if r.Status != "succeeded" || r.In != 3 || r.Out != 2 || r.Failed != 1 {
		h.t.Fatalf("run: %+v", r)
	}
	out, _ := os.ReadFile(filepath.Join(h.files, "acme", "out", name+".jsonl"))
	if string(out) != want {
		h.t.Fatalf("sink file: %q", out)
	}
	ds, err := h.fab.Consume(ctx, fabric.Ref{Tenant: "acme", Environment: "production", Application: "shop", Name: name + "-dlq"}, 10, time.Second)
	if err != nil || len(ds) != 1 {
		h.t.Fatalf("dead letters: %d %v", len(ds), err)
	}
	var d pipeline.DeadRecord
	if err := json.Unmarshal(ds[0].Data, &d); err != nil {
		h.t.Fatal(err)
	}
	return d
}

func exec(t *testing.T, c *pgx.Conn, sql string) {
	t.Helper()
	if _, err := c.Exec(ctx, sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func TestCSVToPostgresWithMapAndFilter(t *testing.T) {
	h := open(t)
	c := testenv.PostgreSQL(t)
	tbl := testenv.Table(t, c, "orders", "id bigint PRIMARY KEY, customer text, cents bigint, placed timestamptz")
	var csv strings.Builder
	csv.WriteString("id,customer,amount,status,placed\n")
	for i := 1; i <= 1000; i++ {
		status := "paid"
		if i%10 == 0 {
			status = "void"
		}
		fmt.Fprintf(&csv, "%d,customer %d,%d.25,%s,2026-11-%02dT10:00:00Z\n", i, i, i, status, 1+i%28)
	}
	h.file("in/orders.csv", csv.String())
	h.apply(fmt.Sprintf(`
name: orders-in
source: {type: file, path: in/orders.csv}
transforms:
  - filter: status != "void"
  - map: '{id: int(id), customer: upper(customer), cents: int(float(amount) * 100), placed: placed}'
sink:
  type: postgres
  host: 127.0.0.1
  database: test
  user: postgres
  sslmode: disable
  table: %s
  mode: upsert
  key: [id]
batch: {size: 128}
`, tbl))
	r := h.runAndWait("orders-in")
	if r.Status != "succeeded" || r.In != 1000 || r.Out != 900 || r.Filtered != 100 || r.Failed != 0 {
		t.Fatalf("run: %+v", r)
	}
	var n, sum int64
	if err := c.QueryRow(ctx, "SELECT count(*), sum(cents) FROM "+tbl).Scan(&n, &sum); err != nil {
		t.Fatal(err)
	}
	var want int64
	for i := int64(1); i <= 1000; i++ {
		if i%10 != 0 {
			want += i*100 + 25
		}
	}
	if n != 900 || sum != want {
		t.Fatalf("table has %d rows summing %d, want 900 and %d", n, sum, want)
	}
	var who string
	if err := c.QueryRow(ctx, "SELECT customer FROM "+tbl+" WHERE id = 7").Scan(&who); err != nil || who != "CUSTOMER 7" {
		t.Fatalf("row 7: %q %v", who, err)
	}
	// The checkpoint holds: a second run reads nothing; appended rows are read next.
	if r := h.runAndWait("orders-in"); r.In != 0 || r.Status != "succeeded" {
		t.Fatalf("second run: %+v", r)
	}
	f, _ := os.OpenFile(filepath.Join(h.files, "acme", "in/orders.csv"), os.O_APPEND|os.O_WRONLY, 0)
	fmt.Fprintf(f, "1001,late,1.00,paid,2026-11-30T10:00:00Z\n")
	f.Close()
	if r := h.runAndWait("orders-in"); r.In != 1 || r.Out != 1 {
		t.Fatalf("third run: %+v", r)
	}
}

func TestBadRecordsGoToTheDeadLetterQueue(t *testing.T) {
	h := open(t)
	h.file("mixed.jsonl", `{"n": 1}
{"n": "two"}
{"n": 3}
`)
	h.apply(`
name: mixed
source: {type: file, path: mixed.jsonl}
transforms:
  - validate: {schema: {type: object, properties: {n: {type: integer}}, required: [n]}}
  - map: '{n: n * 10}'
sink: {type: file, path: out/mixed.jsonl}
`)
	d := h.oneDeadRecord("mixed", "{\"n\":10}\n{\"n\":30}\n")
	if d.Stage != "transform" || d.Record["n"] != "two" || !strings.Contains(d.Error, "transforms[0].validate") {
		t.Fatalf("dead record: %+v", d)
	}
}

// A record whose evaluation reaches the step allowance or the time limit goes to the
// dead-letter queue with the error, and the run goes on with the next.
func TestCostlyRecordGoesToTheDeadLetterQueue(t *testing.T) {
	h := open(t)
	big := make([]string, 300) // 300^3 = 27 million steps
	for i := range big {
		big[i] = fmt.Sprint(i)
	}
	h.file("loops.jsonl", `{"n": 1, "xs": [1, 2]}
{"n": 2, "xs": [`+strings.Join(big, ",")+`]}
{"n": 3, "xs": []}
`)
	h.apply(`
name: loops
source: {type: file, path: loops.jsonl}
transforms:
  - filter: 'all(xs, all(xs, all(xs, true)))'
  - map: '{n: n}'
sink: {type: file, path: out/loops.jsonl}
`)
	d := h.oneDeadRecord("loops", "{\"n\":1}\n{\"n\":3}\n")
	// Which limit comes first depends on the machine's speed (and -race).
	if d.Stage != "transform" || d.Record["n"] != 2.0 ||
		!strings.Contains(d.Error, "transforms[0].filter: expression exceeded 1000000 loop steps") && !strings.Contains(d.Error, "transforms[0].filter: expression ran longer than 1s") {
		t.Fatalf("dead record: stage %s, n %v, error %s", d.Stage, d.Record["n"], d.Error)
	}
}

// Dead letters raise notices in the spec's notify queue: the run's first at once, the rest
// (within the minute) when the run ends. The metrics count every record.
func TestDeadLettersAreNotified(t *testing.T) {
	h := open(t)
	h.file("notify.jsonl", "{\"n\": 1}\n{\"n\": \"two\"}\n{\"n\": 3}\n{\"n\": \"four\"}\n{\"n\": \"five\"}\n")
	h.apply(`
name: notify
source: {type: file, path: notify.jsonl}
transforms:
  - validate: {schema: {properties: {n: {type: integer}}}}
sink: {type: file, path: out/notify.jsonl}
batch: {size: 1}
errors: {notify: alerts}
`)
	alerts := fabric.Ref{Tenant: "acme", Environment: "production", Application: "shop", Name: "alerts"}
	if ds, err := h.fab.Consume(ctx, alerts, 10, 0); err != nil || len(ds) != 0 {
		t.Fatalf("the notify queue after apply: %d %v", len(ds), err)
	}
	before := recordsCounted(t, h.svc)
	if r := h.runAndWait("notify"); r.Status != "succeeded" || r.Out != 2 || r.Failed != 3 {
		t.Fatalf("run: %+v", r)
	}
	ds, err := h.fab.Consume(ctx, alerts, 10, time.Second)
	if err != nil || len(ds) != 2 {
		t.Fatalf("notices: %d %v", len(ds), err)
	}
	var first, rest pipeline.Notice
	_ = json.Unmarshal(ds[0].Data, &first)
	_ = json.Unmarshal(ds[1].Data, &rest)
	if first.Event != "pipeline.dead_lettered" || first.Pipeline != "notify" || first.Records != 1 || first.RunFailed != 1 ||
		first.Queue != "notify-dlq" || !strings.Contains(first.LastError, "transforms[0].validate") {
		t.Fatalf("first notice: %s", ds[0].Data)
	}
	if rest.Run != first.Run || rest.Records != 2 || rest.RunFailed != 3 || !strings.Contains(rest.LastError, "transforms[0].validate") {
		t.Fatalf("second notice: %s", ds[1].Data)
	}
	after := recordsCounted(t, h.svc)
	if after["in"]-before["in"] != 5 || after["out"]-before["out"] != 2 || after["failed"]-before["failed"] != 3 {
		t.Fatalf("metrics: %v then %v", before, after)
	}
}

// A continuous run never ends, so its record and the metrics follow it as it goes.
func TestContinuousRunShowsItsTotals(t *testing.T) {
	h := open(t)
	h.file("live.jsonl", "{\"n\": 1}\n{\"n\": 2}\n{\"n\": 3}\n")
	before := recordsCounted(t, h.svc)
	h.apply("name: live\nsource: {type: file, path: live.jsonl}\nsink: {type: file, path: out/live.jsonl}\nschedule: continuous\nbatch: {flush_interval: 100ms}\n")
	deadline := time.Now().Add(60 * time.Second)
	for {
		runs, err := h.svc.Runs(ctx, h.app, "live")
		if err == nil && len(runs) == 1 && runs[0].Status == "running" && runs[0].In == 3 && runs[0].Out == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("runs: %+v %v", runs, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if after := recordsCounted(t, h.svc); after["in"]-before["in"] != 3 || after["out"]-before["out"] != 3 {
		t.Fatalf("metrics of the running run: %v then %v", before, after)
	}
}

// recordsCounted reads penstock_pipeline_records_total by kind.
func recordsCounted(t *testing.T, svc *pipeline.Service) map[string]float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	for _, c := range svc.Collectors() {
		reg.MustRegister(c)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "penstock_pipeline_records_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			out[m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
		}
	}
	return out
}

// TestPostgresIncrementalToHTTPSinkThatFails reads a table incrementally into an HTTP endpoint
// that fails for a while: the run retries (honouring Retry-After), then, when retries run out,
// sends the batch to the dead-letter queue and goes on; rows added later are read from the
// checkpoint, and the dead letters are replayed once the endpoint is back.
func TestPostgresIncrementalToHTTPSinkThatFails(t *testing.T) {
	h := open(t)
	c := testenv.PostgreSQL(t)
	tbl := testenv.Table(t, c, "events", "id serial PRIMARY KEY, kind text, at timestamptz DEFAULT now()")
	exec(t, c, "INSERT INTO "+tbl+" (kind) SELECT 'k' || g FROM generate_series(1, 30) g")
	var down atomic.Bool
	var calls atomic.Int64
	var mu sync.Mutex
	got := map[float64]int{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		if r.Header.Get("Authorization") != "Bearer s3cret-token" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if down.Load() {
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		var recs []map[string]any
		b, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(b, &recs); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		mu.Lock()
		for _, rec := range recs {
			got[rec["id"].(float64)]++
		}
		mu.Unlock()
	}))
	defer srv.Close()
	if _, err := h.secrets.Put(ctx, h.app, "hook-token", redact.NewSecret("s3cret-token")); err != nil {
		t.Fatal(err)
	}
	spec := fmt.Sprintf(`
name: events-out
source: {type: postgres, host: 127.0.0.1, database: test, user: postgres, sslmode: disable, table: %s, cursor_column: id}
sink: {type: http, url: %s/ingest, auth: {type: bearer, token: "${secret:hook-token}"}}
batch: {size: 10}
errors: {retries: 2, backoff: {min: 10ms, max: 50ms}}
`, tbl, srv.URL)
	h.apply(spec)
	if r := h.runAndWait("events-out"); r.Status != "succeeded" || r.Out != 30 {
		t.Fatalf("first run: %+v", r)
	}
	down.Store(true)
	exec(t, c, "INSERT INTO "+tbl+" (kind) SELECT 'late' || g FROM generate_series(1, 5) g")
	before := calls.Load()
	r := h.runAndWait("events-out")
	if r.Status != "succeeded" || r.In != 5 || r.Failed != 5 || r.Out != 0 || calls.Load()-before != 3 {
		t.Fatalf("run while down: %+v, %d calls", r, calls.Load()-before)
	}
	down.Store(false)
	// Replay: a pipeline from the dead-letter queue back to the endpoint.
	h.apply(fmt.Sprintf(`
name: events-replay
source: {type: queue, queue: events-out-dlq}
transforms: [{map: 'record.record'}]
sink: {type: http, url: %s/ingest, auth: {type: bearer, token: "${secret:hook-token}"}}
`, srv.URL))
	if r := h.runAndWait("events-replay"); r.Out != 5 {
		t.Fatalf("replay: %+v", r)
	}
	mu.Lock()
	defer mu.Unlock()
	for id := 1.0; id <= 35; id++ {
		if got[id] != 1 {
			t.Errorf("row %v delivered %d times", id, got[id])
		}
	}
}

func TestValidationNamesTheField(t *testing.T) {
	h := open(t)
	base := "name: v\nsource: {type: file, path: a.csv}\n"
	for _, c := range []struct{ spec, want string }{
		{base + "sink: {type: file, path: b.csv}\nbogus: 1\n", "bogus: unknown key"},
		{base + "sink: {type: nope}\n", "sink.type: unknown sink connector \"nope\""},
		{base + "sink: {type: file}\n", "sink.path: required"},
		{base + "sink: {type: file, path: b.csv}\nbatch: {size: many}\n", "batch.size: must be an integer"},
		{base + "sink: {type: file, path: b.csv}\ntransforms: [{map: '{a: '}]\n", "transforms[0].map:"},
		{base + "sink: {type: file, path: ../b.csv}\n", "sink.path: a relative path"},
		{base + "sink: {type: postgres, host: 127.0.0.1, database: d, user: u, table: t, password: hunter2}\n", "sink.password: a literal credential is not allowed"},
		{base + "sink: {type: postgres, host: 127.0.0.1, database: d, user: u, table: t, password: '${secret:nope}'}\n", "sink.password: secret \"nope\" does not exist"},
		{base + "sink: {type: postgres, host: 10.0.0.1, database: d, user: u, table: t}\n", "sink.host: egress denied: 10.0.0.1:5432 (private address"},
		{base + "sink: {type: http, url: 'http://169.254.169.254/latest/meta-data'}\n", "sink.url: egress denied: 169.254.169.254:80 (link-local"},
		{base + "sink: {type: http, url: 'https://user:pw@example.com/x'}\n", "sink.url: a password in the URL is not allowed"},
		{base + "sink: {type: file, path: b.csv}\nschedule: sometimes\n", "schedule:"},
		{"name: Bad_Name\nsource: {type: file, path: a.csv}\nsink: {type: file, path: b.csv}\n", "name:"},
		{base + "sink: {type: file, path: b.csv}\nerrors: {notify: Alerts!}\n", "errors.notify: queue name \"Alerts!\""},
		{base + "sink: {type: file, path: b.csv}\nerrors: {notify: alerts, dead_letter: false}\n", "errors.notify: needs errors.dead_letter"},
		{base + "sink: {type: file, path: b.csv}\nerrors: {notify: v-dlq}\n", "errors.notify: \"v-dlq\" is the pipeline's own"},
	} {
		_, err := h.svc.Validate(ctx, h.app, []byte(c.spec))
		if !errors.Is(err, pipeline.ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s\n  got %v\n  want %q", c.spec, err, c.want)
		}
	}
}

// TestEgressDeniedAtConnect proves the dialer, not just validation, holds the line: a
// pipeline accepted while its tenant could reach PostgreSQL fails to connect once the rule is
// gone.
func TestEgressDeniedAtConnect(t *testing.T) {
	h := open(t)
	c := testenv.PostgreSQL(t)
	tbl := testenv.Table(t, c, "egress", "id int PRIMARY KEY")
	h.file("one.jsonl", "{\"id\": 1}\n")
	h.apply(fmt.Sprintf("name: eg\nsource: {type: file, path: one.jsonl}\nsink: {type: postgres, host: 127.0.0.1, database: test, user: postgres, sslmode: disable, table: %s}\n", tbl))
	h.mu.Lock()
	h.rules = nil
	h.mu.Unlock()
	r := h.runAndWait("eg")
	if r.Status != "failed" || !strings.Contains(r.Error, "egress denied") || !strings.Contains(r.Error, "loopback") {
		t.Fatalf("run without the rule: %+v", r)
	}
	h.mu.Lock()
	h.rules = []egress.Rule{{Prefix: netip.MustParsePrefix("127.0.0.1/32"), Port: 5432}}
	h.mu.Unlock()
	if r := h.runAndWait("eg"); r.Status != "succeeded" || r.Out != 1 {
		t.Fatalf("run with the rule back: %+v", r)
	}
}

// TestQueueConnectorConformance runs the conformance suite on the queue connector against
// the embedded engine.
func TestQueueConnectorConformance(t *testing.T) {
	h := open(t)
	ref := fabric.Ref{Tenant: "acme", Environment: "production", Application: "shop", Name: "conf"}
	if _, err := h.fab.CreateQueue(ctx, ref, fabric.QueueSpec{}); err != nil {
		t.Fatal(err)
	}
	// The webhook source reads its ingest queue, <pipeline>-in, the same way.
	hook := ref
	hook.Name = webhook.Queue("conformance")
	if _, err := h.fab.CreateQueue(ctx, hook, fabric.QueueSpec{}); err != nil {
		t.Fatal(err)
	}
	out := ref
	out.Name = "conf-out"
	if _, err := h.fab.CreateQueue(ctx, out, fabric.QueueSpec{}); err != nil {
		t.Fatal(err)
	}
	res := conformance.Resources(nil, "")
	res.Queues = pipeline.AppQueues(h.fab, h.app)
	reg := app.Connectors()
	plug, _ := reg.Lookup("queue", connector.SourceKind)
	wh, _ := reg.Lookup("webhook", connector.SourceKind)
	t.Run("webhook", func(t *testing.T) {
		conformance.RunSource(t, conformance.Source{
			New: func(res connector.Resources) connector.Source {
				s, _, err := wh.Source("source", map[string]any{"secret": "${secret:k}"}, res)
				if err != nil {
					t.Fatal(err)
				}
				return s
			},
			Seed: func(t *testing.T, ids []int) {
				for _, id := range ids {
					if _, err := h.fab.Publish(ctx, fabric.Target{Ref: hook}, []fabric.Message{{Data: fmt.Appendf(nil, `{"id": %d}`, id)}}); err != nil {
						t.Fatal(err)
					}
				}
			},
			ID: func(r connector.Record) int { return int(r["id"].(float64)) },
		}, res)
	})
	conformance.RunSource(t, conformance.Source{
		New: func(res connector.Resources) connector.Source {
			s, _, err := plug.Source("source", map[string]any{"queue": "conf"}, res)
			if err != nil {
				t.Fatal(err)
			}
			return s
		},
		Seed: func(t *testing.T, ids []int) {
			var msgs []fabric.Message
			for _, id := range ids {
				msgs = append(msgs, fabric.Message{Data: fmt.Appendf(nil, `{"id": %d}`, id)})
			}
			if _, err := h.fab.Publish(ctx, fabric.Target{Ref: ref}, msgs); err != nil {
				t.Fatal(err)
			}
		},
		ID: func(r connector.Record) int { return int(r["id"].(float64)) },
	}, res)
	conformance.RunSink(t, conformance.Sink{
		New: func(res connector.Resources) connector.Sink {
			s, _, err := plug.Sink("sink", map[string]any{"queue": "conf-out"}, res)
			if err != nil {
				t.Fatal(err)
			}
			return s
		},
		Stored: func(t *testing.T) []int {
			q, err := h.fab.Queue(ctx, out)
			if err != nil {
				t.Fatal(err)
			}
			ds, err := h.fab.Consume(ctx, out, 1000, 100*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			var ids []int
			var tokens []string
			for _, d := range ds {
				var r map[string]any
				json.Unmarshal(d.Data, &r)
				ids = append(ids, int(r["id"].(float64)))
				tokens = append(tokens, d.AckToken)
			}
			// Leave them for the next look: nack at once.
			if len(tokens) > 0 {
				h.fab.Settle(ctx, out, tokens, fabric.Nack, 0)
			}
			if int(q.Stats.Depth) != len(ids) {
				t.Fatalf("depth %d, consumed %d", q.Stats.Depth, len(ids))
			}
			return ids
		},
	}, res)
}

// TestStopDrainsTheBatchInFlight stops the service in the middle of a run: the batch being
// written commits and is acknowledged, the run is recorded as stopped, and a new service
// resumes after it, so the non-idempotent file sink ends with every record exactly once.
func TestStopDrainsTheBatchInFlight(t *testing.T) {
	h := open(t)
	var in strings.Builder
	const rows = 20000
	for i := 1; i <= rows; i++ {
		fmt.Fprintf(&in, "{\"id\": %d}\n", i)
	}
	h.file("drain.jsonl", in.String())
	h.apply("name: drain\nsource: {type: file, path: drain.jsonl}\nsink: {type: file, path: out/drain.jsonl}\nbatch: {size: 10}\n")
	id, err := h.svc.RunNow(ctx, h.app, "drain")
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(h.files, "acme", "out", "drain.jsonl")
	lines := func() int {
		b, _ := os.ReadFile(out)
		return strings.Count(string(b), "\n")
	}
	deadline := time.Now().Add(60 * time.Second)
	for lines() < rows/20 {
		if time.Now().After(deadline) {
			t.Fatalf("the run did not get going: %d lines", lines())
		}
		time.Sleep(time.Millisecond)
	}
	// The run in progress shows under the id RunNow gave, with its totals as of its last
	// batch (its stored record is written only every few seconds).
	live, err := h.svc.Runs(ctx, h.app, "drain")
	if err != nil || len(live) == 0 || live[0].ID != id || live[0].Out == 0 {
		t.Fatalf("the run in progress: %+v %v", live, err)
	}
	h.svc.Close()
	stoppedAt := lines()
	if stoppedAt >= rows {
		t.Fatalf("the run ended before the stop (%d lines); make the input larger", stoppedAt)
	}
	// A second service on the same stores picks the pipeline up and resumes.
	h.reopen()
	runs, err := h.svc.Runs(ctx, h.app, "drain")
	if err != nil || len(runs) != 1 || runs[0].Status != "stopped" || runs[0].Out != int64(stoppedAt) {
		t.Fatalf("stopped run: %+v %v (file has %d lines)", runs, err, stoppedAt)
	}
	r := h.runAndWait("drain")
	if r.Status != "succeeded" || r.In != int64(rows-stoppedAt) {
		t.Fatalf("resumed run: %+v after %d", r, stoppedAt)
	}
	b, _ := os.ReadFile(out)
	seen := map[string]bool{}
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if seen[l] {
			t.Fatalf("duplicate %s", l)
		}
		seen[l] = true
	}
	if len(seen) != rows {
		t.Fatalf("%d distinct records, want %d", len(seen), rows)
	}
}

// TestNewSourceStartsFresh: a checkpoint belongs to its source; changing the source starts
// the new one from its beginning, while changing only the sink keeps the checkpoint.
func TestNewSourceStartsFresh(t *testing.T) {
	h := open(t)
	h.file("a.jsonl", "{\"id\": 1}\n{\"id\": 2}\n{\"id\": 3}\n")
	h.file("b.jsonl", "{\"id\": 10}\n")
	h.apply("name: switch\nsource: {type: file, path: a.jsonl}\nsink: {type: file, path: out/one.jsonl}\n")
	if r := h.runAndWait("switch"); r.In != 3 {
		t.Fatalf("first: %+v", r)
	}
	h.apply("name: switch\nsource: {type: file, path: a.jsonl}\nsink: {type: file, path: out/two.jsonl}\n")
	if r := h.runAndWait("switch"); r.In != 0 {
		t.Fatalf("same source, new sink: %+v", r)
	}
	p := h.apply("name: switch\nsource: {type: file, path: b.jsonl}\nsink: {type: file, path: out/two.jsonl}\n")
	if r := h.runAndWait("switch"); r.In != 1 || p.Version != 3 {
		t.Fatalf("new source: %+v (version %d)", r, p.Version)
	}
}

// TestConcurrentLifecycleLeavesOneWorker: pauses, resumes and applies racing each other leave
// one worker, and after a delete nothing of the pipeline runs.
func TestConcurrentLifecycleLeavesOneWorker(t *testing.T) {
	h := open(t)
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) }))
	defer srv.Close()
	h.file("tick.jsonl", "{\"id\": 1}\n")
	spec := fmt.Sprintf("name: race\nsource: {type: file, path: tick.jsonl}\nsink: {type: http, url: %s}\nschedule: every 1s\n", srv.URL)
	h.apply(spec)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			if i%3 == 0 {
				h.svc.Apply(ctx, h.app, []byte(spec))
				return
			}
			h.svc.SetPaused(ctx, h.app, "race", i%2 == 0)
		})
	}
	wg.Wait()
	if err := h.svc.Delete(ctx, h.app, "race"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.svc.RunNow(ctx, h.app, "race"); !errors.Is(err, pipeline.ErrNotFound) {
		t.Fatalf("run after delete: %v", err)
	}
	// Any worker left over would run on its 1 s schedule. The barrier is a pipeline on the
	// same schedule, started after the delete: once it has run twice on its own, a left-over
	// worker would have run too.
	before := hits.Load()
	h.apply("name: marker\nsource: {type: file, path: tick.jsonl}\nsink: {type: file, path: out/marker.jsonl}\nschedule: every 1s\n")
	deadline := time.Now().Add(60 * time.Second)
	for {
		runs, err := h.svc.Runs(ctx, h.app, "marker")
		if err == nil && len(runs) >= 2 && runs[0].Status != "running" && runs[0].Status != "queued" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the marker pipeline did not run twice on its schedule: %+v %v", runs, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if after := hits.Load(); after != before {
		t.Fatalf("%d requests after the delete", after-before)
	}
}
