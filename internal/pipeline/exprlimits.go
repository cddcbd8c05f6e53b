package pipeline

import (
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"regexp/syntax"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/ast"
	"github.com/expr-lang/expr/builtin"
	"github.com/expr-lang/expr/conf"
	"github.com/expr-lang/expr/file"
	"github.com/expr-lang/expr/vm"
	"github.com/expr-lang/expr/vm/runtime"

	"github.com/penstock/penstock/internal/connector"
)

// Limits on one evaluation of an expression, so that no expression and no record can hold or
// exhaust a worker. Go cannot stop a goroutine from outside, so an evaluation counts its work
// as it goes, in steps of about a microsecond each, and reads the clock at every count:
//   - each call of a closure (map, filter, all, reduce...) is a step;
//   - every builtin call is a step, plus one per KiB of text and per 16 elements it is given
//     or returns (trim with a non-ASCII cutset: per KiB times the cutset's length);
//   - ==, !=, in, uniq, toJSON, string, flatten, sort, min, max, mean and median take a step
//     per element they visit, parts shared by reference counted each time (they walk them);
//   - matches takes a step per KiB of text times its pattern's program size (at most 200);
//   - +, join, replace, toJSON, string, sort, uniq and every builtin returning text charge
//     the bytes they build or order.
//
// The record a map returns is walked the same way before anything encodes it.
var (
	maxExprSteps = 1_000_000
	maxExprBuilt = 16 << 20
	maxExprTime  = time.Second
)

// maxPatternInsts bounds a matches pattern's compiled program: matching costs the text's
// length times it.
const maxPatternInsts = 200

// budget is one evaluation's allowance. Each compiled instance of an expression has its own,
// bound into its functions, and is used by one goroutine at a time.
type budget struct {
	steps, built int
	start        time.Time
}

func (b *budget) reset() {
	b.steps, b.built = 0, 0
	b.start = time.Now()
}

func (b *budget) step(n int) error {
	b.steps += n
	if b.steps > maxExprSteps {
		return fmt.Errorf("expression exceeded %d loop steps", maxExprSteps)
	}
	if time.Since(b.start) > maxExprTime {
		return fmt.Errorf("expression ran longer than %s", maxExprTime)
	}
	return nil
}

func (b *budget) build(n int) error {
	b.built += n
	if b.built > maxExprBuilt {
		return fmt.Errorf("expression built more than %d MiB of text", maxExprBuilt>>20)
	}
	return nil
}

// walk charges what visiting v all the way down costs: a step per element and, with text,
// its strings' bytes.
func (b *budget) walk(v any, text bool) error {
	switch x := v.(type) {
	case nil, bool, int, int64, float64:
		return nil
	case string:
		if text {
			return b.build(len(x))
		}
		return nil
	case []any:
		if err := b.step(1 + len(x)); err != nil {
			return err
		}
		for _, e := range x {
			if err := b.walk(e, text); err != nil {
				return err
			}
		}
		return nil
	case map[string]any:
		if err := b.step(1 + len(x)); err != nil {
			return err
		}
		for k, e := range x {
			if text {
				if err := b.build(len(k)); err != nil {
					return err
				}
			}
			if err := b.walk(e, text); err != nil {
				return err
			}
		}
		return nil
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Slice, reflect.Array:
		if err := b.step(1 + rv.Len()); err != nil {
			return err
		}
		for i := range rv.Len() {
			if err := b.walk(rv.Index(i).Interface(), text); err != nil {
				return err
			}
		}
	case reflect.Map:
		if err := b.step(1 + rv.Len()); err != nil {
			return err
		}
		for it := rv.MapRange(); it.Next(); {
			if err := b.walk(it.Key().Interface(), text); err != nil {
				return err
			}
			if err := b.walk(it.Value().Interface(), text); err != nil {
				return err
			}
		}
	case reflect.String:
		if text {
			return b.build(rv.Len())
		}
	}
	return nil
}

// equal is expr's ==, with a step per element compared and per KiB of text.
func (b *budget) equal(x, y any) (bool, error) {
	xv, xok := x.([]any)
	yv, yok := y.([]any)
	if xok && yok {
		if len(xv) != len(yv) {
			return false, nil
		}
		if err := b.step(1 + len(xv)); err != nil {
			return false, err
		}
		for i := range xv {
			if eq, err := b.equal(xv[i], yv[i]); err != nil || !eq {
				return false, err
			}
		}
		return true, nil
	}
	switch xs := x.(type) {
	case string:
		if err := b.step(1 + len(xs)>>10); err != nil {
			return false, err
		}
	case nil, bool, int, int64, float64:
		if err := b.step(1); err != nil {
			return false, err
		}
	default:
		// Maps and other values: runtime.Equal (reflect.DeepEqual for maps), after counting
		// what it will visit.
		if err := b.walk(x, false); err != nil {
			return false, err
		}
		if err := b.walk(y, false); err != nil {
			return false, err
		}
	}
	return runtime.Equal(x, y), nil
}

// in is expr's `in`: an element of an array (compared as ==), a key of a map.
func (b *budget) in(needle, haystack any) (bool, error) {
	switch h := haystack.(type) {
	case []any:
		for _, e := range h {
			if eq, err := b.equal(needle, e); err != nil || eq {
				return eq, err
			}
		}
		return false, nil
	case map[string]any:
		if err := b.step(1); err != nil {
			return false, err
		}
	default:
		if err := b.walk(haystack, false); err != nil {
			return false, err
		}
	}
	return runtime.In(needle, haystack), nil
}

// add is expr's +, charging the text it builds.
func (b *budget) add(x, y any) (any, error) {
	if err := b.step(1); err != nil {
		return nil, err
	}
	if xs, ok := x.(string); ok {
		if ys, ok := y.(string); ok {
			if err := b.build(len(xs) + len(ys)); err != nil {
				return nil, err
			}
			return xs + ys, nil
		}
	}
	return runtime.Add(x, y), nil
}

// uniq is expr's uniq, with scalars deduplicated by a map instead of pairwise.
func (b *budget) uniq(args ...any) (any, error) {
	if len(args) != 1 {
		return nil, fmt.Errorf("invalid number of arguments (expected 1, got %d)", len(args))
	}
	v := reflect.ValueOf(args[0])
	if v.Kind() != reflect.Array && v.Kind() != reflect.Slice {
		return nil, fmt.Errorf("cannot uniq %s", v.Kind())
	}
	if err := b.walk(args[0], true); err != nil {
		return nil, err
	}
	ret := []any{}
	seen := map[any]bool{}
	var others []any
	for i := range v.Len() {
		x := v.Index(i).Interface()
		if k, ok := scalarKey(x); ok {
			if !seen[k] {
				seen[k] = true
				ret = append(ret, x)
			}
			continue
		}
		dup := false
		for _, o := range others {
			eq, err := b.equal(x, o)
			if err != nil {
				return nil, err
			}
			if dup = eq; dup {
				break
			}
		}
		if !dup {
			others = append(others, x)
			ret = append(ret, x)
		}
	}
	return ret, nil
}

// scalarKey is a map key under which two scalars are equal exactly when expr's == says so.
// Integers beyond 2^53, which expr compares with floats through float64, are compared pairwise.
func scalarKey(x any) (any, bool) {
	type num struct {
		i     int64
		f     float64
		float bool
	}
	const exact = 1 << 53
	switch v := x.(type) {
	case nil:
		return struct{}{}, true
	case string, bool:
		return v, true
	case int:
		if v > -exact && v < exact {
			return num{i: int64(v)}, true
		}
	case int64:
		if v > -exact && v < exact {
			return num{i: v}, true
		}
	case float64:
		if v > -exact && v < exact {
			if v == float64(int64(v)) {
				return num{i: int64(v)}, true
			}
			return num{f: v, float: true}, true
		}
	}
	return nil, false
}

// replaced is the length strings.Replace(s, old, new, n) returns, computed without building it.
func replaced(s, old, new string, n int) int {
	m := strings.Count(s, old)
	if old == "" {
		m = utf8.RuneCountInString(s) + 1
	}
	if n >= 0 && n < m {
		m = n
	}
	return len(s) + m*(len(new)-len(old))
}

// callBuiltin calls a builtin however it is implemented.
func callBuiltin(f *builtin.Function, args []any) (any, error) {
	switch {
	case f.Func != nil:
		return f.Func(args...)
	case f.Safe != nil:
		out, _, err := f.Safe(args...)
		return out, err
	case len(args) == 1:
		return f.Fast(args[0]), nil
	}
	return nil, fmt.Errorf("invalid number of arguments for %s (expected 1, got %d)", f.Name, len(args))
}

// size is a step per KiB of text and per 16 elements of v, without looking inside.
func size(v any) int {
	switch x := v.(type) {
	case string:
		return len(x) >> 10
	case []any:
		return len(x) >> 4
	case []string:
		return len(x) >> 4
	case map[string]any:
		return len(x) >> 4
	}
	return 0
}

// counted calls a builtin for the steps its arguments and result are worth, and charges the
// text it returns. Builtins whose cost follows everything inside their arguments (walk) have
// them walked first.
func (b *budget) counted(f *builtin.Function, walk bool) func(args ...any) (any, error) {
	return func(args ...any) (any, error) {
		n := 1
		for _, a := range args {
			n += size(a)
			if walk {
				if err := b.walk(a, true); err != nil {
					return nil, err
				}
			}
		}
		if f.Name == "trim" && len(args) == 2 {
			if cut, ok := args[1].(string); ok && !ascii(cut) {
				n += size(args[0]) * len(cut)
			}
		}
		if err := b.step(n); err != nil {
			return nil, err
		}
		out, err := callBuiltin(f, args)
		if err != nil {
			return nil, err
		}
		if s, ok := out.(string); ok {
			if err := b.build(len(s)); err != nil {
				return nil, err
			}
		}
		return out, b.step(size(out))
	}
}

func ascii(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// The hidden functions the patch calls. None is an identifier, so no expression can name one.
const (
	stepFunc    = "\x00step"
	eqFunc      = "\x00eq"
	neFunc      = "\x00ne"
	inFunc      = "\x00in"
	addFunc     = "\x00add"
	anyFunc     = "\x00any"
	keyFunc     = "\x00key"
	matchesFunc = "\x00matches"
)

// limitOptions bind b into the hidden functions and into a counted version of every builtin
// (with the builtin's own types, so the checker sees no difference).
func (b *budget) limitOptions(patterns map[string]pattern) []expr.Option {
	hidden := map[string]struct {
		fn func(args ...any) (any, error)
		t  any
	}{
		stepFunc: {func(...any) (any, error) { return true, b.step(1) }, new(func() bool)},
		eqFunc:   {func(a ...any) (any, error) { return b.equal(a[0], a[1]) }, new(func(any, any) bool)},
		neFunc: {func(a ...any) (any, error) {
			eq, err := b.equal(a[0], a[1])
			return !eq, err
		}, new(func(any, any) bool)},
		inFunc:  {func(a ...any) (any, error) { return b.in(a[0], a[1]) }, new(func(any, any) bool)},
		addFunc: {func(a ...any) (any, error) { return b.add(a[0], a[1]) }, new(func(any, any) any)},
		// anyFunc hides a type the checker cannot vouch for (reduce returns its initial value
		// for an empty array, whatever its closure's type).
		anyFunc: {func(a ...any) (any, error) { return a[0], nil }, new(func(any) any)},
		keyFunc: {func(a ...any) (any, error) { return a[0], b.walk(a[0], true) }, new(func(any) any)},
		matchesFunc: {func(a ...any) (any, error) {
			s, ok := a[0].(string)
			if !ok {
				return nil, fmt.Errorf("matches: %T is not a string", a[0])
			}
			p := patterns[a[1].(string)]
			if err := b.step(1 + len(s)*p.insts>>10); err != nil {
				return nil, err
			}
			return p.re.MatchString(s), nil
		}, new(func(any, string) bool)},
	}
	var opts []expr.Option
	for name, h := range hidden {
		opts = append(opts, expr.Function(name, h.fn, h.t))
	}
	special := map[string]func(args ...any) (any, error){
		"uniq": b.uniq,
		"replace": func(a ...any) (any, error) {
			if len(a) == 3 || len(a) == 4 {
				s, _ := a[0].(string)
				old, _ := a[1].(string)
				nw, _ := a[2].(string)
				n := -1
				if len(a) == 4 {
					n = runtime.ToInt(a[3])
				}
				if err := b.build(replaced(s, old, nw, n)); err != nil {
					return nil, err
				}
			}
			return b.counted(builtin.Builtins[builtin.Index["replace"]], false)(a...)
		},
	}
	walked := map[string]bool{"join": true, "toJSON": true, "string": true, "flatten": true, "sort": true,
		"max": true, "min": true, "mean": true, "median": true}
	for _, f := range builtin.Builtins {
		if f.Predicate || f.Name == "repeat" {
			continue
		}
		fn := special[f.Name]
		if fn == nil {
			fn = b.counted(f, walked[f.Name])
		}
		override := *f
		override.Func, override.Fast, override.Safe = fn, nil, nil
		opts = append(opts, func(c *conf.Config) { c.Functions[override.Name] = &override })
	}
	return opts
}

// limits is the compile-time patch that routes an expression through its budget: closure
// bodies take a step, sortBy and groupBy keys are walked, ==, !=, in, + and matches become
// the counted functions, and `record` is the environment itself.
type limits struct {
	err      *file.Error
	patterns map[string]pattern
}

// pattern is a literal regular expression of matches, and the size of its program.
type pattern struct {
	re    *regexp.Regexp
	insts int
}

// fail keeps the first refusal, at the node refused, for the compiler's caret.
func (l *limits) fail(n ast.Node, err error) {
	if l.err == nil {
		l.err = &file.Error{Location: n.Location(), Message: err.Error()}
	}
}

func (l *limits) Visit(node *ast.Node) {
	call := func(name string, args ...ast.Node) *ast.CallNode {
		return &ast.CallNode{Callee: &ast.IdentifierNode{Value: name}, Arguments: args}
	}
	switch n := (*node).(type) {
	case *ast.PredicateNode:
		n.Node = &ast.ConditionalNode{Cond: call(stepFunc), Exp1: n.Node, Exp2: &ast.NilNode{}}
	case *ast.BuiltinNode:
		switch n.Name {
		case "sortBy", "groupBy":
			if len(n.Arguments) > 1 {
				if p, ok := n.Arguments[1].(*ast.PredicateNode); ok {
					p.Node = call(keyFunc, p.Node)
				}
			}
		}
	case *ast.BinaryNode:
		if scalar(n.Left) && scalar(n.Right) {
			return // known numbers or booleans: constant cost, and the checker's types are kept
		}
		switch n.Operator {
		case "==":
			ast.Patch(node, call(eqFunc, n.Left, n.Right))
		case "!=":
			ast.Patch(node, call(neFunc, n.Left, n.Right))
		case "in":
			if r, ok := n.Right.(*ast.BinaryNode); ok && r.Operator == ".." {
				return // expr compares with the bounds instead of building the range
			}
			ast.Patch(node, call(inFunc, n.Left, n.Right))
		case "+":
			ast.Patch(node, call(addFunc, n.Left, n.Right))
		case "matches":
			lit, ok := n.Right.(*ast.StringNode)
			if !ok {
				l.fail(n.Right, errors.New("the pattern of matches must be a literal string"))
				return
			}
			re, err := syntax.Parse(lit.Value, syntax.Perl)
			if err != nil {
				l.fail(n.Right, fmt.Errorf("matches: %v", err))
				return
			}
			prog, err := syntax.Compile(re.Simplify())
			if err == nil && len(prog.Inst) > maxPatternInsts {
				err = fmt.Errorf("matches: the pattern compiles to %d instructions, more than %d", len(prog.Inst), maxPatternInsts)
			}
			if err != nil {
				l.fail(n.Right, err)
				return
			}
			l.patterns[lit.Value] = pattern{regexp.MustCompile(lit.Value), len(prog.Inst)}
			ast.Patch(node, call(matchesFunc, n.Left, n.Right))
		}
	case *ast.IdentifierNode:
		if n.Value == "record" {
			ast.Patch(node, &ast.IdentifierNode{Value: "$env"})
		}
	case *ast.VariableDeclaratorNode:
		if n.Name == "record" {
			l.fail(n, errors.New("record is the record itself: it cannot be declared"))
		}
	}
}

// hideTypes runs before limits, which trusts the checker's types: it hides the type of reduce,
// which returns its initial value for an empty array whatever its closure's type.
type hideTypes struct{}

func (hideTypes) Visit(node *ast.Node) {
	if n, ok := (*node).(*ast.BuiltinNode); ok && n.Name == "reduce" {
		ast.Patch(node, &ast.CallNode{Callee: &ast.IdentifierNode{Value: anyFunc}, Arguments: []ast.Node{n}})
	}
}

// scalar reports whether the checker knows n to be a number or a boolean.
func scalar(n ast.Node) bool {
	t := n.Type()
	if t == nil {
		return false
	}
	switch t.Kind() {
	case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Float32, reflect.Float64:
		return true
	}
	return false
}

// program is an expression compiled for use by any number of goroutines: each evaluation
// takes an instance, with its own budget, from a pool, compiling one when none is free.
type program struct {
	src   string
	extra []expr.Option
	pool  chan *instance
}

type instance struct {
	p *vm.Program
	b *budget
}

func (p *program) instance() (*instance, error) {
	b := &budget{}
	l := &limits{patterns: map[string]pattern{}}
	opts := append([]expr.Option{
		expr.Env(map[string]any{}),
		expr.AllowUndefinedVariables(),
		expr.MaxNodes(maxExprNodes),
		expr.DisableBuiltin("repeat"),
		expr.Timezone("UTC"),
		// The checker runs again between the two, so limits sees reduce's type hidden.
		expr.Patch(hideTypes{}),
		expr.Patch(l),
	}, b.limitOptions(l.patterns)...)
	c, err := expr.Compile(p.src, append(opts, p.extra...)...)
	if err == nil && l.err != nil {
		err = l.err.Bind(file.NewSource(p.src))
	}
	if err != nil {
		return nil, err
	}
	return &instance{p: c, b: b}, nil
}

// run evaluates the expression with rec as its environment: every field by name, and rec
// itself as `record`.
func (p *program) run(rec connector.Record) (any, error) {
	var in *instance
	select {
	case in = <-p.pool:
	default:
		var err error
		if in, err = p.instance(); err != nil {
			return nil, err
		}
	}
	defer func() {
		select {
		case p.pool <- in:
		default:
		}
	}()
	in.b.reset()
	machine := vm.VM{MemoryBudget: exprMemoryBudget}
	out, err := machine.Run(in.p, rec)
	if err != nil {
		return nil, err
	}
	// What leaves the expression is encoded by what follows: its text and everything inside
	// its arrays and maps count too.
	if m, ok := out.(map[string]any); ok {
		for k, v := range m {
			switch x := v.(type) {
			case nil, bool, int, int64, float64:
			case string:
				err = in.b.build(len(k) + len(x))
			default:
				err = in.b.walk(x, true)
			}
			if err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}
