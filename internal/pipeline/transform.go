package pipeline

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/file"
	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/penstock/penstock/internal/connector"
)

// Limits on user expressions, checked when they are compiled at apply time; exprlimits.go
// bounds each evaluation.
const (
	maxExprBytes = 4096
	maxExprNodes = 1000
	// exprMemoryBudget bounds what one evaluation allocates (ranges, arrays, maps).
	exprMemoryBudget = 100_000
)

// Transform changes, drops or fails one record.
type Transform interface {
	// Apply returns the record to pass on, or keep false to drop it; an error sends the
	// record to the dead-letter queue.
	Apply(rec connector.Record) (out connector.Record, keep bool, err error)
}

// compileExpr compiles an expression once, at apply time, so that its errors reach the
// spec's author (checker.exprError places them); runs compile an instance per goroutine from
// the same source.
func compileExpr(src string, extra ...expr.Option) (*program, error) {
	if src == "" {
		return nil, errors.New("empty expression")
	}
	if len(src) > maxExprBytes {
		return nil, fmt.Errorf("longer than %d bytes", maxExprBytes)
	}
	p := &program{src: src, extra: extra, pool: make(chan *instance, 16)}
	in, err := p.instance()
	if err != nil {
		return nil, err
	}
	p.pool <- in
	return p, nil
}

// exprError records why the expression src at path does not compile: where the document
// holds it, and with the expression's line and a caret under the column when the compiler
// says where.
func (c *checker) exprError(path, src string, err error) {
	var fe *file.Error
	if !errors.As(err, &fe) || fe.Line < 1 {
		c.add(path, oneLine(err.Error()))
		return
	}
	text := ""
	if lines := strings.Split(src, "\n"); fe.Line <= len(lines) {
		text = lines[fe.Line-1]
	}
	e := SpecError{Path: path, Msg: oneLine(fe.Message), Expr: &ExprPos{Line: fe.Line, Column: fe.Column + 1, Text: text}}
	if c.src != nil {
		e.File = c.src.name
		e.Line, e.Column = c.src.clamp(c.src.exprAt(path, fe.Line, fe.Column))
	}
	c.put(e)
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

type mapTransform struct {
	path string
	p    *program
}

func (t *mapTransform) Apply(rec connector.Record) (connector.Record, bool, error) {
	out, err := t.p.run(rec)
	if err != nil {
		return nil, false, fmt.Errorf("%s: %s", t.path, oneLine(err.Error()))
	}
	m, ok := out.(map[string]any)
	if !ok {
		return nil, false, fmt.Errorf("%s: returned %T, not a record", t.path, out)
	}
	return m, true, nil
}

type filterTransform struct {
	path string
	p    *program
}

func (t *filterTransform) Apply(rec connector.Record) (connector.Record, bool, error) {
	out, err := t.p.run(rec)
	if err != nil {
		return nil, false, fmt.Errorf("%s: %s", t.path, oneLine(err.Error()))
	}
	keep, ok := out.(bool)
	if !ok {
		return nil, false, fmt.Errorf("%s: returned %T, not true or false", t.path, out)
	}
	return rec, keep, nil
}

// redactConfig hashes or masks fields with a keyed HMAC: equal values give equal results, so
// joins on a redacted field still work, and without the key nobody can test a guess.
type redactConfig struct {
	Fields []string            `json:"fields" required:"true"`
	Mode   string              `json:"mode" enum:"hash,mask"`
	Key    connector.SecretRef `json:"key" required:"true"`
}

type redactTransform struct {
	fields []string
	mask   bool
	key    []byte
}

func (t *redactTransform) Apply(rec connector.Record) (connector.Record, bool, error) {
	out := make(connector.Record, len(rec))
	for k, v := range rec {
		out[k] = v
	}
	for _, f := range t.fields {
		v, ok := rec[f]
		if !ok || v == nil {
			continue
		}
		s := fmt.Sprint(v)
		m := hmac.New(sha256.New, t.key)
		m.Write([]byte(s))
		sum := hex.EncodeToString(m.Sum(nil))[:32]
		if t.mask {
			// The last four characters stay readable, as on a card receipt; the rest is the
			// keyed digest, so masked values still join.
			tail := ""
			if r := []rune(s); len(r) > 8 {
				tail = string(r[len(r)-4:])
			}
			out[f] = "***" + sum[:12] + "-" + tail
		} else {
			out[f] = "hmac:" + sum
		}
	}
	return out, true, nil
}

type validateConfig struct {
	Schema map[string]any `json:"schema" required:"true"`
}

type validateTransform struct {
	path   string
	schema *jsonschema.Schema
}

func (t *validateTransform) Apply(rec connector.Record) (connector.Record, bool, error) {
	// The validator takes JSON's types; a round trip gives it exactly those.
	b, err := json.Marshal(rec)
	if err != nil {
		return nil, false, fmt.Errorf("%s: %v", t.path, err)
	}
	v, err := jsonschema.UnmarshalJSON(strings.NewReader(string(b)))
	if err != nil {
		return nil, false, fmt.Errorf("%s: %v", t.path, err)
	}
	if err := t.schema.Validate(v); err != nil {
		return nil, false, fmt.Errorf("%s: %s", t.path, oneLine(err.Error()))
	}
	return rec, true, nil
}

// compileSchema compiles a validate transform's schema; its error is what is wrong, on one line.
func compileSchema(schema map[string]any) (*jsonschema.Schema, error) {
	c := jsonschema.NewCompiler()
	// Schemas may not load anything from outside themselves.
	c.UseLoader(noLoader{})
	if err := c.AddResource("schema.json", schema); err != nil {
		return nil, errors.New(oneLine(err.Error()))
	}
	s, err := c.Compile("schema.json")
	if err != nil {
		return nil, errors.New(oneLine(err.Error()))
	}
	return s, nil
}

type noLoader struct{}

func (noLoader) Load(url string) (any, error) {
	return nil, fmt.Errorf("schema references %s: only references inside the schema are allowed", url)
}

// compileTransforms builds the transforms of a spec. secret resolves redaction keys; nil
// (validation without the application) uses a placeholder key. Every problem of the spec is
// in its SpecErrors; another error (a key that cannot be read) stops it.
func compileTransforms(ctx context.Context, specs []map[string]any, secret func(ctx context.Context, name string) ([]byte, error)) ([]Transform, connector.Refs, error) {
	var c checker
	out, refs, err := c.transforms(ctx, specs, secret)
	if err != nil {
		return nil, refs, err
	}
	if err := c.err(); err != nil {
		return nil, refs, err
	}
	return out, refs, nil
}

// transforms compiles what it can of specs, recording each problem.
func (c *checker) transforms(ctx context.Context, specs []map[string]any, secret func(ctx context.Context, name string) ([]byte, error)) ([]Transform, connector.Refs, error) {
	var out []Transform
	var refs connector.Refs
	for i, t := range specs {
		path := fmt.Sprintf("transforms[%d]", i)
		if len(t) != 1 {
			c.add(path, "exactly one of map, filter, redact, validate")
			continue
		}
		var kind string
		var arg any
		for k, v := range t {
			kind, arg = k, v
		}
		path += "." + kind
		switch kind {
		case "map", "filter":
			src, ok := arg.(string)
			if !ok {
				c.add(path, "must be an expression (a string)")
				continue
			}
			var extra []expr.Option
			if kind == "filter" {
				extra = append(extra, expr.AsBool())
			}
			p, err := compileExpr(src, extra...)
			if err != nil {
				c.exprError(path, src, err)
				continue
			}
			if kind == "map" {
				out = append(out, &mapTransform{path: path, p: p})
			} else {
				out = append(out, &filterTransform{path: path, p: p})
			}
		case "redact":
			m, ok := arg.(map[string]any)
			if !ok {
				c.add(path, "must be a mapping with fields, mode and key")
				continue
			}
			var cfg redactConfig
			r, err := connector.Decode(path, m, &cfg)
			refs.Merge(r)
			if err != nil {
				c.addErr(path, err)
				continue
			}
			if len(cfg.Fields) == 0 {
				c.add(path+".fields", "at least one field")
				continue
			}
			if cfg.Key.Name() == "" {
				c.add(path+".key", "required, as ${secret:NAME}")
				continue
			}
			key := []byte("validation placeholder")
			if secret != nil {
				if key, err = secret(ctx, cfg.Key.Name()); err != nil {
					return nil, refs, fmt.Errorf("%s.key: %w", path, err)
				}
			}
			fields := append([]string(nil), cfg.Fields...)
			sort.Strings(fields)
			out = append(out, &redactTransform{fields: fields, mask: cfg.Mode == "mask", key: key})
		case "validate":
			m, ok := arg.(map[string]any)
			if !ok {
				c.add(path, "must be a mapping with schema")
				continue
			}
			var cfg validateConfig
			if _, err := connector.Decode(path, m, &cfg); err != nil {
				c.addErr(path, err)
				continue
			}
			s, err := compileSchema(cfg.Schema)
			if err != nil {
				c.add(path+".schema", err.Error())
				continue
			}
			out = append(out, &validateTransform{path: path, schema: s})
		default:
			c.addKey(path, "unknown transform (map, filter, redact, validate)")
		}
	}
	return out, refs, nil
}
