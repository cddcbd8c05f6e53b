package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"
	"golang.org/x/term"
)

// Output: a command that prints what the API answered prints it as a table on a terminal and
// as JSON when its output goes elsewhere (a pipe, a file), unless -o/--output says otherwise.
// Payloads and other strings are printed as they were sent: a table or YAML shows the text,
// JSON shows the API's own answer.

type format string

const (
	formatTable format = "table"
	formatJSON  format = "json"
	formatYAML  format = "yaml"
)

// addOutputFlag gives every command -o/--output.
func addOutputFlag(root *cobra.Command) {
	root.PersistentFlags().StringP("output", "o", "", "table, json or yaml (default: table on a terminal, json otherwise)")
}

// outputFormat is the format a command prints in.
func outputFormat(cmd *cobra.Command) (format, error) {
	s, _ := cmd.Flags().GetString("output")
	switch format(s) {
	case "":
		if isTerminal(cmd.OutOrStdout()) {
			return formatTable, nil
		}
		return formatJSON, nil
	case formatTable, formatJSON, formatYAML:
		return format(s), nil
	}
	return "", fmt.Errorf("--output %q: use table, json or yaml", s)
}

// explicitFormat is the format -o asked for, or "" when it was not given: commands whose usual
// output is a verdict (audit verify) print it unless JSON or YAML was asked for.
func explicitFormat(cmd *cobra.Command) format {
	s, _ := cmd.Flags().GetString("output")
	return format(s)
}

// isTerminal reports whether w is a terminal.
func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// render prints an API answer (JSON) in the command's format. An empty answer prints
// sentence on a table, and nothing as JSON or YAML (the exit status says it worked).
func render(cmd *cobra.Command, raw []byte, sentence string) error {
	f, err := outputFormat(cmd)
	if err != nil {
		return err
	}
	w := cmd.OutOrStdout()
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		if f == formatTable && sentence != "" {
			fmt.Fprintln(w, sentence)
		}
		return nil
	}
	if f == formatJSON {
		var b bytes.Buffer
		if err := json.Indent(&b, raw, "", "  "); err != nil {
			return fmt.Errorf("the server's answer is not JSON: %w", err)
		}
		b.WriteByte('\n')
		_, err := w.Write(escapeUnsafe(b.Bytes()))
		return err
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(asciiJSON(raw), &doc); err != nil || len(doc.Content) == 0 {
		return fmt.Errorf("the server's answer is not JSON: %v", err)
	}
	n := doc.Content[0]
	if f == formatYAML {
		blockStyle(n)
		var b bytes.Buffer
		enc := yaml.NewEncoder(&b)
		enc.SetIndent(2)
		if err := enc.Encode(n); err != nil {
			return err
		}
		if err := enc.Close(); err != nil {
			return err
		}
		_, err := w.Write(escapeUnsafe(b.Bytes()))
		return err
	}
	printTable(terminalSafe{w}, n, strings.FieldsFunc(cmd.Annotations[columnsAnnotation], func(r rune) bool { return r == ',' }))
	return nil
}

// columnsAnnotation on a command lists the fields (dotted paths) its tables show, in order;
// without it a table shows every field, nested objects' fields under their own names.
const columnsAnnotation = "penstock/columns"

// withColumns sets the columns of a command's tables.
func withColumns(c *cobra.Command, cols ...string) *cobra.Command {
	if c.Annotations == nil {
		c.Annotations = map[string]string{}
	}
	c.Annotations[columnsAnnotation] = strings.Join(cols, ",")
	return c
}

// printAs prints v (a value the CLI made, not an API answer) in the command's format, or with
// table when the format is a table.
func printAs(cmd *cobra.Command, v any, table func(io.Writer)) error {
	f, err := outputFormat(cmd)
	if err != nil {
		return err
	}
	if f == formatTable {
		table(cmd.OutOrStdout())
		return nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return render(cmd, b, "")
}

// blockStyle turns the flow style that JSON parses into into YAML's block style; text with a
// line break becomes a literal block, so a payload reads as it was sent.
func blockStyle(n *yaml.Node) {
	n.Style &^= yaml.FlowStyle
	if n.Kind == yaml.ScalarNode && n.Tag == "!!str" {
		n.Style &^= yaml.DoubleQuotedStyle | yaml.SingleQuotedStyle
		switch {
		case strings.ContainsFunc(n.Value, unsafeRune):
			// Double quotes, where escapeUnsafe may write its characters as escapes.
			n.Style |= yaml.DoubleQuotedStyle
		case strings.Contains(n.Value, "\n"):
			n.Style |= yaml.LiteralStyle
		}
	}
	for _, c := range n.Content {
		blockStyle(c)
	}
}

// printTable prints an answer for people: a list of objects (bare, or the one list of an
// object, as in {"queues": [...]}) as a table, messages one after the other with their payload
// as sent, and anything else as "key: value" lines.
func printTable(w io.Writer, n *yaml.Node, cols []string) {
	if n.Kind == yaml.SequenceNode {
		printRows(w, "", n, cols)
		return
	}
	if n.Kind != yaml.MappingNode {
		fmt.Fprintln(w, cell(n))
		return
	}
	// An answer that is a list and a few fields about it (a cursor): the list, then the fields.
	var list, rest []*yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		if v := n.Content[i+1]; v.Kind == yaml.SequenceNode && rowsOf(v) && list == nil {
			list = n.Content[i : i+2]
			continue
		}
		rest = append(rest, n.Content[i:i+2]...)
	}
	if list == nil || len(rest) > 2 {
		printFields(w, "", n.Content)
		return
	}
	printRows(w, list[0].Value, list[1], cols)
	printFields(w, "", rest)
}

// rowsOf reports whether a sequence holds objects (or nothing), so it prints as a table.
func rowsOf(n *yaml.Node) bool {
	for _, c := range n.Content {
		if c.Kind != yaml.MappingNode {
			return false
		}
	}
	return true
}

// printRows prints a list of objects named name: as a table, or, for messages (they carry a
// payload), one block each.
func printRows(w io.Writer, name string, n *yaml.Node, cols []string) {
	if len(n.Content) == 0 {
		if name != "" {
			fmt.Fprintf(w, "no %s\n", strings.ReplaceAll(name, "_", " "))
		}
		return
	}
	if !rowsOf(n) {
		fmt.Fprintln(w, cell(n))
		return
	}
	if hasPayload(n) {
		for i, m := range n.Content {
			if i > 0 {
				fmt.Fprintln(w)
			}
			printMessage(w, m)
		}
		return
	}
	if len(cols) == 0 {
		cols = columns(n, true)
		if len(cols) > maxColumns {
			cols = columns(n, false)
		}
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	head := make([]string, len(cols))
	for i, c := range cols {
		head[i] = strings.ToUpper(strings.ReplaceAll(c[strings.LastIndex(c, ".")+1:], "_", " "))
	}
	fmt.Fprintln(tw, strings.Join(head, "\t"))
	for _, m := range n.Content {
		row := make([]string, len(cols))
		for i, c := range cols {
			row[i] = "-"
			if v := lookup(m, c); v != nil {
				row[i] = cellLine(cell(v))
				if v.Kind != yaml.ScalarNode && len(row[i]) > 60 {
					row[i] = row[i][:57] + "..."
				}
			}
		}
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	tw.Flush()
}

// maxColumns is the most columns a table shows of nested objects' fields; beyond it, a
// nested object is one cell.
const maxColumns = 12

// columns are the fields of the rows of n in order of appearance, nested objects' fields
// among them when nested is set.
func columns(n *yaml.Node, nested bool) []string {
	var cols []string
	seen := map[string]bool{}
	for _, m := range n.Content {
		ps := paths(m, "")
		if !nested {
			ps = nil
			for i := 0; i+1 < len(m.Content); i += 2 {
				ps = append(ps, m.Content[i].Value)
			}
		}
		for _, c := range ps {
			if !seen[c] {
				seen[c] = true
				cols = append(cols, c)
			}
		}
	}
	return cols
}

// paths are the dotted paths of an object's fields, with a nested object's fields in place of
// the object.
func paths(m *yaml.Node, prefix string) []string {
	var out []string
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := prefix+m.Content[i].Value, m.Content[i+1]
		if v.Kind == yaml.MappingNode && len(v.Content) > 0 {
			out = append(out, paths(v, k+".")...)
			continue
		}
		out = append(out, k)
	}
	return out
}

// lookup is the value at a dotted path of m, or nil.
func lookup(m *yaml.Node, path string) *yaml.Node {
	for _, k := range strings.Split(path, ".") {
		if m == nil || m.Kind != yaml.MappingNode {
			return nil
		}
		m = field(m, k)
	}
	return m
}

// payloadFields are where an answer carries a message's payload.
var payloadFields = []string{"data", "data_base64"}

func hasPayload(n *yaml.Node) bool {
	for _, m := range n.Content {
		for _, f := range payloadFields {
			if field(m, f) != nil {
				return true
			}
		}
	}
	return false
}

// printMessage prints a message's fields on one line, then its payload as it was sent.
func printMessage(w io.Writer, m *yaml.Node) {
	var meta, token []string
	var payload *yaml.Node
	binary := false
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i].Value, m.Content[i+1]
		switch k {
		case "data":
			payload = v
		case "data_base64":
			payload, binary = v, true
		case "id":
			meta = append([]string{k + "=" + cellLine(cell(v))}, meta...)
		case "ack_token":
			token = append(token, k+"="+cell(v))
		default:
			meta = append(meta, k+"="+cellLine(cell(v)))
		}
	}
	meta = append(meta, token...)
	fmt.Fprintln(w, strings.Join(meta, "  "))
	if payload == nil {
		return
	}
	if binary {
		fmt.Fprintf(w, "(binary payload, base64) %s\n", payload.Value)
		return
	}
	fmt.Fprintln(w, strings.TrimSuffix(payload.Value, "\n"))
}

// printFields prints key/value pairs, nested objects indented under their key.
func printFields(w io.Writer, indent string, kv []*yaml.Node) {
	width := 0
	for i := 0; i+1 < len(kv); i += 2 {
		width = max(width, len(kv[i].Value))
	}
	for i := 0; i+1 < len(kv); i += 2 {
		k, v := kv[i].Value, kv[i+1]
		switch {
		case v.Kind == yaml.MappingNode && len(v.Content) > 0:
			fmt.Fprintf(w, "%s%s:\n", indent, k)
			printFields(w, indent+"  ", v.Content)
		case v.Kind == yaml.SequenceNode && len(v.Content) > 0 && rowsOf(v):
			fmt.Fprintf(w, "%s%s:\n", indent, k)
			var b strings.Builder
			printRows(&b, k, v, nil)
			for _, line := range strings.Split(strings.TrimRight(b.String(), "\n"), "\n") {
				fmt.Fprintf(w, "%s  %s\n", indent, line)
			}
		case v.Kind == yaml.ScalarNode && strings.Contains(v.Value, "\n"):
			fmt.Fprintf(w, "%s%s:\n", indent, k)
			for _, line := range strings.Split(strings.TrimSuffix(v.Value, "\n"), "\n") {
				fmt.Fprintf(w, "%s  %s\n", indent, line)
			}
		default:
			fmt.Fprintf(w, "%s%-*s  %s\n", indent, width+1, k+":", cell(v))
		}
	}
}

// field is the value of key k of the object m, or nil.
func field(m *yaml.Node, k string) *yaml.Node {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == k {
			return m.Content[i+1]
		}
	}
	return nil
}

// cell is a value as text: a string as it is, a list of plain values joined by commas, and
// anything deeper as compact JSON.
func cell(n *yaml.Node) string {
	switch n.Kind {
	case yaml.ScalarNode:
		switch n.Tag {
		case "!!null":
			return "-"
		case "!!float":
			var f float64
			if n.Decode(&f) == nil {
				return strconv.FormatFloat(math.Round(f*100)/100, 'f', -1, 64)
			}
		}
		return n.Value
	case yaml.SequenceNode:
		parts := make([]string, 0, len(n.Content))
		for _, c := range n.Content {
			if c.Kind != yaml.ScalarNode {
				return compact(n)
			}
			parts = append(parts, c.Value)
		}
		if len(parts) == 0 {
			return "-"
		}
		return strings.Join(parts, ",")
	}
	if len(n.Content) == 0 {
		return "-"
	}
	return compact(n)
}

// compact is a node as one line of JSON.
func compact(n *yaml.Node) string {
	var v any
	if err := n.Decode(&v); err != nil {
		return n.Value
	}
	b, err := json.Marshal(v)
	if err != nil {
		return n.Value
	}
	return string(b)
}

// cellLine keeps a table cell on its line.
func cellLine(s string) string {
	return strings.NewReplacer("\n", `\n`, "\r", `\r`, "\t", " ").Replace(s)
}

// terminalSafe writes text that came from elsewhere (payloads, names, errors) with its control
// characters shown as escapes, so a message cannot move the cursor, retitle the window or
// rewrite what a terminal shows; line breaks and tabs stay as they are.
type terminalSafe struct{ w io.Writer }

func (t terminalSafe) Write(p []byte) (int, error) {
	if _, err := io.WriteString(t.w, safeText(string(p))); err != nil {
		return 0, err
	}
	return len(p), nil
}

// safeText is s with every control character but a line break or a tab, and every byte that
// is not UTF-8, written as an escape.
func safeText(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case unsafeRune(r) && r < 0x100:
			fmt.Fprintf(&b, `\x%02x`, r)
		case unsafeRune(r):
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}

func unsafeRune(r rune) bool {
	return r < 0x20 && r != '\n' && r != '\t' || r == 0x7f || r >= 0x80 && r < 0xa0 ||
		r == '\u2028' || r == '\u2029' || r >= '\u202a' && r <= '\u202e' || r >= '\u2066' && r <= '\u2069'
}

// escapeUnsafe writes, in a JSON or YAML text, the characters that could drive a terminal
// (unsafeRune: C1 controls, DEL, line and paragraph separators, bidirectional marks) as \u
// escapes, which JSON strings and YAML double-quoted scalars read back as the same character.
// Neither encoder escapes them all: Go's JSON leaves DEL, C1 and bidirectional marks as they
// are, YAML the bidirectional marks. In YAML, blockStyle puts every scalar holding one in
// double quotes; every other line break, tab or control character is already escaped by the
// encoders, or is the text's own layout.
func escapeUnsafe(text []byte) []byte {
	if !bytes.ContainsFunc(text, func(r rune) bool { return r >= 0x7f && unsafeRune(r) }) {
		return text
	}
	var b bytes.Buffer
	for _, r := range string(text) {
		if r >= 0x7f && unsafeRune(r) {
			fmt.Fprintf(&b, `\u%04x`, r)
		} else {
			b.WriteRune(r)
		}
	}
	return b.Bytes()
}

// asciiJSON escapes DEL and every character beyond ASCII in a JSON text (they are all inside strings),
// in the double-quoted escapes YAML reads: YAML refuses some characters written as themselves
// (C1 controls, for one), and a payload may hold any.
func asciiJSON(raw []byte) []byte {
	var b bytes.Buffer
	for _, r := range string(raw) {
		switch {
		case r < utf8.RuneSelf && r != 0x7f:
			b.WriteRune(r)
		case r <= 0xffff:
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			fmt.Fprintf(&b, `\U%08x`, r)
		}
	}
	return b.Bytes()
}
