// Package files is the file connector: CSV and JSON-lines sources and sinks inside a tenant's
// root directory. Every path is opened through os.Root, so neither ".." nor a symlink can lead
// out of that root.
package files

import (
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/penstock/penstock/internal/connector"
)

// Plugin is the file connector.
var Plugin = connector.Plugin{
	Name:   "file",
	Doc:    "CSV or JSON-lines files in the tenant's file root",
	Source: newSource,
	Sink:   newSink,
}

type config struct {
	Path   string `json:"path" required:"true" doc:"relative to the tenant's file root"`
	Format string `json:"format" enum:"csv,jsonl" doc:"default: from the extension (.csv, .jsonl or .ndjson)"`
	// Delimiter is the CSV field separator (default ",").
	Delimiter string `json:"delimiter"`
	// Columns names the CSV columns: for a source without a header line, and for a sink
	// (default: the first record's fields, sorted).
	Columns []string `json:"columns"`
	// Header says whether a CSV source starts with a header line (default true).
	Header *bool `json:"header"`
}

func decode(path string, cfg map[string]any) (config, error) {
	var c config
	if _, err := connector.Decode(path, cfg, &c); err != nil {
		return c, err
	}
	if c.Path == "" || filepath.IsAbs(c.Path) || strings.HasPrefix(filepath.Clean(c.Path), "..") {
		return c, fmt.Errorf("%s.path: a relative path inside the tenant's file root", path)
	}
	if c.Format == "" {
		switch strings.ToLower(filepath.Ext(c.Path)) {
		case ".csv":
			c.Format = "csv"
		case ".jsonl", ".ndjson":
			c.Format = "jsonl"
		default:
			return c, fmt.Errorf("%s.format: csv or jsonl (the extension does not say)", path)
		}
	}
	if c.Delimiter == "" {
		c.Delimiter = ","
	}
	if r := []rune(c.Delimiter); len(r) != 1 || r[0] == '"' || r[0] == '\n' || r[0] == '\r' {
		return c, fmt.Errorf("%s.delimiter: one character, not a quote or line break", path)
	}
	if c.Header == nil {
		t := true
		c.Header = &t
	}
	if c.Format == "csv" && !*c.Header && len(c.Columns) == 0 {
		return c, fmt.Errorf("%s.columns: required when header is false", path)
	}
	return c, nil
}

func openRoot(res connector.Resources) (*os.Root, error) {
	if res.Files == "" {
		return nil, errors.New("file connector: no file root is configured (pipelines.files_root)")
	}
	if err := os.MkdirAll(res.Files, 0o700); err != nil {
		return nil, fmt.Errorf("file root: %w", err)
	}
	return os.OpenRoot(res.Files)
}

// cursor is the source's checkpoint: where the next unread record starts.
type cursor struct {
	Offset int64 `json:"offset"`
}

// Source reads a file from its checkpoint to its end, one run at a time.
type Source struct {
	cfg  config
	res  connector.Resources
	root *os.Root
	f    *os.File
	// csv or jsonl reader state
	cr      *csv.Reader
	br      *bufio.Reader
	columns []string
	// base is the file offset the reader started at; pos is the offset after the last
	// record read.
	base, pos int64
}

var _ connector.Source = (*Source)(nil)

func newSource(path string, cfg map[string]any, res connector.Resources) (connector.Source, connector.Refs, error) {
	c, err := decode(path, cfg)
	return &Source{cfg: c, res: res}, connector.Refs{}, err
}

// Connect opens the file and moves to the checkpoint.
func (s *Source) Connect(ctx context.Context) error {
	root, err := openRoot(s.res)
	if err != nil {
		return err
	}
	s.root = root
	f, err := root.Open(s.cfg.Path)
	if err != nil {
		return fmt.Errorf("open %s: %w", s.cfg.Path, err)
	}
	s.f = f
	// A run reads up to the last complete line there is when it starts: a line still being
	// written is left whole for the next run.
	end, err := lastLineEnd(f)
	if err != nil {
		return fmt.Errorf("%s: %w", s.cfg.Path, err)
	}
	var cur cursor
	if s.res.State != nil {
		b, err := s.res.State.Load(ctx)
		if err != nil {
			return fmt.Errorf("load checkpoint: %w", err)
		}
		if len(b) > 0 {
			if err := json.Unmarshal(b, &cur); err != nil {
				return fmt.Errorf("checkpoint: %w", err)
			}
		}
	}
	s.columns = s.cfg.Columns
	if s.cfg.Format == "csv" && *s.cfg.Header {
		cr := s.newCSV(io.LimitReader(f, end))
		h, err := cr.Read()
		if err != nil {
			return fmt.Errorf("%s: header: %w", s.cfg.Path, err)
		}
		if len(s.columns) == 0 {
			s.columns = append([]string(nil), h...)
		}
		if cur.Offset == 0 {
			cur.Offset = cr.InputOffset()
		}
	}
	if _, err := f.Seek(cur.Offset, io.SeekStart); err != nil {
		return err
	}
	s.base, s.pos = cur.Offset, cur.Offset
	rest := io.LimitReader(f, max(end-cur.Offset, 0))
	if s.cfg.Format == "csv" {
		s.cr = s.newCSV(rest)
	} else {
		s.br = bufio.NewReaderSize(rest, 1<<16)
	}
	return nil
}

// lastLineEnd is the offset just after the file's last newline (0 if it has none).
func lastLineEnd(f *os.File) (int64, error) {
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	buf := make([]byte, 64<<10)
	for end := st.Size(); end > 0; {
		start := max(end-int64(len(buf)), 0)
		n, err := f.ReadAt(buf[:end-start], start)
		if err != nil && err != io.EOF {
			return 0, err
		}
		if i := bytes.LastIndexByte(buf[:n], '\n'); i >= 0 {
			return start + int64(i) + 1, nil
		}
		end = start
	}
	return 0, nil
}

func (s *Source) newCSV(r io.Reader) *csv.Reader {
	cr := csv.NewReader(bufio.NewReaderSize(r, 1<<16))
	cr.Comma = []rune(s.cfg.Delimiter)[0]
	cr.FieldsPerRecord = -1
	cr.ReuseRecord = true
	return cr
}

// Read returns the next records, and an ack that saves the checkpoint after them.
func (s *Source) Read(ctx context.Context, max int) ([]connector.Record, connector.AckFunc, error) {
	var out []connector.Record
	var err error
	if s.cr != nil {
		out, err = s.readCSV(max)
	} else {
		out, err = s.readJSONL(max)
	}
	if err != nil {
		return nil, nil, err
	}
	if len(out) == 0 {
		return nil, nil, connector.ErrEndOfInput
	}
	end := s.pos
	return out, func(ctx context.Context, err error) error {
		if err != nil || s.res.State == nil {
			return nil
		}
		b, _ := json.Marshal(cursor{Offset: end})
		return s.res.State.Save(ctx, b)
	}, nil
}

func (s *Source) readCSV(max int) ([]connector.Record, error) {
	var out []connector.Record
	for len(out) < max {
		row, err := s.cr.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s.cfg.Path, err)
		}
		s.pos = s.base + s.cr.InputOffset()
		rec := make(connector.Record, len(s.columns))
		for i, v := range row {
			if i < len(s.columns) {
				rec[s.columns[i]] = v
			} else {
				rec[fmt.Sprintf("column%d", i+1)] = v
			}
		}
		out = append(out, rec)
	}
	return out, nil
}

func (s *Source) readJSONL(max int) ([]connector.Record, error) {
	var out []connector.Record
	for len(out) < max {
		line, err := s.br.ReadBytes('\n')
		if err == io.EOF && len(line) > 0 && line[len(line)-1] != '\n' {
			// A line still being written: leave it for the next run.
			break
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		lineStart := s.pos
		s.pos += int64(len(line))
		if len(strings.TrimSpace(string(line))) == 0 {
			continue
		}
		var rec connector.Record
		if err := json.Unmarshal(line, &rec); err != nil {
			return nil, fmt.Errorf("%s at byte %d: not a JSON object: %w", s.cfg.Path, lineStart, err)
		}
		out = append(out, rec)
	}
	return out, nil
}

// Close closes the file.
func (s *Source) Close(context.Context) error {
	if s.f != nil {
		s.f.Close()
	}
	if s.root != nil {
		s.root.Close()
	}
	return nil
}
