// Command pipeline measures Penstock's pipeline runtime beside its ceilings and peers, in one
// run on one machine: (1) 1,000,000 CSV rows -> map -> PostgreSQL, and a PostgreSQL table ->
// PostgreSQL table, beside psql's \copy of the same rows (the ceiling); (2) the CSV -> map ->
// JSON-lines file job beside Benthos (bench/benthos, built from its own module) doing the same.
// Each Penstock job runs in a child process, so its peak RSS is its own.
//
//	go run ./bench/pipeline [-rows 1000000] [-batch 10000] [-concurrency 2] [-skip-benthos]   (from the repository root)
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/penstock/penstock/internal/app"
	"github.com/penstock/penstock/internal/audit"
	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/egress"
	"github.com/penstock/penstock/internal/fabric"
	"github.com/penstock/penstock/internal/identity"
	"github.com/penstock/penstock/internal/keyring"
	"github.com/penstock/penstock/internal/keyring/keyringtest"
	"github.com/penstock/penstock/internal/pipeline"
	"github.com/penstock/penstock/internal/redact"
	"github.com/penstock/penstock/internal/secrets"
)

const pgDSN = "host=127.0.0.1 port=5432 user=postgres dbname=test sslmode=disable"

// The map transform, the same in every job and in the Benthos peer's mapping.
const mapExpr = `{id: int(id), name: upper(name), cents: int(float(amount) * 100)}`

type measured struct {
	Rows    int64   `json:"rows"`
	Seconds float64 `json:"seconds"`
	Error   string  `json:"error,omitempty"`
	RSS     int64   `json:"-"` // peak resident set, bytes
}

func (m measured) rate() float64 { return float64(m.Rows) / m.Seconds }

func main() {
	rows := flag.Int("rows", 1000000, "rows per job")
	batch := flag.Int("batch", 10000, "pipeline batch.size")
	conc := flag.Int("concurrency", 2, "pipeline concurrency")
	skipBenthos := flag.Bool("skip-benthos", false, "leave out the Benthos peer")
	job := flag.String("job", "", "internal: run one Penstock job in this process (csv-pg, pg-pg, csv-jsonl)")
	dir := flag.String("dir", "", "internal: the work directory")
	table := flag.String("table", "", "internal: the job's table")
	cpuprofile := flag.String("cpuprofile", "", "with -job: write a CPU profile of the job here")
	flag.Parse()
	if *job != "" {
		if *cpuprofile != "" {
			f, err := os.Create(*cpuprofile)
			if err != nil {
				log.Fatal(err)
			}
			pprof.StartCPUProfile(f)
			defer pprof.StopCPUProfile()
		}
		m, err := runJob(*job, *dir, *table, *batch, *conc)
		if err != nil {
			m.Error = err.Error()
		}
		json.NewEncoder(os.Stdout).Encode(m)
		return
	}
	ctx := context.Background()
	work, err := os.MkdirTemp("", "bench-pipeline")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(work)
	csvPath := filepath.Join(work, "files", "acme", "rows.csv")
	if err := writeCSV(csvPath, *rows); err != nil {
		log.Fatal(err)
	}
	pg, err := pgx.Connect(ctx, pgDSN)
	if err != nil {
		log.Fatalf("PostgreSQL at 127.0.0.1:5432: %v", err)
	}
	defer pg.Close(ctx)
	suffix := fmt.Sprint(time.Now().UnixNano())
	mk := func(name string) string {
		t := name + "_" + suffix
		if _, err := pg.Exec(ctx, "CREATE TABLE "+t+" (id bigint PRIMARY KEY, name text, cents bigint)"); err != nil {
			log.Fatal(err)
		}
		return t
	}
	defer func() {
		for _, n := range []string{"ceiling", "csvpg", "pgsrc", "pgdst"} {
			pg.Exec(ctx, "DROP TABLE IF EXISTS "+n+"_"+suffix)
		}
	}()
	fmt.Printf("bench/pipeline: %d rows, batch %d, concurrency %d\n\n", *rows, *batch, *conc)

	// The ceiling: psql \copy of the same CSV into the same table shape (no transform; the
	// amount column is loaded as text into a staging table shape with cents).
	ceilTable := mk("ceiling")
	pg.Exec(ctx, "ALTER TABLE "+ceilTable+" ALTER COLUMN cents TYPE numeric")
	start := time.Now()
	cmd := exec.Command("psql", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-c",
		fmt.Sprintf(`\copy %s (id, name, cents) FROM '%s' CSV HEADER`, ceilTable, csvPath))
	if out, err := cmd.CombinedOutput(); err != nil {
		log.Fatalf("psql \\copy: %v\n%s", err, out)
	}
	ceiling := measured{Rows: int64(*rows), Seconds: time.Since(start).Seconds(), RSS: cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss * 1024}

	// Each result is checked: the rows are all there.
	check := func(m measured, table string) measured {
		var n int64
		if table != "" {
			if err := pg.QueryRow(ctx, "SELECT count(*) FROM "+table).Scan(&n); err != nil {
				m.Error = err.Error()
			}
		} else {
			c, err := countLines(filepath.Join(work, "files", "acme", "out", "rows.jsonl"))
			if err != nil {
				m.Error = err.Error()
			}
			n = int64(c)
		}
		if m.Error == "" && n != int64(*rows) {
			m.Error = fmt.Sprintf("%d rows arrived, want %d", n, *rows)
		}
		return m
	}
	csvTable := mk("csvpg")
	csvpg := check(child(work, "csv-pg", csvTable, *batch, *conc), csvTable)
	// pg-pg reads the ceiling's table, a copy of the same rows.
	src := mk("pgsrc")
	if _, err := pg.Exec(ctx, "INSERT INTO "+src+" SELECT id, name, (cents * 100)::bigint FROM "+ceilTable); err != nil {
		log.Fatal(err)
	}
	dst := mk("pgdst")
	pgpg := check(child(work, "pg-pg", src+","+dst, *batch, *conc), dst)
	jsonl := check(child(work, "csv-jsonl", "", *batch, *conc), "")
	var benthos measured
	if !*skipBenthos {
		benthos = runBenthos(work, csvPath, *rows)
	}

	row := func(name string, m measured) {
		if m.Error != "" {
			fmt.Printf("%-52s error: %s\n", name, m.Error)
			return
		}
		fmt.Printf("%-52s %10.0f rows/s %8.2f s  peak RSS %6.1f MiB\n", name, m.rate(), m.Seconds, float64(m.RSS)/(1<<20))
	}
	row("ceiling: psql \\copy CSV -> table", ceiling)
	row("(1) Penstock CSV -> map -> PostgreSQL (COPY)", csvpg)
	row("(1) Penstock PostgreSQL table -> PostgreSQL table", pgpg)
	row("(2) Penstock CSV -> map -> JSON lines", jsonl)
	if !*skipBenthos {
		row("(2) Benthos v4.76.0 CSV -> mapping -> JSON lines", benthos)
	}
	fmt.Printf("\nratios\n")
	ratio := func(label string, a, b measured, target float64) {
		if a.Error != "" || b.Error != "" || b.Seconds == 0 {
			return
		}
		mark := "meets"
		if a.rate()/b.rate() < target {
			mark = "BELOW"
		}
		fmt.Printf("  %-58s %6.2f  (target >= %.1f: %s)\n", label, a.rate()/b.rate(), target, mark)
	}
	ratio("(1) CSV -> map -> PostgreSQL / \\copy ceiling", csvpg, ceiling, 0.5)
	ratio("(1) PostgreSQL -> PostgreSQL / \\copy ceiling", pgpg, ceiling, 0.5)
	ratio("(2) Penstock / Benthos, CSV -> map -> JSON lines", jsonl, benthos, 1.5)
	for _, m := range []struct {
		name string
		m    measured
	}{{"(1) CSV -> PostgreSQL", csvpg}, {"(1) PostgreSQL -> PostgreSQL", pgpg}, {"(2) CSV -> JSON lines", jsonl}} {
		mark := "meets"
		if m.m.RSS >= 256<<20 {
			mark = "BELOW"
		}
		fmt.Printf("  %-58s %6.1f MiB (target < 256 MiB: %s)\n", m.name+" peak RSS", float64(m.m.RSS)/(1<<20), mark)
	}
}

func writeCSV(path string, n int) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	var b strings.Builder
	b.WriteString("id,name,amount\n")
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, "%d,customer %d,%d.%02d\n", i, i, i%100000, i%100)
	}
	return os.WriteFile(path, []byte(b.String()), 0o600)
}

// child runs one Penstock job in a new process and returns what it measured, with its peak RSS.
func child(work, job, table string, batch, conc int) measured {
	self, err := os.Executable()
	if err != nil {
		log.Fatal(err)
	}
	cmd := exec.Command(self, "-job", job, "-dir", work, "-table", table, "-batch", fmt.Sprint(batch), "-concurrency", fmt.Sprint(conc))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	var m measured
	if jerr := json.Unmarshal(out, &m); jerr != nil {
		return measured{Error: fmt.Sprintf("%v %v: %s", err, jerr, out)}
	}
	m.RSS = cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss * 1024
	return m
}

func runBenthos(work, csvPath string, rows int) measured {
	bin := filepath.Join(work, "benthos-peer")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Dir = "bench/benthos"
	if out, err := build.CombinedOutput(); err != nil {
		return measured{Error: fmt.Sprintf("build the Benthos peer (run from the repository root): %v\n%s", err, out)}
	}
	outPath := filepath.Join(work, "benthos.jsonl")
	cmd := exec.Command(bin, "-in", csvPath, "-out", outPath, "-rows", fmt.Sprint(rows), "-batch", "1000")
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		return measured{Error: fmt.Sprintf("%v\n%s", err, out)}
	}
	el := time.Since(start)
	if n, err := countLines(outPath); err != nil || n != rows {
		return measured{Error: fmt.Sprintf("benthos wrote %d lines (%v), want %d", n, err, rows)}
	}
	return measured{Rows: int64(rows), Seconds: el.Seconds(), RSS: cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss * 1024}
}

func countLines(path string) (int, error) {
	b, err := os.ReadFile(path)
	return strings.Count(string(b), "\n"), err
}

type nopAudit struct{}

func (nopAudit) Append(_ context.Context, e audit.Event) (audit.Event, error) { return e, nil }

// runJob runs one pipeline on a fresh embedded Penstock and reports the run's records and
// duration (from the run record).
func runJob(job, work, table string, batch, conc int) (measured, error) {
	ctx := context.Background()
	st, closeStack, err := keyringtest.OpenTemp(ctx)
	if err != nil {
		return measured{}, err
	}
	defer closeStack()
	icfg := identity.DefaultConfig()
	ids, err := identity.Open(ctx, st.Platform, st.Keyring, icfg, slog.New(slog.DiscardHandler))
	if err != nil {
		return measured{}, err
	}
	defer ids.Close()
	if _, err := ids.CreateTenant(ctx, "acme"); err != nil {
		return measured{}, err
	}
	if _, err := ids.CreateApp(ctx, "acme", "production", "shop"); err != nil {
		return measured{}, err
	}
	fab, err := fabric.Open(ctx, fabric.Options{Engine: st.Engine, Identity: ids, Audit: nopAudit{}, Config: config.Default().Fabric,
		Registry: prometheus.NewRegistry()})
	if err != nil {
		return measured{}, err
	}
	defer fab.Close()
	sec, err := secrets.New(ctx, st.Keyring)
	if err != nil {
		return measured{}, err
	}
	loop, _ := egress.ParseRule("127.0.0.1:5432")
	svc, err := pipeline.Open(ctx, pipeline.Options{Keyring: st.Keyring, Fabric: fab, Registry: app.Connectors(),
		FilesRoot: filepath.Join(work, "files"), Logger: slog.New(slog.DiscardHandler),
		Egress: func(t string) egress.Policy { return egress.Policy{Tenant: t, Rules: []egress.Rule{loop}} },
		Secrets: func(ctx context.Context, a keyring.Scope, name string) (redact.Secret, error) {
			v, _, err := sec.Get(ctx, a, name)
			return v, err
		}})
	if err != nil {
		return measured{}, err
	}
	defer svc.Close()
	pgConn := "host: 127.0.0.1, database: test, user: postgres, sslmode: disable"
	var spec string
	switch job {
	case "csv-pg":
		spec = fmt.Sprintf("source: {type: file, path: rows.csv}\ntransforms: [{map: '%s'}]\nsink: {type: postgres, %s, table: %s}\n", mapExpr, pgConn, table)
	case "pg-pg":
		src, dst, _ := strings.Cut(table, ",")
		spec = fmt.Sprintf("source: {type: postgres, %s, table: %s, cursor_column: id}\nsink: {type: postgres, %s, table: %s}\n", pgConn, src, pgConn, dst)
	case "csv-jsonl":
		spec = fmt.Sprintf("source: {type: file, path: rows.csv}\ntransforms: [{map: '%s'}]\nsink: {type: file, path: out/rows.jsonl}\n", mapExpr)
	default:
		return measured{}, fmt.Errorf("unknown job %q", job)
	}
	spec = fmt.Sprintf("name: bench\nbatch: {size: %d}\nconcurrency: %d\n", batch, conc) + spec
	a := keyring.Scope{Tenant: "acme", Environment: "production", Application: "shop"}
	if _, _, err := svc.Apply(ctx, a, []byte(spec)); err != nil {
		return measured{}, err
	}
	if _, err := svc.RunNow(ctx, a, "bench"); err != nil {
		return measured{}, err
	}
	for {
		time.Sleep(20 * time.Millisecond)
		runs, err := svc.Runs(ctx, a, "bench")
		if err != nil {
			return measured{}, err
		}
		if len(runs) == 0 || runs[0].Status == "running" {
			continue
		}
		r := runs[0]
		if r.Status != "succeeded" {
			return measured{}, errors.New(r.Status + ": " + r.Error)
		}
		return measured{Rows: r.Out, Seconds: r.Seconds}, nil
	}
}
