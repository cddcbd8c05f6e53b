package files

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/penstock/penstock/internal/connector"
)

// Sink appends records to a file, one fsync per batch.
type Sink struct {
	cfg     config
	res     connector.Resources
	root    *os.Root
	f       *os.File
	columns []string
	buf     bytes.Buffer
}

var _ connector.Sink = (*Sink)(nil)

func newSink(path string, cfg map[string]any, res connector.Resources) (connector.Sink, connector.Refs, error) {
	c, err := decode(path, cfg)
	return &Sink{cfg: c, res: res, columns: c.Columns}, connector.Refs{}, err
}

// Connect opens the file for appending, creating it (and its directories) if needed.
func (s *Sink) Connect(context.Context) error {
	root, err := openRoot(s.res)
	if err != nil {
		return err
	}
	s.root = root
	if dir := dirOf(s.cfg.Path); dir != "" {
		if err := root.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("create %s: %w", dir, err)
		}
	}
	f, err := root.OpenFile(s.cfg.Path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("open %s: %w", s.cfg.Path, err)
	}
	s.f = f
	return nil
}

func dirOf(p string) string {
	for i := len(p) - 1; i >= 0; i-- {
		if p[i] == '/' {
			return p[:i]
		}
	}
	return ""
}

// Write appends the batch and syncs the file.
func (s *Sink) Write(_ context.Context, batch []connector.Record) error {
	s.buf.Reset()
	if s.cfg.Format == "jsonl" {
		enc := json.NewEncoder(&s.buf)
		for _, r := range batch {
			if err := enc.Encode(r); err != nil {
				return err
			}
		}
	} else if err := s.writeCSV(batch); err != nil {
		return err
	}
	if _, err := s.f.Write(s.buf.Bytes()); err != nil {
		return fmt.Errorf("write %s: %w", s.cfg.Path, err)
	}
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", s.cfg.Path, err)
	}
	return nil
}

func (s *Sink) writeCSV(batch []connector.Record) error {
	st, err := s.f.Stat()
	if err != nil {
		return err
	}
	w := csv.NewWriter(&s.buf)
	w.Comma = []rune(s.cfg.Delimiter)[0]
	if len(s.columns) == 0 && len(batch) > 0 {
		for k := range batch[0] {
			s.columns = append(s.columns, k)
		}
		sort.Strings(s.columns)
	}
	if st.Size() == 0 && *s.cfg.Header {
		if err := w.Write(s.columns); err != nil {
			return err
		}
	}
	row := make([]string, len(s.columns))
	for _, r := range batch {
		for i, c := range s.columns {
			row[i] = text(r[c])
		}
		if err := w.Write(row); err != nil {
			return err
		}
	}
	w.Flush()
	return w.Error()
}

func text(v any) string {
	switch t := v.(type) {
	case nil:
		return ""
	case string:
		return t
	case time.Time:
		return t.UTC().Format(time.RFC3339Nano)
	case map[string]any, []any:
		b, _ := json.Marshal(t)
		return string(b)
	}
	return fmt.Sprint(v)
}

// Close closes the file.
func (s *Sink) Close(context.Context) error {
	if s.f != nil {
		s.f.Close()
	}
	if s.root != nil {
		s.root.Close()
	}
	return nil
}
