package postgres

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/penstock/penstock/internal/connector"
	"github.com/penstock/penstock/internal/connector/conformance"
	"github.com/penstock/penstock/internal/testenv"
)

func exec(t *testing.T, c *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := c.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// restart cuts every connection the connectors under test hold, as a server restart does.
// Only theirs: other packages' tests use the same server at the same time.
func restart(c *pgx.Conn) func(t *testing.T) {
	return func(t *testing.T) {
		var n int
		err := c.QueryRow(context.Background(), `WITH p AS MATERIALIZED (SELECT pid FROM pg_stat_activity WHERE application_name = 'penstock/conformance' AND pid <> pg_backend_pid())
			SELECT count(*) FILTER (WHERE t) FROM (SELECT pg_terminate_backend(pid) AS t FROM p) x`).Scan(&n)
		if err != nil || n == 0 {
			t.Fatalf("cut the connector's connections: %d cut, %v", n, err)
		}
	}
}

func settings(table string, extra map[string]any) map[string]any {
	m := map[string]any{"host": "127.0.0.1", "database": "test", "user": "postgres", "sslmode": "disable", "table": table}
	for k, v := range extra {
		m[k] = v
	}
	return m
}

func TestConformance(t *testing.T) {
	c := testenv.PostgreSQL(t)
	src := testenv.Table(t, c, "conf_src", "id bigint PRIMARY KEY, name text, at timestamptz DEFAULT now()")
	dst := testenv.Table(t, c, "conf_dst", "id bigint PRIMARY KEY, name text")
	res := conformance.Resources(conformance.Secrets{"pg": "anything"}, "")
	build := func(cfg map[string]any) func(connector.Resources) connector.Source {
		return func(res connector.Resources) connector.Source {
			s, _, err := Plugin.Source("source", cfg, res)
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
	}
	conformance.RunSource(t, conformance.Source{
		New: build(settings(src, map[string]any{"cursor_column": "id", "password": "${secret:pg}"})),
		Seed: func(t *testing.T, ids []int) {
			for _, id := range ids {
				exec(t, c, "INSERT INTO "+src+" (id, name) VALUES ($1, $2)", id, fmt.Sprint("n", id))
			}
		},
		ID:      func(r connector.Record) int { return int(r["id"].(int64)) },
		Restart: restart(c),
		Bad:     build(settings(src, map[string]any{"cursor_column": "id", "user": "no_such_role"})),
		BadWant: `role "no_such_role" does not exist`,
	}, res)
	newSink := func(cfg map[string]any) func(connector.Resources) connector.Sink {
		return func(res connector.Resources) connector.Sink {
			s, _, err := Plugin.Sink("sink", cfg, res)
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
	}
	conformance.RunSink(t, conformance.Sink{
		New: newSink(settings(dst, map[string]any{"mode": "upsert", "key": []any{"id"}})),
		Stored: func(t *testing.T) []int {
			rows, err := c.Query(context.Background(), "SELECT id FROM "+dst)
			if err != nil {
				t.Fatal(err)
			}
			ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
			if err != nil {
				t.Fatal(err)
			}
			out := make([]int, len(ids))
			for i, v := range ids {
				out[i] = int(v)
			}
			return out
		},
		Restart: restart(c),
		Bad:     newSink(settings(dst, map[string]any{"user": "no_such_role"})),
		BadWant: `role "no_such_role" does not exist`,
	}, res)
}

// TestSinkRejectsRecordsNotBatches: a record that does not fit the table goes back as a
// RecordErrors entry naming the column; the rest of the batch commits.
func TestSinkRejectsRecordsNotBatches(t *testing.T) {
	c := testenv.PostgreSQL(t)
	tbl := testenv.Table(t, c, "conf_bad", "id bigint PRIMARY KEY, n integer, at timestamptz")
	s, _, err := Plugin.Sink("sink", settings(tbl, nil), conformance.Resources(nil, ""))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := s.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	err = s.Write(ctx, []connector.Record{
		{"id": "1", "n": "7", "at": "2026-11-23T10:00:00Z"},
		{"id": 2.0, "n": "seven", "at": nil},
		{"id": 3.0, "n": 3.0, "extra": true},
		{"id": 4.0, "n": 4.5},
	})
	bad, ok := err.(connector.RecordErrors)
	if !ok || len(bad) != 3 || bad[1] == nil || bad[2] == nil || bad[3] == nil {
		t.Fatalf("errors: %v", err)
	}
	for i, want := range map[int]string{1: "field n (integer)", 2: "field extra", 3: "field n (integer): 4.5 is not an integer"} {
		if got := bad[i].Error(); len(got) < len(want) || got[:len(want)] != want {
			t.Errorf("record %d: %q, want %q", i, got, want)
		}
	}
	var n int
	if err := c.QueryRow(ctx, "SELECT n FROM "+tbl+" WHERE id = 1").Scan(&n); err != nil || n != 7 {
		t.Fatalf("the good record: %d %v", n, err)
	}
}

// TestQuerySource reads a query (with its own WHERE and ORDER BY) incrementally.
func TestQuerySource(t *testing.T) {
	c := testenv.PostgreSQL(t)
	tbl := testenv.Table(t, c, "conf_q", "id bigint PRIMARY KEY, kind text")
	exec(t, c, "INSERT INTO "+tbl+" SELECT g, CASE WHEN g % 2 = 0 THEN 'even' ELSE 'odd' END FROM generate_series(1, 20) g")
	res := conformance.Resources(nil, "")
	cfg := settings("", map[string]any{"query": "SELECT id, upper(kind) AS kind FROM " + tbl + " WHERE kind = 'even' ORDER BY kind", "cursor_column": "id"})
	delete(cfg, "table")
	s, _, err := Plugin.Source("source", cfg, res)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := s.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	var ids []int64
	for {
		recs, ack, err := s.Read(ctx, 3)
		if err != nil {
			break
		}
		for _, r := range recs {
			if r["kind"] != "EVEN" {
				t.Fatalf("record %v", r)
			}
			ids = append(ids, r["id"].(int64))
		}
		ack(ctx, nil)
	}
	if fmt.Sprint(ids) != "[2 4 6 8 10 12 14 16 18 20]" {
		t.Fatalf("ids %v", ids)
	}
	for _, bad := range []map[string]any{
		{"query": "DELETE FROM x", "cursor_column": "id"},
		{"query": "SELECT 1; DROP TABLE x", "cursor_column": "id"},
		{"query": "SELECT 1", "table": "t", "cursor_column": "id"},
		{"cursor_column": "id"},
	} {
		cfg := settings("", bad)
		if _, ok := bad["table"]; !ok {
			delete(cfg, "table")
		}
		if _, _, err := Plugin.Source("source", cfg, res); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}

// TestUpsertRefusesRecordsWithoutTheKey: a record without its key cannot be merged; it is
// rejected on its own instead of collapsing with other keyless records.
func TestUpsertRefusesRecordsWithoutTheKey(t *testing.T) {
	c := testenv.PostgreSQL(t)
	tbl := testenv.Table(t, c, "conf_nokey", "id bigint PRIMARY KEY, name text")
	s, _, err := Plugin.Sink("sink", settings(tbl, map[string]any{"mode": "upsert", "key": []any{"id"}}), conformance.Resources(nil, ""))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := s.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	err = s.Write(ctx, []connector.Record{{"name": "a"}, {"name": "b"}, {"id": 1.0, "name": "c"}, {"id": nil, "name": "d"}})
	bad, ok := err.(connector.RecordErrors)
	if !ok || len(bad) != 3 || bad[2] != nil {
		t.Fatalf("errors: %v", err)
	}
	var n int
	c.QueryRow(ctx, "SELECT count(*) FROM "+tbl).Scan(&n)
	if n != 1 {
		t.Fatalf("%d rows", n)
	}
}

// TestFullReadsEveryRun: a full read reads the whole table on every run, its reset
// checkpoint saved in order after the last page.
func TestFullReadsEveryRun(t *testing.T) {
	c := testenv.PostgreSQL(t)
	tbl := testenv.Table(t, c, "conf_full", "id bigint PRIMARY KEY")
	exec(t, c, "INSERT INTO "+tbl+" SELECT generate_series(1, 25)")
	res := conformance.Resources(nil, "")
	ctx := context.Background()
	for run := range 3 {
		s, _, err := Plugin.Source("source", settings(tbl, map[string]any{"mode": "full", "key_column": "id"}), res)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Connect(ctx); err != nil {
			t.Fatal(err)
		}
		// Read ahead as the runtime does: the next read happens before this batch's ack.
		var acks []connector.AckFunc
		n := 0
		for {
			recs, ack, err := s.Read(ctx, 10)
			if err != nil {
				break
			}
			n += len(recs)
			acks = append(acks, ack)
		}
		for _, a := range acks {
			if err := a(ctx, nil); err != nil {
				t.Fatal(err)
			}
		}
		s.Close(ctx)
		if n != 25 {
			t.Fatalf("run %d read %d rows, want 25", run, n)
		}
	}
}
