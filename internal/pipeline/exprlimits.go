package pipeline

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/ast"
	"github.com/expr-lang/expr/builtin"
	"github.com/expr-lang/expr/vm"
	"github.com/expr-lang/expr/vm/runtime"

	"github.com/penstock/penstock/internal/connector"
)

// Limits on one evaluation of an expression, so that no expression and no record can hold or
// exhaust a worker. Go cannot stop a goroutine from outside, so every construct whose cost is
// not linear in its input is counted as it goes: closures (map, filter, all, reduce...) take a
// step per call; comparisons, toJSON, string, flatten, uniq, min, max, mean and median take a
// step per element they visit (parts shared by reference counted each time, as they walk
// them); +, join, replace, toJSON and string charge the bytes they build. Everything else is
// linear in what it is given, which these bound.
var (
	maxExprSteps = 1_000_000
	maxExprBuilt = 16 << 20
	maxExprTime  = time.Second
)

// budget is one evaluation's allowance. Each compiled instance of an expression has its own,
// bound into its functions, and is used by one goroutine at a time.
type budget struct {
	steps, sinceClock, built int
	start                    time.Time
}

// reset readies the budget for an evaluation. The clock starts at the first check, after 16
// steps, so that evaluations taking fewer (most) never read it.
func (b *budget) reset() {
	b.steps, b.sinceClock, b.built = 0, 0, 0
	b.start = time.Time{}
}

func (b *budget) step(n int) error {
	b.steps += n
	if b.steps > maxExprSteps {
		return fmt.Errorf("expression exceeded %d loop steps", maxExprSteps)
	}
	if b.sinceClock += n; b.sinceClock >= 16 {
		b.sinceClock = 0
		if b.start.IsZero() {
			b.start = time.Now()
		} else if time.Since(b.start) > maxExprTime {
			return fmt.Errorf("expression ran longer than %s", maxExprTime)
		}
	}
	return nil
}

func (b *budget) build(n int) error {
	b.built += n
	if b.built > maxExprBuilt {
		return fmt.Errorf("expression built more than %d MiB of text", maxExprBuilt>>20)
	}
	return b.step(0)
}

// walk charges what visiting v all the way down costs: a step per element, its strings'
// bytes.
func (b *budget) walk(v any) error {
	switch x := v.(type) {
	case nil, bool, int, int64, float64:
		return nil
	case string:
		return b.build(len(x))
	case []any:
		if err := b.step(len(x)); err != nil {
			return err
		}
		for _, e := range x {
			if err := b.walk(e); err != nil {
				return err
			}
		}
		return nil
	case map[string]any:
		if err := b.step(len(x)); err != nil {
			return err
		}
		for k, e := range x {
			if err := b.build(len(k)); err != nil {
				return err
			}
			if err := b.walk(e); err != nil {
				return err
			}
		}
		return nil
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Slice, reflect.Array:
		if err := b.step(rv.Len()); err != nil {
			return err
		}
		for i := range rv.Len() {
			if err := b.walk(rv.Index(i).Interface()); err != nil {
				return err
			}
		}
	case reflect.Map:
		if err := b.step(rv.Len()); err != nil {
			return err
		}
		for it := rv.MapRange(); it.Next(); {
			if err := b.walk(it.Key().Interface()); err != nil {
				return err
			}
			if err := b.walk(it.Value().Interface()); err != nil {
				return err
			}
		}
	case reflect.String:
		return b.build(rv.Len())
	}
	return nil
}

// sized reports whether two collections of lengths n and m need comparing element by
// element, charging a step per element when they do.
func (b *budget) sized(n, m int) (bool, error) {
	if n != m {
		return false, nil
	}
	return true, b.step(n)
}

// equal is expr's == with a step per element compared.
func (b *budget) equal(x, y any) (bool, error) {
	switch xv := x.(type) {
	case []any:
		yv, ok := y.([]any)
		if !ok {
			break
		}
		if more, err := b.sized(len(xv), len(yv)); !more || err != nil {
			return false, err
		}
		for i := range xv {
			if eq, err := b.equal(xv[i], yv[i]); err != nil || !eq {
				return false, err
			}
		}
		return true, nil
	case map[string]any:
		yv, ok := y.(map[string]any)
		if !ok {
			break
		}
		if more, err := b.sized(len(xv), len(yv)); !more || err != nil {
			return false, err
		}
		for k, e := range xv {
			f, ok := yv[k]
			if !ok {
				return false, nil
			}
			if eq, err := b.equal(e, f); err != nil || !eq {
				return false, err
			}
		}
		return true, nil
	}
	// Scalars, and values of other types (compared by runtime.Equal, walked first).
	if err := b.walk(x); err != nil {
		return false, err
	}
	if err := b.walk(y); err != nil {
		return false, err
	}
	return runtime.Equal(x, y), nil
}

// in is expr's `in`: an element of an array (compared as ==), a key of a map.
func (b *budget) in(needle, haystack any) (bool, error) {
	if arr, ok := haystack.([]any); ok {
		for _, e := range arr {
			if eq, err := b.equal(needle, e); err != nil || eq {
				return eq, err
			}
		}
		return false, nil
	}
	if err := b.walk(haystack); err != nil {
		return false, err
	}
	return runtime.In(needle, haystack), nil
}

// add is expr's +, charging the text it builds.
func (b *budget) add(x, y any) (any, error) {
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
	if err := b.step(v.Len()); err != nil {
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
func scalarKey(x any) (any, bool) {
	type num struct {
		i     int64
		f     float64
		float bool
	}
	switch v := x.(type) {
	case nil:
		return struct{}{}, true
	case string, bool:
		return v, true
	case int:
		return num{i: int64(v)}, true
	case int64:
		return num{i: v}, true
	case float64:
		if v == float64(int64(v)) {
			return num{i: int64(v)}, true
		}
		return num{f: v, float: true}, true
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

// guarded calls a builtin after walking its arguments, for builtins whose cost follows what
// they visit (toJSON, string, flatten, min, max, mean, median), and charges the text it built.
func (b *budget) guarded(name string) func(args ...any) (any, error) {
	f := builtin.Builtins[builtin.Index[name]]
	return func(args ...any) (any, error) {
		for _, a := range args {
			if err := b.walk(a); err != nil {
				return nil, err
			}
		}
		var out any
		var err error
		switch {
		case f.Func != nil:
			out, err = f.Func(args...)
		case f.Safe != nil:
			out, _, err = f.Safe(args...)
		case len(args) == 1:
			out = f.Fast(args[0])
		default:
			err = fmt.Errorf("invalid number of arguments for %s (expected 1, got %d)", name, len(args))
		}
		if s, ok := out.(string); ok && err == nil {
			err = b.build(len(s))
		}
		return out, err
	}
}

// The hidden functions the patch calls. None is an identifier, so no expression can name one.
const (
	stepFunc = "\x00step"
	eqFunc   = "\x00eq"
	neFunc   = "\x00ne"
	inFunc   = "\x00in"
	addFunc  = "\x00add"
)

// limitOptions bind b into the hidden functions and the counted replacements of builtins.
func (b *budget) limitOptions() []expr.Option {
	byName := map[string]func(args ...any) (any, error){
		stepFunc: func(...any) (any, error) { return true, b.step(1) },
		eqFunc:   func(a ...any) (any, error) { return b.equal(a[0], a[1]) },
		neFunc: func(a ...any) (any, error) {
			eq, err := b.equal(a[0], a[1])
			return !eq, err
		},
		inFunc:  func(a ...any) (any, error) { return b.in(a[0], a[1]) },
		addFunc: func(a ...any) (any, error) { return b.add(a[0], a[1]) },
		"uniq":  b.uniq,
		"join": func(a ...any) (any, error) {
			if len(a) == 2 {
				if glue, ok := a[1].(string); ok {
					if err := b.build(len(glue) * reflect.ValueOf(a[0]).Len()); err != nil {
						return nil, err
					}
				}
			}
			return b.guarded("join")(a...)
		},
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
			return builtin.Builtins[builtin.Index["replace"]].Func(a...)
		},
	}
	for _, name := range []string{"toJSON", "string", "flatten", "max", "min", "mean", "median"} {
		byName[name] = b.guarded(name)
	}
	types := map[string][]any{
		stepFunc:  {new(func() bool)},
		eqFunc:    {new(func(any, any) bool)},
		neFunc:    {new(func(any, any) bool)},
		inFunc:    {new(func(any, any) bool)},
		addFunc:   {new(func(any, any) any)},
		"toJSON":  {new(func(any) string)},
		"string":  {new(func(any) string)},
		"join":    {new(func([]any, string) string), new(func([]any) string), new(func([]string, string) string), new(func([]string) string)},
		"replace": {new(func(string, string, string) string), new(func(string, string, string, int) string)},
	}
	var opts []expr.Option
	for name, fn := range byName {
		opts = append(opts, expr.Function(name, fn, types[name]...))
	}
	return opts
}

// limits is the compile-time patch that routes an expression through its budget: closure
// bodies take a step, ==, !=, in and + become the counted functions, `record` is the
// environment itself, and a regular expression must be a literal (one built from a record
// would cost its length times the text's).
type limits struct{ err error }

func (l *limits) Visit(node *ast.Node) {
	call := func(name string, args ...ast.Node) *ast.CallNode {
		return &ast.CallNode{Callee: &ast.IdentifierNode{Value: name}, Arguments: args}
	}
	switch n := (*node).(type) {
	case *ast.PredicateNode:
		if c, ok := n.Node.(*ast.ConditionalNode); ok {
			if cn, ok := c.Cond.(*ast.CallNode); ok {
				if id, ok := cn.Callee.(*ast.IdentifierNode); ok && id.Value == stepFunc {
					return // patched already
				}
			}
		}
		n.Node = &ast.ConditionalNode{Cond: call(stepFunc), Exp1: n.Node, Exp2: &ast.NilNode{}}
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
			ast.Patch(node, call(inFunc, n.Left, n.Right))
		case "+":
			ast.Patch(node, call(addFunc, n.Left, n.Right))
		case "matches":
			if _, ok := n.Right.(*ast.StringNode); !ok && l.err == nil {
				l.err = errors.New("the pattern of matches must be a literal string")
			}
		}
	case *ast.IdentifierNode:
		if n.Value == "record" {
			ast.Patch(node, &ast.IdentifierNode{Value: "$env"})
		}
	case *ast.VariableDeclaratorNode:
		if n.Name == "record" && l.err == nil {
			l.err = errors.New("record is the record itself: it cannot be declared")
		}
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
	// flat is set when the checker knows the result holds no array or map, so there is
	// nothing shared in it to walk.
	flat bool
}

// flatResult reports whether n is a scalar, a string, or a map literal of those.
func flatResult(n ast.Node) bool {
	if m, ok := n.(*ast.MapNode); ok {
		for _, p := range m.Pairs {
			if !flatResult(p.(*ast.PairNode).Value) {
				return false
			}
		}
		return true
	}
	t := n.Type()
	return t != nil && (scalar(n) || t.Kind() == reflect.String)
}

func (p *program) instance() (*instance, error) {
	b := &budget{}
	l := &limits{}
	opts := append([]expr.Option{
		expr.Env(map[string]any{}),
		expr.AllowUndefinedVariables(),
		expr.MaxNodes(maxExprNodes),
		expr.DisableBuiltin("repeat"),
		expr.Timezone("UTC"),
		expr.Patch(l),
	}, b.limitOptions()...)
	c, err := expr.Compile(p.src, append(opts, p.extra...)...)
	if err == nil {
		err = l.err
	}
	if err != nil {
		return nil, err
	}
	return &instance{p: c, b: b, flat: flatResult(c.Node())}, nil
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
	if err == nil && !in.flat {
		// What leaves the expression is walked (and encoded) by what follows: bound it too.
		err = in.b.walk(out)
	}
	return out, err
}
