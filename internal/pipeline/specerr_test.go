package pipeline

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/penstock/penstock/internal/connector"
	"github.com/penstock/penstock/internal/connector/files"
	"github.com/penstock/penstock/internal/connector/httpc"
	"github.com/penstock/penstock/internal/connector/postgres"
	"github.com/penstock/penstock/internal/connector/queue"
)

func testRegistry() *connector.Registry {
	return connector.NewRegistry(files.Plugin, httpc.Plugin, postgres.Plugin, queue.Plugin)
}

// where is an error's position and field path, as the tests compare them.
type where struct {
	line, col int
	path, msg string // msg: a part of the message
}

func loadErrors(t *testing.T, doc string) SpecErrors {
	t.Helper()
	_, _, err := Load("spec.yaml", []byte(doc), testRegistry())
	var es SpecErrors
	if !errors.As(err, &es) || !errors.Is(err, ErrInvalid) {
		t.Fatalf("%q: got %v (%T), want SpecErrors", doc, err, err)
	}
	return es
}

func sameErrors(t *testing.T, es SpecErrors, want []where) {
	t.Helper()
	if len(es) != len(want) {
		t.Fatalf("%d errors, want %d:\n%v", len(es), len(want), es)
	}
	for i, w := range want {
		e := es[i]
		if e.File != "spec.yaml" || e.Line != w.line || e.Column != w.col || e.Path != w.path || !strings.Contains(e.Msg, w.msg) {
			t.Errorf("error %d: %s:%d:%d %q %q, want %d:%d %q containing %q", i, e.File, e.Line, e.Column, e.Path, e.Msg, w.line, w.col, w.path, w.msg)
		}
	}
}

// YAML syntax errors are placed at the true line and column: an unclosed { at the {, not on the
// line before it as the v3 parser said.
func TestYAMLErrorsAtTheirPlace(t *testing.T) {
	for _, c := range []struct {
		name, doc string
		want      where
	}{
		{"unclosed brace on line 2", "name: a\nsource: {type: queue, queue: in\nsink: {type: queue, queue: out}\n",
			where{2, 9, "", `"{" is not closed: expected "," or "}" by line 3, column 5`}},
		{"unclosed bracket", "name: a\ntransforms: [{map: x}\nsink: {type: queue}\n",
			where{2, 13, "", `"[" is not closed`}},
		{"unclosed quote", "name: a\nsource: \"abc\nsink: b\n",
			where{2, 9, "", "the quote is not closed"}},
		{"indented deeper", "name: a\nsource:\n  type: queue\n    queue: in\n",
			where{4, 10, "", `unexpected ":": this line is indented deeper`}},
		{"indented less", "name: a\nsource:\n  type: queue\n queue: in\n",
			where{4, 2, "", "bad indentation"}},
		{"tab", "name: a\nsource:\n\ttype: queue\n",
			where{3, 1, "", "a tab: YAML indents with spaces only"}},
		{"stray brace", "name: a\nsource: {type: queue}}\n",
			where{2, 22, "", `unexpected "}"`}},
		{"duplicate key", "name: a\nsource: {type: queue, queue: in}\nname: b\nsink: {type: queue, queue: out}\n",
			where{3, 1, "name", "duplicate key (first at line 1)"}},
		{"error on line 1", "name: a: b\n",
			where{1, 8, "", `unexpected ":"`}},
	} {
		t.Run(c.name, func(t *testing.T) {
			sameErrors(t, loadErrors(t, c.doc), []where{c.want})
		})
	}
}

// Every problem of a spec is reported at once, in document order, at its offending node: an
// unknown key at the key, a wrong value at the value, a missing field at its parent's key. A
// connector's own rules (postgres' table or query) run once its settings decode, so they are
// not in this list beside source.password.
func TestEveryErrorIsReported(t *testing.T) {
	for _, c := range []struct {
		name, doc string
		want      []where
	}{
		{"three mistakes", `name: orders
source: {type: file, path: in.csv, delimter: ";"}
transforms:
  - map: '{id: int(id), cents: amount * 100 +}'
sink: {type: queue, queue: out}
batch: {size: lots}
`, []where{
			{2, 36, "source.delimter", "unknown key (known: columns, delimiter, format, header, path)"},
			{4, 46, "transforms[0].map", `unexpected token Bracket("}")`},
			{6, 15, "batch.size", "must be an integer"},
		}},
		{"structure, connectors and limits", `name: Orders
source:
  type: postgres
  host: db.example
  database: shop
  user: loader
  password: hunter2
sink: {type: http, url: 'https://x.example/in', timeout: 1000h}
schedule: every 5 minutes
concurrency: 40
errors: {retries: -7}
bogus: 1
`, []where{
			{1, 7, "name", "1-58 of a-z"},
			{7, 13, "source.password", "a literal credential is not allowed"},
			{8, 58, "sink.timeout", "at most"},
			{9, 11, "schedule", "every takes a duration"},
			{10, 14, "concurrency", "at most 16"},
			{11, 19, "errors.retries", "-1 (none) to 100"},
			{12, 1, "bogus", "unknown key"},
		}},
		{"missing fields", "source: {path: a.csv}\ntransforms: [{reduce: x}, {map: a, filter: b}]\n", []where{
			{1, 1, "name", "required"},
			{1, 1, "sink", "required"},
			{1, 1, "source.type", "required (a connector name)"},
			{2, 15, "transforms[0].reduce", "unknown transform"},
			{2, 27, "transforms[1]", "exactly one of"},
		}},
		{"literal block expression", "name: a\nsource: {type: queue, queue: in}\nsink: {type: queue, queue: out}\ntransforms:\n  - filter: |\n      a > 1 &&\n        b ==\n",
			[]where{{7, 13, "transforms[0].filter", "unexpected token EOF"}}},
		{"JSON", `{"name": "a", "source": {"type": "queue", "queue": "in", "x": 1}, "sink": {"type": "queue"}}`, []where{
			{1, 58, "source.x", "unknown key"},
			{1, 67, "sink.queue", "required"},
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			sameErrors(t, loadErrors(t, c.doc), c.want)
		})
	}
}

// An expression error shows the expression's line with a caret under the column, each on its
// own indented line, and places the error at the column in the file.
func TestExpressionCaret(t *testing.T) {
	doc := "name: a\nsource: {type: queue, queue: in}\nsink: {type: queue, queue: out}\ntransforms:\n" +
		"  - map: |\n      {\n        id: id,\n        email: lower(email) ++ \"x\"\n      }\n" +
		"  - filter: email matches pattern\n" +
		"  - map: >\n      {a:\n      1 +}\n"
	_, _, err := Load("spec.yaml", []byte(doc), testRegistry())
	want := `pipeline spec has 3 error(s):
  spec.yaml:8:30: transforms[0].map: invalid operation: + (mismatched type string)
        email: lower(email) ++ "x"
                             ^
  spec.yaml:10:27: transforms[1].filter: the pattern of matches must be a literal string
      email matches pattern
                    ^
  spec.yaml:11:10: transforms[2].map: unexpected token Bracket("}")
      {a: 1 +}
             ^`
	if err == nil || err.Error() != want {
		t.Fatalf("got\n%v\nwant\n%s", err, want)
	}
	var es SpecErrors
	errors.As(err, &es)
	if d := es[0].Detail(); d != "invalid operation: + (mismatched type string) (line 3, column 24 of the expression)" {
		t.Fatalf("detail: %q", d)
	}
}

// Parse and Check alone name the field path, without a file or position for Check.
func TestParseAndCheckStayUsable(t *testing.T) {
	_, err := Parse([]byte("name: a\nsource: {type: queue, queue: in}\nsink: {type: queue, queue: out}\nbatch: {size: -3}\n"))
	if err == nil || err.Error() != "4:15: batch.size: 1 to 10000" {
		t.Fatalf("parse: %v", err)
	}
	spec, err := Parse([]byte("name: a\nsource: {type: queue, queue: in}\nsink: {type: queue}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Check(spec, testRegistry()); err == nil || err.Error() != "sink.queue: required" {
		t.Fatalf("check: %v", err)
	}
}

// A document of many mistakes is answered with the first maxErrors of them, and a count of the
// rest; a mapping of 80000 keys, some twice, is read in linear time (the parser's own check
// of duplicates, skipped, takes the square: 37s for a megabyte with go.yaml.in/yaml/v3).
func TestManyErrorsAreBounded(t *testing.T) {
	var b strings.Builder
	for i := 0; b.Len() < MaxSpecBytes-100; i++ {
		fmt.Fprintf(&b, "k%d: 1\nk%d: 2\n", i, i)
	}
	es := loadErrors(t, b.String())
	// name, sink and source are missing (1:1), k0 is there twice (2:1), k1 too (4:1)...
	if len(es) != maxErrors+1 || es[3].Line != 2 || es[3].Path != "k0" || es[4].Line != 4 || es[4].Path != "k1" ||
		!strings.HasPrefix(es[maxErrors].Msg, "and ") {
		t.Fatalf("%d errors: %v", len(es), es[:5])
	}
}
