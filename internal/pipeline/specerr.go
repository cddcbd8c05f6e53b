package pipeline

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/penstock/penstock/internal/connector"
)

// SpecError is one problem with a spec: where it is and what is wrong, in words.
type SpecError struct {
	// File names the document ("" when it has no name, as through the API).
	File string
	// Line and Column locate the offending node in the document, from 1; 0 when unknown.
	Line, Column int
	// Path is the field path (source.queue, transforms[1].map); "" for the whole document.
	Path string
	Msg  string
	// Expr, for an expression that does not compile, is where in the expression.
	Expr *ExprPos
}

// ExprPos is a position inside an expression, and the text of its line there.
type ExprPos struct {
	Line, Column int // from 1
	Text         string
}

// Error is one line, FILE:LINE:COL: field.path: message, followed for an expression by its line
// and a caret under the column, each on its own indented line.
func (e SpecError) Error() string {
	var b strings.Builder
	var where []string
	if e.File != "" {
		where = append(where, e.File)
	}
	if e.Line > 0 {
		where = append(where, strconv.Itoa(e.Line), strconv.Itoa(e.Column))
	}
	if len(where) > 0 {
		b.WriteString(strings.Join(where, ":") + ": ")
	}
	if e.Path != "" {
		b.WriteString(e.Path + ": ")
	}
	b.WriteString(e.Msg)
	if e.Expr != nil {
		text := strings.ReplaceAll(e.Expr.Text, "\t", " ")
		fmt.Fprintf(&b, "\n    %s\n    %s^", text, strings.Repeat(" ", max(e.Expr.Column-1, 0)))
	}
	return b.String()
}

// Detail is the message without the location, for a client that is told the field path
// apart: an expression's position is given in words.
func (e SpecError) Detail() string {
	if e.Expr == nil {
		return e.Msg
	}
	return fmt.Sprintf("%s (line %d, column %d of the expression)", e.Msg, e.Expr.Line, e.Expr.Column)
}

// SpecErrors is every problem found in a spec, in document order. errors.Is(err, ErrInvalid)
// holds for it.
type SpecErrors []SpecError

// Error is the one error, or a count then one error per line (an expression's caret lines
// under its error).
func (es SpecErrors) Error() string {
	if len(es) == 1 {
		return es[0].Error()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "pipeline spec has %d error(s):", len(es))
	for _, e := range es {
		b.WriteString("\n  " + strings.ReplaceAll(e.Error(), "\n", "\n  "))
	}
	return b.String()
}

// Is makes every spec error an ErrInvalid.
func (es SpecErrors) Is(target error) bool { return target == ErrInvalid }

// checker collects the problems of one spec, locating each in its document when it has one.
type checker struct {
	src  *source // nil when there is no document to point into
	errs SpecErrors
	seen map[string]bool // field paths that already have an error
}

// add records a problem with path; a field keeps its first problem only, so that a value
// refused by the decoder is not refused again by the rule that would have checked it.
func (c *checker) add(path, msg string) { c.addAt(path, msg, false) }

// addKey records a problem with the key at path itself (an unknown key).
func (c *checker) addKey(path, msg string) { c.addAt(path, msg, true) }

func (c *checker) addf(path, format string, args ...any) { c.add(path, fmt.Sprintf(format, args...)) }

func (c *checker) addAt(path, msg string, key bool) {
	e := SpecError{Path: path, Msg: msg}
	if c.src != nil {
		e.File = c.src.name
		e.Line, e.Column = c.src.clamp(c.src.locate(path, key))
	}
	c.put(e)
}

// put records e unless its field already has a problem.
func (c *checker) put(e SpecError) {
	if c.seen[e.Path] {
		return
	}
	if c.seen == nil {
		c.seen = map[string]bool{}
	}
	c.seen[e.Path] = true
	c.errs = append(c.errs, e)
}

// addErr records what a decoder or a connector returned for the settings at base: each of
// Decode's FieldErrors, or an error whose message starts with a field path below base, as
// connectors' errors do.
func (c *checker) addErr(base string, err error) {
	var fes connector.FieldErrors
	if errors.As(err, &fes) {
		for _, fe := range fes {
			c.addAt(fe.Path, fe.Msg, fe.Key)
		}
		return
	}
	msg := err.Error()
	if p, rest, ok := strings.Cut(msg, ": "); ok && within(p, base) {
		c.add(p, rest)
		return
	}
	c.add(base, msg)
}

// within reports whether path is base or a field below it.
func within(path, base string) bool {
	if base == "" {
		return path != "" && !strings.ContainsAny(path, " \t\n")
	}
	return path == base || strings.HasPrefix(path, base+".") || strings.HasPrefix(path, base+"[")
}

// maxErrors bounds the problems reported, as a document of a megabyte can hold a hundred
// thousand.
const maxErrors = 100

// err returns the problems, in document order, the first maxErrors of them, or nil.
func (c *checker) err() error {
	if len(c.errs) == 0 {
		return nil
	}
	es := append(SpecErrors(nil), c.errs...)
	sort.SliceStable(es, func(i, j int) bool {
		a, b := es[i], es[j]
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		if a.Column != b.Column {
			return a.Column < b.Column
		}
		return a.Path < b.Path
	})
	if n := len(es); n > maxErrors {
		es = append(es[:maxErrors], SpecError{File: es[0].File, Msg: fmt.Sprintf("and %d more errors", n-maxErrors)})
	}
	return es
}
