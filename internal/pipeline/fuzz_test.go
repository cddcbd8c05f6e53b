package pipeline

import (
	"context"
	"errors"
	"testing"

	"github.com/penstock/penstock/internal/connector"
)

// FuzzParse feeds arbitrary documents to the spec parser and the offline checks: they must
// accept or refuse with ErrInvalid, never panic, and an accepted spec must survive its own
// round trip. Load, which does both at once, must agree, and place its errors inside the
// document.
func FuzzParse(f *testing.F) {
	reg := testRegistry()
	for _, seed := range []string{
		"name: a\nsource: {type: file, path: a.csv}\nsink: {type: file, path: b.jsonl}\n",
		"name: b\nsource: {type: postgres, host: db, database: d, user: u, table: t, cursor_column: id}\nsink: {type: http, url: 'https://x.example/in'}\nschedule: '*/5 * * * *'\nbatch: {size: 10, flush_interval: 2s}\n",
		"name: c\nsource: {type: queue, queue: q}\ntransforms: [{filter: 'a > 1'}, {map: '{a: a}'}, {redact: {fields: [e], key: '${secret:k}'}}]\nsink: {type: queue, queue: r}\n",
		`{"name": "d", "source": {"type": "queue", "queue": "q"}, "sink": {"type": "queue", "queue": "q"}, "errors": {"retries": -1}}`,
		"a: &a [*a, *a]\n", "name: [1, 2]\n", "{", "",
		"name: e\nsource: {type: queue\nsink: {type: queue}\n", "name: f\nsource:\n\ttype: queue\n",
		"name: g\nsource: {type: queue, queue: q}\nsink: {type: queue, queue: r}\ntransforms:\n  - map: |\n      {a:\n       1 +}\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		_, _, loadErr := Load("f", doc, reg)
		var es SpecErrors
		if loadErr != nil && !errors.As(loadErr, &es) {
			t.Fatalf("load error not SpecErrors: %v", loadErr)
		}
		lines := len(newSource("", doc).lines)
		for _, e := range es {
			if e.Line < 0 || e.Line > lines || e.Column < 0 || e.Line == 0 && e.Column != 0 {
				t.Fatalf("error outside the document's %d lines: %v", lines, e)
			}
		}
		spec, err := Parse(doc)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error not ErrInvalid: %v", err)
			}
			if loadErr == nil {
				t.Fatalf("Load accepts what Parse refuses: %v", err)
			}
			return
		}
		_, err = Check(spec, reg)
		if err != nil && !errors.Is(err, ErrInvalid) {
			t.Fatalf("check error not ErrInvalid: %v", err)
		}
		if (err == nil) != (loadErr == nil) {
			t.Fatalf("Load says %v, Parse and Check say %v", loadErr, err)
		}
		again, err := Parse(spec.JSON())
		if err != nil {
			t.Fatalf("accepted spec does not parse back: %v\n%s", err, spec.JSON())
		}
		if string(again.JSON()) != string(spec.JSON()) {
			t.Fatalf("round trip changed the spec:\n%s\n%s", spec.JSON(), again.JSON())
		}
	})
}

// FuzzExpr compiles arbitrary expressions as map and filter transforms and runs what compiles
// on a record: refusals name the field, and a run ends (the memory budget bounds it) with a
// record, a boolean or an error, never a panic.
func FuzzExpr(f *testing.F) {
	for _, seed := range []string{"{a: a * 2}", "a > 1 && b == 'x'", "len(map(1..1000000, #)) > 0", "upper(s)", "record['x-y']", "1/0", "{", "repeat('x', 9)"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, src string) {
		for _, kind := range []string{"map", "filter"} {
			ts, _, err := compileTransforms(context.Background(), []map[string]any{{kind: src}}, nil)
			if err != nil {
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("%s %q: error not ErrInvalid: %v", kind, src, err)
				}
				continue
			}
			_, _, _ = ts[0].Apply(connector.Record{"a": 2.0, "b": "x", "s": "str", "x-y": []any{1.0}})
		}
	})
}
