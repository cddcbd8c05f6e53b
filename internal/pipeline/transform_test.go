package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/penstock/penstock/internal/connector"
)

func compile(t *testing.T, specs ...map[string]any) []Transform {
	t.Helper()
	ts, _, err := compileTransforms(context.Background(), specs, func(context.Context, string) ([]byte, error) { return []byte("k1"), nil })
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

func TestMapAndFilter(t *testing.T) {
	ts := compile(t,
		map[string]any{"filter": "amount > 0 && status != 'void'"},
		map[string]any{"map": "{id: int(id), total: amount * 100, who: upper(record['customer-name'])}"},
	)
	in := []connector.Record{
		{"id": "1", "amount": 2.5, "status": "ok", "customer-name": "ann"},
		{"id": "2", "amount": 0.0, "status": "ok", "customer-name": "bob"},
		{"id": "3", "amount": 4.0, "status": "void", "customer-name": "cy"},
	}
	var out []connector.Record
	for _, r := range in {
		keep := true
		var err error
		for _, tr := range ts {
			if r, keep, err = tr.Apply(r); err != nil || !keep {
				break
			}
		}
		if err != nil {
			t.Fatal(err)
		}
		if keep {
			out = append(out, r)
		}
	}
	if len(out) != 1 || out[0]["id"] != 1 || out[0]["total"] != 250.0 || out[0]["who"] != "ANN" {
		t.Fatalf("got %v", out)
	}
}

func TestMapMustReturnRecord(t *testing.T) {
	ts := compile(t, map[string]any{"map": "amount"})
	if _, _, err := ts[0].Apply(connector.Record{"amount": 1}); err == nil || !strings.Contains(err.Error(), "transforms[0].map") {
		t.Fatalf("non-record result: %v", err)
	}
}

func TestExpressionErrorsNameThePath(t *testing.T) {
	for _, c := range []struct {
		spec map[string]any
		want string
	}{
		{map[string]any{"map": "{a: "}, "transforms[0].map:"},
		{map[string]any{"filter": "1 + 2"}, "transforms[0].filter:"},
		{map[string]any{"filter": 3}, "transforms[0].filter: must be an expression"},
		{map[string]any{"reduce": "x"}, "transforms[0].reduce: unknown transform"},
		{map[string]any{"map": "x", "filter": "y"}, "transforms[0]: exactly one"},
		{map[string]any{"map": strings.Repeat("a+", 3000) + "a"}, "longer than"},
		{map[string]any{"map": "{a: " + strings.Repeat("1+", 1500) + "1}"}, "transforms[0].map:"},
		{map[string]any{"redact": map[string]any{"fields": []any{"email"}, "key": "hunter2"}}, "transforms[0].redact.key: a literal credential"},
		{map[string]any{"redact": map[string]any{"fields": []any{"email"}, "mode": "rot13", "key": "${secret:k}"}}, "transforms[0].redact.mode"},
		{map[string]any{"validate": map[string]any{"schema": map[string]any{"type": "nope"}}}, "transforms[0].validate.schema"},
		{map[string]any{"validate": map[string]any{"schema": map[string]any{"$ref": "http://169.254.169.254/x"}}}, "transforms[0].validate.schema"},
	} {
		_, _, err := compileTransforms(context.Background(), []map[string]any{c.spec}, nil)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want %q", c.spec, err, c.want)
		}
	}
}

func TestCostlyExpressionStops(t *testing.T) {
	// Nested ranges would run 10^12 steps; the memory budget stops the first million.
	ts := compile(t, map[string]any{"filter": "len(map(1..1000000, map(1..1000000, #))) > 0"})
	if _, _, err := ts[0].Apply(connector.Record{}); err == nil || !strings.Contains(err.Error(), "memory budget") {
		t.Fatalf("costly expression: %v", err)
	}
}

// Loops over a record's own arrays allocate nothing, so the memory budget does not stop them:
// the step allowance does, and costly steps count for the work they do. The test lowers the
// allowance so that it, not the time limit, is reached first even under -race.
func TestLoopsOverRecordArraysStop(t *testing.T) {
	defer func(n int, d time.Duration) { maxExprSteps, maxExprTime = n, d }(maxExprSteps, maxExprTime)
	maxExprSteps = 10_000
	items := make([]any, 1000)
	for i := range items {
		items[i] = i
	}
	rec := connector.Record{"items": items, "big": strings.Repeat("a", 1<<20)}
	for _, c := range []struct{ filter, want string }{
		// 10^9 steps.
		{"all(items, all(items, all(items, true)))", "exceeded 10000 loop steps"},
		{"reduce(items, reduce(items, reduce(items, #acc + 1, 0), 0), 0) > 0", "exceeded 10000 loop steps"},
		// 10^6 closure calls, each upper-casing 1 MiB: a terabyte, counted per KiB.
		{"any(items, any(items, len(upper(big)) == 0))", "exceeded 10000 loop steps"},
	} {
		ts := compile(t, map[string]any{"filter": c.filter})
		start := time.Now()
		_, _, err := ts[0].Apply(rec)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "transforms[0].filter") {
			t.Errorf("%s: %v, want %q", c.filter, err, c.want)
		}
		t.Logf("%s: stopped after %s", c.filter, time.Since(start).Round(time.Millisecond))
	}
	// The clock is read at every step: 10^6 steps cannot fit in a millisecond.
	maxExprSteps, maxExprTime = 1_000_000, time.Millisecond
	ts := compile(t, map[string]any{"filter": "all(items, all(items, true))"})
	if _, _, err := ts[0].Apply(rec); err == nil || !strings.Contains(err.Error(), "ran longer than 1ms") {
		t.Errorf("time limit: %v", err)
	}
	maxExprSteps, maxExprTime = 10_000, time.Second
	// Exactly the allowance passes.
	ts = compile(t, map[string]any{"filter": "count(items, count(items[:9], true) == 9) == 1000"})
	if _, keep, err := ts[0].Apply(connector.Record{"items": items}); err != nil || !keep {
		t.Fatalf("10,000 steps: %v %v", keep, err)
	}
}

// chain declares v0 = first and vN = next(v(N-1)) for N up to n, then evaluates body.
func chain(first, next string, n int, body string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "let v0 = %s; ", first)
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, "let v%d = %s; ", i, strings.ReplaceAll(next, "V", fmt.Sprintf("v%d", i-1)))
	}
	b.WriteString(body)
	return b.String()
}

// Builtins and operators whose cost is not linear in their input are counted too: values
// built by sharing (each level doubling what a walk visits), text built by doubling, and
// regular expressions built from a record. Each is stopped within about the time limit, and
// none takes the process down.
func TestAmplifiersStop(t *testing.T) {
	big := strings.Repeat("a", 1<<20)
	k32 := strings.Repeat("b", 32<<10)
	rec := func() connector.Record {
		return connector.Record{"big": big, "k32": k32, "n": 1,
			"p": strings.Repeat("é", 256<<10), "q": strings.Repeat("ü", 256<<10) + "é"}
	}
	for _, c := range []struct{ expr, want string }{
		{chain("[1, 1]", "[V, V]", 26, "v26 == v26"), "loop steps"},
		{chain("[1, 1]", "[V, V]", 26, "v26 != v26"), "loop steps"},
		{chain("[1, 1]", "[V, V]", 24, "max(v24) > 0"), "loop steps"},
		{chain("[1, 1]", "[V, V]", 24, "len(flatten(v24)) > 0"), "loop steps"},
		{chain("[1, 1]", "[V, V]", 24, "len(string(v24)) > 0"), "loop steps"},
		{chain("[1, 1]", "[V, V]", 24, "v24 in [1, v24]"), "loop steps"},
		{chain("[big, big]", "[V, V]", 9, "len(toJSON(v9)) > 0"), "built more than 16 MiB"},
		{chain("k32", "V + V", 20, "len(v20) > 0"), "built more than 16 MiB"},
		{"len(replace(k32, '', k32)) > 0", "built more than 16 MiB"},
		{"len(join(map(1..1000, big))) > 0", "built more than 16 MiB"},
		{"len(reduce(1..40, #acc + #acc, k32)) > 0", "built more than 16 MiB"},
		// reduce returns its initial value for an empty array, whatever its closure's type.
		{chain("reduce(1..0, 0.5, big)", "V + V", 9, "v9 != 0.5"), "built more than 16 MiB"},
		{"let w = reduce(1..0, 0.5, reduce(1..28, [#acc, #acc], 1)); w == w", "loop steps"},
		// Orderings and hashes of long strings that share one record's memory.
		{"len(sort(map(1..8000, big[(# * 7919) % 8009:]))) > 0", "built more than 16 MiB"},
		{"len(sortBy(1..6000, big[(# * 7919) % 6007:])) > 0", "built more than 16 MiB"},
		{"len(uniq(map(1..40000, big[#:]))) > 0", "built more than 16 MiB"},
		// Builtins linear in what they are given, given much.
		{"len(trim(p, q)) == 0", "loop steps"},
		{"len(map(1..100, split(big, ''))) > 0", "loop steps|ran longer than 1s"},
		{chain("k32", "toBase64(V)", 30, "len(v30) > 0"), "built more than 16 MiB"},
		// Counted by its work; the race detector slows matching enough for the clock to come first.
		{"any(1..99999, big matches '^[a-z]+!')", "loop steps|ran longer than 1s"},
	} {
		ts := compile(t, map[string]any{"filter": c.expr})
		start := time.Now()
		_, _, err := ts[0].Apply(rec())
		// On a busy machine the 1 s clock can stop an expression before its own budget does;
		// either way it is stopped, which is what must hold.
		if err == nil || !slices.ContainsFunc(append(strings.Split(c.want, "|"), "ran longer than 1s"), func(w string) bool { return strings.Contains(err.Error(), w) }) {
			t.Errorf("%.60s...: %v, want %q", c.expr, err, c.want)
		}
		t.Logf("%.60s: stopped after %s", c.expr, time.Since(start).Round(time.Millisecond))
	}
	// A map's result is walked too: a record built by sharing cannot reach a sink, even
	// where the checker is told it holds a number.
	for _, m := range []string{chain("[1, 1]", "[V, V]", 26, "{x: v26}"), "{x: reduce(1..0, #, reduce(1..26, [#acc, #acc], 1))}"} {
		ts := compile(t, map[string]any{"map": m})
		if _, _, err := ts[0].Apply(rec()); err == nil || !strings.Contains(err.Error(), "loop steps") {
			t.Errorf("shared result %.50s: %v", m, err)
		}
	}
}

// What used to be costly or fatal now runs in linear time and gives expr's answers.
func TestLinearBuiltinsKeepTheirResults(t *testing.T) {
	ts := compile(t,
		map[string]any{"filter": `len(string(record)) > 0 && len(toJSON(record)) > 0 && len(toJSON($env)) > 0`},
		map[string]any{"map": `{u: len(uniq(1..20000)), m: uniq([1, 1.0, "1", [1], [1], nil, nil, true]),
			j: join(["a", "b"], "-"), r: replace("aXbX", "X", "yy"), s: "a" + "b", n: 1 + 2.5, e: [1, [2]] == [1, [2]],
			i: [2] in [[1], [2]], ni: 3 not in [1, 2], k: "x" in {x: 1}, mx: max([3, [9, 4]]), f: flatten([[1], [2, [3]]])}`},
	)
	out, keep, err := ts[0].Apply(connector.Record{"id": 7})
	if err != nil || !keep {
		t.Fatalf("filter: %v %v", keep, err)
	}
	if out, _, err = ts[1].Apply(out); err != nil {
		t.Fatal(err)
	}
	got, _ := json.Marshal(out)
	want := `{"e":true,"f":[1,2,3],"i":true,"j":"a-b","k":true,"m":[1,"1",[1],null,true],"mx":9,"n":3.5,"ni":true,"r":"ayybyy","s":"ab","u":20000}`
	// As plain expr answers: a range is compared with its bounds, maps are equal only with
	// equal types inside, integers beyond 2^53 meet floats through float64, and comparing or
	// looking up in long text is not building it.
	for _, c := range []struct{ expr, want string }{
		{"int(n) in 1..200000", "true"},
		{"{a: 1} == {a: 1.0}", "false"},
		{"[1] == [1.0]", "true"},
		{"len(uniq([9007199254740993, 9007199254740992.0]))", "1"},
		{`all(1..40, "big" in record) && all(1..40, big != "x")`, "true"},
		{`"b" matches "^[a-c]$" && !("d" matches "^[a-c]$")`, "true"},
	} {
		ts := compile(t, map[string]any{"map": "{v: " + c.expr + "}"})
		out, _, err := ts[0].Apply(connector.Record{"n": "5", "big": strings.Repeat("a", 1<<20)})
		if got, _ := json.Marshal(out["v"]); err != nil || string(got) != c.want {
			t.Errorf("%s: %s %v, want %s", c.expr, got, err, c.want)
		}
	}
	if string(got) != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	for _, c := range []struct{ expr, want string }{
		{"email matches pattern", "the pattern of matches must be a literal string"},
		{"let record = 1; record", "record is the record itself"},
		{`big matches "[a-z]{1000}!"`, "more than 200"},
	} {
		_, _, err := compileTransforms(context.Background(), []map[string]any{{"filter": c.expr}}, nil)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.expr, err, c.want)
		}
	}
	if _, _, err := compileTransforms(context.Background(), []map[string]any{{"filter": `email matches "^[a-z]+@"`}}, nil); err != nil {
		t.Errorf("a literal pattern: %v", err)
	}
}

// Counting steps changes no result: closures keep their values and types, and the count is
// not left in the record.
func TestCountedLoopsKeepTheirResults(t *testing.T) {
	ts := compile(t,
		map[string]any{"filter": "all(items, # > 0) && any(items, # == 3) && count(items, # > 1) == 2"},
		map[string]any{"map": `{doubled: map(items, # * 2), big: filter(items, # >= 2), sum: reduce(items, #acc + #, 0),
			sorted: sortBy(items, -#), first: find(items, # > 1), groups: len(groupBy(items, # % 2)), copy: record}`},
	)
	in := connector.Record{"items": []any{1, 2, 3}}
	rec := in
	var keep bool
	var err error
	for _, tr := range ts {
		if rec, keep, err = tr.Apply(rec); err != nil || !keep {
			t.Fatalf("%v %v", keep, err)
		}
	}
	got, err := json.Marshal(rec)
	want := `{"big":[2,3],"copy":{"items":[1,2,3]},"doubled":[2,4,6],"first":2,"groups":2,"sorted":[3,2,1],"sum":6}`
	if err != nil || string(got) != want {
		t.Fatalf("got %s %v\nwant %s", got, err, want)
	}
	if len(in) != 1 {
		t.Fatalf("the record kept additions: %v", in)
	}
}

func TestRepeatIsDisabled(t *testing.T) {
	ts := compile(t, map[string]any{"map": "{a: repeat('x', 1000000000)}"})
	if _, _, err := ts[0].Apply(connector.Record{}); err == nil {
		t.Fatal("repeat ran")
	}
}

func TestRedactJoinsAndHides(t *testing.T) {
	ts := compile(t, map[string]any{"redact": map[string]any{"fields": []any{"email", "card"}, "key": "${secret:k}"}})
	a, _, _ := ts[0].Apply(connector.Record{"email": "ann@example.com", "card": "4111111111111111", "n": 1})
	b, _, _ := ts[0].Apply(connector.Record{"email": "ann@example.com", "card": "4000000000000002"})
	if a["email"] != b["email"] || a["card"] == b["card"] || a["n"] != 1 {
		t.Fatalf("a %v b %v", a, b)
	}
	if strings.Contains(a["email"].(string), "ann") || !strings.HasPrefix(a["email"].(string), "hmac:") {
		t.Fatalf("email not hidden: %v", a["email"])
	}
	other, _, _ := compileTransforms(context.Background(), []map[string]any{{"redact": map[string]any{"fields": []any{"email"}, "key": "${secret:k}"}}},
		func(context.Context, string) ([]byte, error) { return []byte("another key"), nil })
	c, _, _ := other[0].Apply(connector.Record{"email": "ann@example.com"})
	if c["email"] == a["email"] {
		t.Fatal("the digest does not depend on the key")
	}
	masked := compile(t, map[string]any{"redact": map[string]any{"fields": []any{"card"}, "mode": "mask", "key": "${secret:k}"}})
	m, _, _ := masked[0].Apply(connector.Record{"card": "4111111111111111"})
	if s := m["card"].(string); !strings.HasSuffix(s, "-1111") || strings.Contains(s, "411111") {
		t.Fatalf("mask: %v", s)
	}
}

func TestValidate(t *testing.T) {
	ts := compile(t, map[string]any{"validate": map[string]any{"schema": map[string]any{
		"type": "object", "required": []any{"id"},
		"properties": map[string]any{"id": map[string]any{"type": "integer"}, "email": map[string]any{"type": "string"}},
	}}})
	if _, keep, err := ts[0].Apply(connector.Record{"id": int64(3), "email": "a@b"}); err != nil || !keep {
		t.Fatalf("valid: %v", err)
	}
	if _, _, err := ts[0].Apply(connector.Record{"email": 4}); err == nil || !strings.Contains(err.Error(), "transforms[0].validate") {
		t.Fatalf("invalid: %v", err)
	}
}
