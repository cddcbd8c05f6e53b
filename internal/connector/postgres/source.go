package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/penstock/penstock/internal/connector"
)

type sourceConfig struct {
	conn
	Table string `json:"table" doc:"table or schema.table; or give query"`
	// Query is a SELECT (or WITH ... SELECT) read instead of a table; the cursor and key
	// columns must be among its output columns. It runs with the connector's database
	// credentials, like any client of that database.
	Query string `json:"query"`
	// Mode is incremental (rows whose cursor column is past the checkpoint, in its order) or
	// full (every row, each run, paged by key_column). Default incremental.
	Mode         string   `json:"mode" enum:"incremental,full"`
	CursorColumn string   `json:"cursor_column" doc:"for incremental: a column that grows, such as id or updated_at"`
	KeyColumn    string   `json:"key_column" doc:"a unique column: breaks ties in the cursor; required for full"`
	Columns      []string `json:"columns" doc:"default: every column"`
}

// Source reads a table.
type Source struct {
	cfg  sourceConfig
	res  connector.Resources
	pool *pgxpool.Pool
	// mu guards cur and saved: acknowledgements may run while the next batch is read.
	mu sync.Mutex
	// cur is where the next read starts; saved is the last acknowledged checkpoint.
	cur, saved checkpoint
	// sql reads after the checkpoint, first from the top.
	sql, first string
	// ended is set once a full read has handed out its reset: this run is done.
	ended bool
}

var _ connector.Source = (*Source)(nil)

// checkpoint is the last row acknowledged: its cursor and key values, as JSON-typed text so
// times keep their precision.
type checkpoint struct {
	Cursor *typed `json:"cursor,omitempty"`
	Key    *typed `json:"key,omitempty"`
}

type typed struct {
	Type  string `json:"type"`
	Value string `json:"value"`
}

func toTyped(v any) *typed {
	switch t := v.(type) {
	case time.Time:
		return &typed{"time", t.UTC().Format(time.RFC3339Nano)}
	case int64, int32, int16, int:
		return &typed{"int", fmt.Sprint(t)}
	case float64, float32:
		return &typed{"float", fmt.Sprint(t)}
	}
	return &typed{"text", fmt.Sprint(v)}
}

func (t *typed) value() any {
	switch t.Type {
	case "time":
		v, _ := time.Parse(time.RFC3339Nano, t.Value)
		return v
	}
	// Integers, floats and text go as text; the server casts them to the column's type.
	return t.Value
}

func newSource(path string, cfg map[string]any, res connector.Resources) (connector.Source, connector.Refs, error) {
	var c sourceConfig
	refs, err := connector.Decode(path, cfg, &c)
	if err != nil {
		return nil, refs, err
	}
	d, err := c.check(path)
	if err != nil {
		return nil, refs, err
	}
	refs.Merge(d)
	switch {
	case c.Table != "" && c.Query != "":
		return nil, refs, fmt.Errorf("%s: table or query, not both", path)
	case c.Query != "":
		q := strings.ToLower(strings.TrimSpace(c.Query))
		if !strings.HasPrefix(q, "select") && !strings.HasPrefix(q, "with") || strings.Contains(c.Query, ";") || len(c.Query) > 16384 {
			return nil, refs, fmt.Errorf("%s.query: one SELECT (or WITH ... SELECT) statement, without ;", path)
		}
	case c.Table == "":
		return nil, refs, fmt.Errorf("%s.table: required (or query)", path)
	default:
		if err := checkIdent(path+".table", c.Table, true); err != nil {
			return nil, refs, err
		}
	}
	if c.Mode == "" {
		c.Mode = "incremental"
	}
	if c.Mode == "incremental" && c.CursorColumn == "" {
		return nil, refs, fmt.Errorf("%s.cursor_column: required for incremental reads", path)
	}
	if c.Mode == "full" && c.KeyColumn == "" {
		return nil, refs, fmt.Errorf("%s.key_column: required for full reads (pages are taken in its order)", path)
	}
	for _, f := range []struct{ p, v string }{{"cursor_column", c.CursorColumn}, {"key_column", c.KeyColumn}} {
		if f.v != "" {
			if err := checkIdent(path+"."+f.p, f.v, false); err != nil {
				return nil, refs, err
			}
		}
	}
	if err := checkColumns(path+".columns", c.Columns); err != nil {
		return nil, refs, err
	}
	return &Source{cfg: c, res: res}, refs, nil
}

// Connect opens the pool and loads the checkpoint.
func (s *Source) Connect(ctx context.Context) error {
	p, err := s.cfg.pool(ctx, s.res, 2)
	if err != nil {
		return err
	}
	s.pool = p
	if s.res.State != nil {
		b, err := s.res.State.Load(ctx)
		if err != nil {
			p.Close()
			return fmt.Errorf("load checkpoint: %w", err)
		}
		if len(b) > 0 {
			if err := json.Unmarshal(b, &s.cur); err != nil {
				p.Close()
				return fmt.Errorf("checkpoint: %w", err)
			}
			s.saved = s.cur
		}
	}
	cols := "*"
	if len(s.cfg.Columns) > 0 {
		q := make([]string, len(s.cfg.Columns))
		for i, c := range s.cfg.Columns {
			q[i] = quote(c)
		}
		cols = strings.Join(q, ", ")
	}
	// The order columns: the cursor then the key (incremental), or the key (full).
	var order []string
	if s.cfg.Mode == "incremental" {
		order = append(order, quote(s.cfg.CursorColumn))
	}
	if s.cfg.KeyColumn != "" {
		order = append(order, quote(s.cfg.KeyColumn))
	}
	tuple := "(" + strings.Join(order, ", ") + ")"
	params := make([]string, len(order))
	for i := range order {
		params[i] = fmt.Sprintf("$%d", i+1)
	}
	from := quote(s.cfg.Table)
	if s.cfg.Query != "" {
		from = "(" + s.cfg.Query + ") AS penstock_query"
	}
	s.sql = fmt.Sprintf("SELECT %s FROM %s WHERE %s > (%s) ORDER BY %s LIMIT $%d", cols, from, tuple,
		strings.Join(params, ", "), strings.Join(order, ", "), len(order)+1)
	s.first = fmt.Sprintf("SELECT %s FROM %s ORDER BY %s LIMIT $1", cols, from, strings.Join(order, ", "))
	return nil
}

// Read returns the next rows after the checkpoint.
func (s *Source) Read(ctx context.Context, max int) ([]connector.Record, connector.AckFunc, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return nil, nil, connector.ErrEndOfInput
	}
	var rows pgx.Rows
	var err error
	var args []any
	if s.cfg.Mode == "incremental" && s.cur.Cursor != nil {
		args = append(args, s.cur.Cursor.value())
		if s.cfg.KeyColumn != "" {
			if s.cur.Key == nil {
				return nil, nil, fmt.Errorf("checkpoint has no key value for key_column %s", s.cfg.KeyColumn)
			}
			args = append(args, s.cur.Key.value())
		}
	} else if s.cfg.Mode == "full" && s.cur.Key != nil {
		args = append(args, s.cur.Key.value())
	}
	if args == nil {
		rows, err = s.pool.Query(ctx, s.first, max)
	} else {
		rows, err = s.pool.Query(ctx, s.sql, append(args, max)...)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", s.what(), err)
	}
	defer rows.Close()
	fields := rows.FieldDescriptions()
	var out []connector.Record
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			return nil, nil, fmt.Errorf("read %s: %w", s.what(), err)
		}
		rec := make(connector.Record, len(vals))
		for i, v := range vals {
			rec[fields[i].Name] = plain(v)
		}
		out = append(out, rec)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", s.what(), err)
	}
	if len(out) == 0 {
		if s.cfg.Mode == "full" && s.cur.Key != nil {
			// The next run reads everything again: an empty batch resets the checkpoint in
			// order, once the pages before it are committed; the next read ends this run.
			s.cur = checkpoint{}
			s.ended = true
			return []connector.Record{}, func(ctx context.Context, err error) error {
				s.mu.Lock()
				defer s.mu.Unlock()
				if err != nil {
					return nil
				}
				if err := s.saveAt(ctx, checkpoint{}); err != nil {
					return err
				}
				s.saved = checkpoint{}
				return nil
			}, nil
		}
		return nil, nil, connector.ErrEndOfInput
	}
	last := out[len(out)-1]
	next := checkpoint{}
	if s.cfg.Mode == "incremental" {
		cv, ok := last[s.cfg.CursorColumn]
		if !ok || cv == nil {
			return nil, nil, fmt.Errorf("cursor_column %s: not in the rows read, or null", s.cfg.CursorColumn)
		}
		next.Cursor = toTyped(cv)
	}
	if s.cfg.KeyColumn != "" {
		kv, ok := last[s.cfg.KeyColumn]
		if !ok || kv == nil {
			return nil, nil, fmt.Errorf("key_column %s: not in the rows read, or null", s.cfg.KeyColumn)
		}
		next.Key = toTyped(kv)
	}
	// Reads move on at once; the checkpoint moves only when the batch is acknowledged.
	s.cur = next
	return out, func(ctx context.Context, err error) error {
		s.mu.Lock()
		defer s.mu.Unlock()
		if err != nil {
			// Read these rows again.
			s.cur = s.saved
			return nil
		}
		if err := s.saveAt(ctx, next); err != nil {
			return err
		}
		s.saved = next
		return nil
	}, nil
}

func (s *Source) saveAt(ctx context.Context, c checkpoint) error {
	if s.res.State == nil {
		return nil
	}
	b, _ := json.Marshal(c)
	return s.res.State.Save(ctx, b)
}

// plain turns what pgx returns into JSON-like values.
func plain(v any) any {
	switch t := v.(type) {
	case int16:
		return int64(t)
	case int32:
		return int64(t)
	case float32:
		return float64(t)
	case pgtype.Numeric:
		f, err := t.Float64Value()
		if err != nil || !f.Valid {
			return nil
		}
		return f.Float64
	case [16]byte:
		return fmt.Sprintf("%x-%x-%x-%x-%x", t[0:4], t[4:6], t[6:8], t[8:10], t[10:16])
	}
	return v
}

func (s *Source) what() string {
	if s.cfg.Query != "" {
		return "query"
	}
	return s.cfg.Table
}

// Close closes the pool.
func (s *Source) Close(context.Context) error {
	if s.pool != nil {
		s.pool.Close()
	}
	return nil
}
