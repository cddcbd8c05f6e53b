package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/penstock/penstock/internal/connector"
)

type sinkConfig struct {
	conn
	Table string `json:"table" required:"true" doc:"table or schema.table"`
	// Mode is insert (COPY into the table) or upsert (COPY into a staging table, merged on
	// key with ON CONFLICT: a replayed record replaces itself). Default insert.
	Mode    string   `json:"mode" enum:"insert,upsert"`
	Key     []string `json:"key" doc:"the upsert key: columns with a unique index"`
	Columns []string `json:"columns" doc:"default: every record field, each of which must be a column"`
}

// Sink writes batches to a table, one transaction each.
type Sink struct {
	cfg   sinkConfig
	res   connector.Resources
	pool  *pgxpool.Pool
	types map[string]string // column name -> type name
}

var _ connector.Sink = (*Sink)(nil)

func newSink(path string, cfg map[string]any, res connector.Resources) (connector.Sink, connector.Refs, error) {
	var c sinkConfig
	refs, err := connector.Decode(path, cfg, &c)
	if err != nil {
		return nil, refs, err
	}
	d, err := c.check(path)
	if err != nil {
		return nil, refs, err
	}
	refs.Merge(d)
	if err := checkIdent(path+".table", c.Table, true); err != nil {
		return nil, refs, err
	}
	if c.Mode == "" {
		c.Mode = "insert"
	}
	if c.Mode == "upsert" && len(c.Key) == 0 {
		return nil, refs, fmt.Errorf("%s.key: required for upsert", path)
	}
	if err := checkColumns(path+".key", c.Key); err != nil {
		return nil, refs, err
	}
	if err := checkColumns(path+".columns", c.Columns); err != nil {
		return nil, refs, err
	}
	return &Sink{cfg: c, res: res}, refs, nil
}

// Connect opens the pool and reads the table's columns.
func (s *Sink) Connect(ctx context.Context) error {
	p, err := s.cfg.pool(ctx, s.res, 2)
	if err != nil {
		return err
	}
	rows, err := p.Query(ctx, `SELECT a.attname, format_type(a.atttypid, NULL) FROM pg_attribute a
		WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped`, s.cfg.Table)
	if err == nil {
		s.types = map[string]string{}
		for rows.Next() {
			var n, t string
			if err = rows.Scan(&n, &t); err != nil {
				break
			}
			s.types[n] = t
		}
		rows.Close()
		if err == nil {
			err = rows.Err()
		}
	}
	if err == nil && len(s.types) == 0 {
		err = fmt.Errorf("no columns")
	}
	if err != nil {
		p.Close()
		return fmt.Errorf("postgres table %s: %w", s.cfg.Table, err)
	}
	for _, c := range append(slices.Clone(s.cfg.Columns), s.cfg.Key...) {
		if _, ok := s.types[c]; !ok {
			p.Close()
			return fmt.Errorf("postgres table %s has no column %s", s.cfg.Table, c)
		}
	}
	s.pool = p
	return nil
}

// Write commits the batch in one transaction. Records that cannot be written as they are (a
// field that is not a column, a value of the wrong type) are left out and reported in a
// *connector.RecordErrors; the rest commit.
func (s *Sink) Write(ctx context.Context, batch []connector.Record) error {
	cols := s.cfg.Columns
	if len(cols) == 0 {
		cols = s.columnsOf(batch)
	}
	bad := connector.RecordErrors{}
	rows := make([][]any, 0, len(batch))
	for i, r := range batch {
		row, err := s.row(cols, r)
		if err != nil {
			bad[i] = err
			continue
		}
		rows = append(rows, row)
	}
	if s.cfg.Mode == "upsert" {
		rows = s.lastPerKey(cols, rows)
	}
	if len(rows) > 0 {
		if err := s.commit(ctx, cols, rows); err != nil {
			return err
		}
	}
	if len(bad) > 0 {
		return bad
	}
	return nil
}

// columnsOf is the union of the batch's fields that are columns. A record whose fields are
// all among the columns already found is checked by lookups, without walking its keys.
func (s *Sink) columnsOf(batch []connector.Record) []string {
	seen := map[string]bool{}
	var cols []string
	for _, r := range batch {
		found := 0
		for _, c := range cols {
			if _, ok := r[c]; ok {
				found++
			}
		}
		if found == len(r) {
			continue
		}
		for k := range r {
			if _, isColumn := s.types[k]; isColumn && !seen[k] {
				seen[k] = true
				cols = append(cols, k)
			}
		}
	}
	sort.Strings(cols)
	return cols
}

// lastPerKey keeps the last row of each key: one statement may not upsert a row twice.
func (s *Sink) lastPerKey(cols []string, rows [][]any) [][]any {
	var ki []int
	for _, k := range s.cfg.Key {
		ki = append(ki, slices.Index(cols, k))
	}
	seen := map[string]int{}
	out := rows[:0:0]
	for _, r := range rows {
		var sb strings.Builder
		for _, i := range ki {
			if i >= 0 {
				fmt.Fprintf(&sb, "%v\x00", r[i])
			}
		}
		k := sb.String()
		if j, ok := seen[k]; ok {
			out[j] = r
			continue
		}
		seen[k] = len(out)
		out = append(out, r)
	}
	return out
}

func (s *Sink) commit(ctx context.Context, cols []string, rows [][]any) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("postgres: begin: %w", err)
	}
	defer tx.Rollback(ctx)
	table := s.cfg.Table
	if s.cfg.Mode == "upsert" {
		table = "penstock_stage"
		if _, err := tx.Exec(ctx, fmt.Sprintf("CREATE TEMP TABLE penstock_stage (LIKE %s INCLUDING DEFAULTS) ON COMMIT DROP", quote(s.cfg.Table))); err != nil {
			return fmt.Errorf("postgres: staging table: %w", err)
		}
	}
	if _, err := tx.CopyFrom(ctx, pgx.Identifier(strings.Split(table, ".")), cols, pgx.CopyFromRows(rows)); err != nil {
		return fmt.Errorf("postgres: copy into %s: %w", s.cfg.Table, err)
	}
	if s.cfg.Mode == "upsert" {
		q := make([]string, len(cols))
		var set []string
		for i, c := range cols {
			q[i] = quote(c)
			if !slices.Contains(s.cfg.Key, c) {
				set = append(set, fmt.Sprintf("%s = EXCLUDED.%s", quote(c), quote(c)))
			}
		}
		keys := make([]string, len(s.cfg.Key))
		for i, k := range s.cfg.Key {
			keys[i] = quote(k)
		}
		action := "DO NOTHING"
		if len(set) > 0 {
			action = "DO UPDATE SET " + strings.Join(set, ", ")
		}
		list := strings.Join(q, ", ")
		if _, err := tx.Exec(ctx, fmt.Sprintf("INSERT INTO %s (%s) SELECT %s FROM penstock_stage ON CONFLICT (%s) %s",
			quote(s.cfg.Table), list, list, strings.Join(keys, ", "), action)); err != nil {
			return fmt.Errorf("postgres: upsert into %s: %w", s.cfg.Table, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("postgres: commit: %w", err)
	}
	return nil
}

// row orders a record's values by cols, each converted to its column's type.
func (s *Sink) row(cols []string, r connector.Record) ([]any, error) {
	if s.cfg.Mode == "upsert" {
		for _, k := range s.cfg.Key {
			if v, ok := r[k]; !ok || v == nil {
				return nil, fmt.Errorf("field %s: the upsert key is missing or null", k)
			}
		}
	}
	found := 0
	for _, c := range cols {
		if _, ok := r[c]; ok {
			found++
		}
	}
	for k := range r {
		if found == len(r) {
			break // every field is a column
		}
		if !slices.Contains(cols, k) {
			if _, isColumn := s.types[k]; !isColumn {
				return nil, fmt.Errorf("field %s: table %s has no such column", k, s.cfg.Table)
			}
			return nil, fmt.Errorf("field %s: not among the sink's columns", k)
		}
	}
	out := make([]any, len(cols))
	for i, c := range cols {
		t, ok := s.types[c]
		if !ok {
			return nil, fmt.Errorf("field %s: table %s has no such column", c, s.cfg.Table)
		}
		v, err := coerce(r[c], t)
		if err != nil {
			return nil, fmt.Errorf("field %s (%s): %w", c, t, err)
		}
		out[i] = v
	}
	return out, nil
}

// coerce converts text and JSON numbers to the column's type, so records read from CSV or JSON
// can be copied in the binary protocol.
func coerce(v any, typ string) (any, error) {
	if v == nil {
		return nil, nil
	}
	s, isText := v.(string)
	f, isFloat := v.(float64)
	switch typ {
	case "smallint", "integer", "bigint":
		switch {
		case isText:
			n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
			if err != nil {
				return nil, fmt.Errorf("%q is not an integer", s)
			}
			return n, nil
		case isFloat:
			if f != math.Trunc(f) || math.Abs(f) > 1<<63 {
				return nil, fmt.Errorf("%v is not an integer", f)
			}
			return int64(f), nil
		}
	case "real", "double precision":
		if isText {
			n, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
			if err != nil {
				return nil, fmt.Errorf("%q is not a number", s)
			}
			return n, nil
		}
	case "numeric":
		var n pgtype.Numeric
		src := v
		if isFloat {
			src = strconv.FormatFloat(f, 'f', -1, 64)
		} else if !isText {
			src = fmt.Sprint(v)
		}
		if err := n.Scan(src); err != nil {
			return nil, fmt.Errorf("%v is not a number", v)
		}
		return n, nil
	case "boolean":
		if isText {
			b, err := strconv.ParseBool(strings.TrimSpace(s))
			if err != nil {
				return nil, fmt.Errorf("%q is not true or false", s)
			}
			return b, nil
		}
	case "timestamp with time zone", "timestamp without time zone", "date":
		if isText {
			for _, layout := range []string{time.RFC3339Nano, "2006-01-02 15:04:05.999999999Z07:00", "2006-01-02 15:04:05.999999999", "2006-01-02T15:04:05.999999999", "2006-01-02"} {
				if t, err := time.Parse(layout, strings.TrimSpace(s)); err == nil {
					return t, nil
				}
			}
			return nil, fmt.Errorf("%q is not a time such as 2006-01-02T15:04:05Z", s)
		}
	case "json", "jsonb":
		if isText && json.Valid([]byte(s)) {
			return json.RawMessage(s), nil
		}
	case "text", "character varying", "character", "uuid":
		if !isText {
			if m, ok := v.(map[string]any); ok {
				b, _ := json.Marshal(m)
				return string(b), nil
			}
			return fmt.Sprint(v), nil
		}
	}
	return v, nil
}

// Close closes the pool.
func (s *Sink) Close(context.Context) error {
	if s.pool != nil {
		s.pool.Close()
	}
	return nil
}
