package pipeline

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"unicode/utf8"

	"go.yaml.in/yaml/v4"
)

// The spec is read with go.yaml.in/yaml/v4 because its errors carry the line and column of
// the problem and of the construct it is in (yaml.LoadError); v3's carry a line alone, from 0
// or from 1 depending on the stage that failed, so an unclosed { on line 2 said line 1.

// source is a spec document and where each field path is in it.
type source struct {
	name  string
	lines []string
	at    map[string]place
	paths map[[2]int]string // at by position, made when first needed
}

// place is where a field is: its key (0 for list items and the document) and its value.
type place struct {
	keyLine, keyCol int
	node            *yaml.Node
}

// maxIndexDepth bounds the field paths indexed: errors name fields no deeper than a connector's
// nested settings, and a deeper problem is placed at its enclosing field.
const maxIndexDepth = 8

func newSource(name string, doc []byte) *source {
	return &source{name: name, lines: yamlLines.Split(string(doc), -1), at: map[string]place{}}
}

// yamlLines are YAML's line breaks, which its line numbers count.
var yamlLines = regexp.MustCompile("\r\n|[\r\n\u0085\u2028\u2029]")

// index records where the fields of n are, to maxIndexDepth (deeper ones are placed at their
// field at that depth), and refuses a key that a mapping holds twice, at any depth. The parser
// is not asked to refuse them: its check takes time in the square of a mapping's keys.
func (c *checker) index(path string, n *yaml.Node, depth int) {
	indexed := depth <= maxIndexDepth
	switch n.Kind {
	case yaml.MappingNode:
		first := make(map[string]int, len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Kind != yaml.ScalarNode || k.Tag == "!!merge" {
				continue
			}
			p := path
			if indexed {
				p = join(path, k.Value)
				c.src.at[p] = place{k.Line, k.Column, v}
			}
			if line, dup := first[k.Value]; dup {
				c.put(SpecError{File: c.src.name, Line: k.Line, Column: k.Column, Path: p,
					Msg: fmt.Sprintf("duplicate key (first at line %d)", line)})
			} else {
				first[k.Value] = k.Line
			}
			c.index(p, v, depth+1)
		}
	case yaml.SequenceNode:
		for i, v := range n.Content {
			p := path
			if indexed {
				p = fmt.Sprintf("%s[%d]", path, i)
				c.src.at[p] = place{node: v}
			}
			c.index(p, v, depth+1)
		}
	}
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// locate gives the line and column of the field at path: of its key when the key is what is
// wrong, else of its value. A field that is not there (a missing required one) is placed at
// the nearest enclosing field that is.
func (s *source) locate(path string, key bool) (int, int) {
	if p, ok := s.at[path]; ok {
		if key && p.keyLine > 0 {
			return p.keyLine, p.keyCol
		}
		return p.node.Line, p.node.Column
	}
	for path != "" {
		i := strings.LastIndexAny(path, ".[")
		path = path[:max(i, 0)]
		if p, ok := s.at[path]; ok {
			if p.keyLine > 0 {
				return p.keyLine, p.keyCol
			}
			return p.node.Line, p.node.Column
		}
	}
	return 0, 0
}

// exprAt maps a position inside the expression at path (line from 1, column from 0, in
// characters) to the document, where the document holds the expression's text as it is: a
// plain or quoted scalar on one line, or a literal block (|). Elsewhere (a folded or
// multi-line scalar, escapes, JSON) it gives the position of the expression itself.
func (s *source) exprAt(path string, line, col int) (int, int) {
	p, ok := s.at[path]
	if !ok || p.node.Kind != yaml.ScalarNode {
		return s.locate(path, false)
	}
	n := p.node
	exprLines := strings.Split(n.Value, "\n")
	if line < 1 || line > len(exprLines) {
		return n.Line, n.Column
	}
	want := exprLines[line-1]
	holds := func(fileLine, start int) bool {
		if fileLine < 1 || fileLine > len(s.lines) || start < 0 {
			return false
		}
		r := []rune(s.lines[fileLine-1])
		w := []rune(want)
		return start+len(w) <= len(r) && string(r[start:start+len(w)]) == want
	}
	switch {
	case n.Style&yaml.LiteralStyle != 0:
		// The block's lines follow its indicator's line, indented like its first non-blank line.
		indent := -1
		for i := n.Line; i < len(s.lines) && i < n.Line+len(exprLines); i++ {
			if t := strings.TrimLeft(s.lines[i], " "); t != "" {
				indent = len(s.lines[i]) - len(t)
				break
			}
		}
		if holds(n.Line+line, indent) {
			return n.Line + line, indent + col + 1
		}
	case len(exprLines) == 1 && n.Style&(yaml.FoldedStyle|yaml.TaggedStyle) == 0:
		start := n.Column - 1
		if n.Style&(yaml.SingleQuotedStyle|yaml.DoubleQuotedStyle) != 0 {
			start++
		}
		if holds(n.Line, start) {
			return n.Line, start + col + 1
		}
	}
	return n.Line, n.Column
}

// pathAt names the field whose key or value starts at line:col ("" when none does): the
// shortest path, as a value and its first key start together.
func (s *source) pathAt(line, col int) string {
	if s.paths == nil {
		s.paths = map[[2]int]string{}
		shorter := func(at [2]int, p string) {
			if q, ok := s.paths[at]; !ok || len(p) < len(q) || len(p) == len(q) && p < q {
				s.paths[at] = p
			}
		}
		for p, pl := range s.at {
			if pl.keyLine > 0 {
				shorter([2]int{pl.keyLine, pl.keyCol}, p)
			}
			shorter([2]int{pl.node.Line, pl.node.Column}, p)
		}
	}
	return s.paths[[2]int{line, col}]
}

// clamp keeps a position inside the document: the parser places the end of a document
// without a final line break on the line after it, which is the end of its last line.
func (s *source) clamp(line, col int) (int, int) {
	if last := len(s.lines); line > last {
		return last, utf8.RuneCountInString(s.lines[last-1]) + 1
	}
	return line, col
}

// runeAt is the character at line:col of the document, or 0.
func (s *source) runeAt(line, col int) rune {
	if line < 1 || line > len(s.lines) {
		return 0
	}
	r := []rune(s.lines[line-1])
	if col < 1 || col > len(r) {
		return 0
	}
	return r[col-1]
}

// load reads doc into a generic value and indexes where its fields are, recording what makes
// it unreadable.
func (c *checker) load(doc []byte) (any, bool) {
	var root yaml.Node
	if err := yaml.Load(doc, &root); err != nil {
		c.yamlErrors(err)
		return nil, false
	}
	if len(root.Content) == 1 {
		c.src.at[""] = place{node: root.Content[0]}
		c.index("", root.Content[0], 1)
	}
	var raw any
	if err := yaml.Load(doc, &raw, yaml.WithUniqueKeys(false)); err != nil {
		c.yamlErrors(err)
		return nil, false
	}
	return raw, true
}

func (c *checker) yamlErrors(err error) {
	var les *yaml.LoadErrors
	var le *yaml.LoadError
	switch {
	case errors.As(err, &les):
		for _, e := range les.Errors {
			c.yamlError(e)
		}
	case errors.As(err, &le):
		c.yamlError(le)
	default:
		c.errs = append(c.errs, SpecError{File: c.src.name, Msg: "not valid YAML: " + redactQuoted(err.Error())})
	}
}

// yamlError records a YAML error at the true position of its problem, in words.
func (c *checker) yamlError(e *yaml.LoadError) {
	at, msg := e.Mark, strings.TrimPrefix(e.Message, "yaml: ")
	found := fmt.Sprintf("line %d, column %d", at.Line, at.Column)
	switch ch := c.src.runeAt(at.Line, at.Column); {
	case strings.HasPrefix(msg, "did not find expected ',' or '") && e.ContextMark.Line > 0:
		closer := strings.TrimSuffix(strings.TrimPrefix(msg, "did not find expected ',' or '"), "'")
		opener := map[string]string{"}": "{", "]": "["}[closer]
		msg = fmt.Sprintf("%q is not closed: expected \",\" or %q by %s", opener, closer, found)
		at = e.ContextMark
	case strings.Contains(e.ContextMsg, "quoted scalar") && msg == "found unexpected end of stream" && e.ContextMark.Line > 0:
		msg = "the quote is not closed: the string runs to the end of the document"
		at = e.ContextMark
	case msg == "found character that cannot start any token" && ch == '\t':
		msg = "a tab: YAML indents with spaces only"
	case msg == "mapping values are not allowed in this context":
		msg = `unexpected ":": this line is indented deeper than the key above it, or a value that holds ": " needs quotes`
	case msg == "did not find expected key" && strings.ContainsRune("}],", ch) && ch != 0:
		msg = fmt.Sprintf("unexpected %q", string(ch))
	case msg == "did not find expected key":
		msg = "bad indentation: this line does not line up with the keys of its mapping"
	case msg == "did not find expected '-' indicator":
		msg = `bad indentation: expected a list item ("- ") at this line's level`
	case msg == "no documents in stream":
		msg = "empty: a spec is a mapping with name, source and sink"
	case msg == "expected single document, found multiple":
		msg = "one document only"
	default:
		if e.ContextMsg != "" {
			msg = e.ContextMsg + ": " + msg
		}
		msg = redactQuoted(msg)
	}
	se := SpecError{File: c.src.name, Msg: msg}
	if at.Line > 0 {
		se.Path = c.src.pathAt(at.Line, at.Column)
		se.Line, se.Column = c.src.clamp(at.Line, at.Column)
	}
	c.errs = append(c.errs, se)
}

// redactQuoted drops quoted input from a parser's message: it may be a credential.
func redactQuoted(msg string) string { return quotedInput.ReplaceAllString(msg, "[value]") }

var quotedInput = regexp.MustCompile("`[^`]*`|\"[^\"]*\"|'[^']*'")
