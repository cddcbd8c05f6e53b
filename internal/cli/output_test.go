package cli

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"
)

// rendered prints answer as a command with -o format (and the given table columns) would.
func rendered(t *testing.T, format, answer string, cols ...string) string {
	t.Helper()
	cmd := &cobra.Command{Use: "x"}
	addOutputFlag(cmd)
	cmd.Flags().AddFlagSet(cmd.PersistentFlags())
	if cols != nil {
		withColumns(cmd, cols...)
	}
	var out bytes.Buffer
	cmd.SetOut(&out)
	if err := cmd.Flags().Set("output", format); err != nil {
		t.Fatal(err)
	}
	if err := render(cmd, []byte(answer), "done"); err != nil {
		t.Fatalf("render %s: %v", format, err)
	}
	return out.String()
}

const consumed = `{"messages":[{"ack_token":"tok-1","seq":1,"deliveries":1,"id":"order-1","data":"{\"total\":42}"},` +
	`{"ack_token":"tok-2","seq":2,"deliveries":3,"data":"line one\nline two\n"},` +
	`{"ack_token":"tok-3","seq":3,"deliveries":1,"data_base64":"/w=="}]}`

// Payloads print as they were sent: a table and YAML show the text itself, JSON keeps the
// API's answer byte for byte in meaning.
func TestPayloadsPrintAsSent(t *testing.T) {
	table := rendered(t, "table", consumed)
	for _, want := range []string{
		"id=order-1  seq=1  deliveries=1  ack_token=tok-1\n{\"total\":42}\n",
		"seq=2  deliveries=3  ack_token=tok-2\nline one\nline two\n",
		"(binary payload, base64) /w==",
	} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks %q:\n%s", want, table)
		}
	}
	if strings.Contains(table, `\"`) {
		t.Errorf("table escapes the payload:\n%s", table)
	}

	var back struct {
		Messages []struct {
			Data string `yaml:"data"`
		} `yaml:"messages"`
	}
	y := rendered(t, "yaml", consumed)
	if err := yaml.Unmarshal([]byte(y), &back); err != nil || len(back.Messages) != 3 {
		t.Fatalf("yaml does not parse back: %v\n%s", err, y)
	}
	if back.Messages[0].Data != `{"total":42}` || back.Messages[1].Data != "line one\nline two\n" {
		t.Errorf("yaml changed the payloads: %q\n%s", back.Messages, y)
	}
	if !strings.Contains(y, "data: |") {
		t.Errorf("a payload with line breaks is not a literal block:\n%s", y)
	}

	j := rendered(t, "json", consumed)
	var a, b any
	if err := json.Unmarshal([]byte(j), &a); err != nil {
		t.Fatal(err)
	}
	json.Unmarshal([]byte(consumed), &b)
	if ja, jb := mustJSON(a), mustJSON(b); ja != jb {
		t.Errorf("json is not the answer:\n%s\n%s", ja, jb)
	}
	if strings.Index(j, "ack_token") > strings.Index(j, `"data"`) {
		t.Errorf("json reorders the answer's fields:\n%s", j)
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// A list prints as a table: columns in the answer's order, nested objects' fields under their
// own names, or the command's chosen columns; other fields of the answer after it.
func TestTables(t *testing.T) {
	queues := `{"queues":[{"name":"orders","stats":{"depth":2,"rate":0.123456},"spec":{"ack_wait":"30s"}},` +
		`{"name":"audit","stats":{"depth":0,"rate":0}}]}`
	got := rendered(t, "table", queues)
	lines := strings.Split(strings.TrimSpace(got), "\n")
	if len(lines) != 3 || strings.Join(strings.Fields(lines[0]), " ") != "NAME DEPTH RATE ACK WAIT" ||
		strings.Join(strings.Fields(lines[1]), " ") != "orders 2 0.12 30s" || strings.Join(strings.Fields(lines[2]), " ") != "audit 0 0 -" {
		t.Errorf("table:\n%s", got)
	}
	got = rendered(t, "table", queues, "stats.depth", "name")
	if lines := strings.Split(strings.TrimSpace(got), "\n"); strings.Join(strings.Fields(lines[0]), " ") != "DEPTH NAME" ||
		strings.Join(strings.Fields(lines[1]), " ") != "2 orders" {
		t.Errorf("chosen columns:\n%s", got)
	}
	got = rendered(t, "table", `{"events":[{"seq":1,"action":"a"}],"next_cursor":"1"}`)
	if !strings.Contains(got, "SEQ  ACTION\n1    a\n") || !strings.HasSuffix(got, "next_cursor:  1\n") {
		t.Errorf("list and cursor:\n%s", got)
	}
	got = rendered(t, "table", `{"kind":"user","name":"admin","bindings":[{"role":"viewer","scope":"acme"}]}`)
	if !strings.Contains(got, "kind:      user\n") || !strings.Contains(got, "bindings:\n  ROLE    SCOPE\n  viewer  acme\n") {
		t.Errorf("object with a list:\n%s", got)
	}
	if got := rendered(t, "table", `{"messages":[]}`); got != "no messages\n" {
		t.Errorf("empty list: %q", got)
	}
	if got := rendered(t, "table", ``); got != "done\n" {
		t.Errorf("empty answer on a table: %q", got)
	}
	if got := rendered(t, "json", ``); got != "" {
		t.Errorf("empty answer as json: %q", got)
	}
}

// -o takes table, json or yaml, and says so otherwise; without -o, output that is not a
// terminal is JSON.
func TestOutputFlag(t *testing.T) {
	code, _, errOut := run(t, nil, "whoami", "-o", "xml")
	if code == 0 || !strings.Contains(errOut, `--output "xml": use table, json or yaml`) {
		t.Fatalf("-o xml: %d %q", code, errOut)
	}
	cmd := &cobra.Command{Use: "x"}
	addOutputFlag(cmd)
	cmd.Flags().AddFlagSet(cmd.PersistentFlags())
	cmd.SetOut(&bytes.Buffer{})
	if f, err := outputFormat(cmd); err != nil || f != formatJSON {
		t.Fatalf("default format for a buffer: %q %v", f, err)
	}
}

func TestCount(t *testing.T) {
	for n, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 1234567: "1,234,567", -5: "-5"} {
		if got := count(n); got != want {
			t.Errorf("count(%d) = %q, want %q", n, got, want)
		}
	}
}

// What a message, a name or an error carries cannot drive the terminal it is printed on:
// control characters and line-reordering marks print as escapes, in tables and in errors.
func TestTerminalSafe(t *testing.T) {
	evil := "\x1b]0;owned\x07\x1b[2J\rrm -rf\u202e\u009b31m"
	answer, _ := json.Marshal(map[string]any{"messages": []map[string]any{{"id": evil, "data": "line\n" + evil}}})
	got := rendered(t, "table", string(answer))
	if strings.ContainsAny(got, "\x1b\x07\r\u202e\u009b") {
		t.Fatalf("control characters reached the terminal: %q", got)
	}
	for _, want := range []string{"line\n" + `\x1b]0;owned\x07\x1b[2J\x0drm -rf\u202e\x9b31m`, `id=\x1b]0;owned`} {
		if !strings.Contains(got, want) {
			t.Errorf("no %q in %q", want, got)
		}
	}
	// YAML carries any payload, C1 controls and characters beyond the BMP included, and reads back.
	data := "line\n" + evil + " 😀"
	answer, _ = json.Marshal(map[string]any{"messages": []map[string]any{{"data": data}}})
	var back struct {
		Messages []struct {
			Data string `yaml:"data"`
		} `yaml:"messages"`
	}
	y := rendered(t, "yaml", string(answer))
	if err := yaml.Unmarshal([]byte(y), &back); err != nil || len(back.Messages) != 1 || back.Messages[0].Data != data {
		t.Fatalf("yaml of a hostile payload: %v %q\n%s", err, back, y)
	}
	// JSON and YAML never hand the terminal a character that drives it, and read back the same.
	data = "\x7f\u0085\u009b31m\u2028\u202eabc\u2066\x1b[2J\r\nend"
	answer, _ = json.Marshal(map[string]any{"messages": []map[string]any{{"data": data, "id\u202e": data}}})
	for _, f := range []string{"json", "yaml"} {
		out := rendered(t, f, string(answer))
		if i := strings.IndexFunc(out, func(r rune) bool { return r != '\n' && unsafeRune(r) }); i >= 0 {
			t.Errorf("-o %s wrote %q at %d: %q", f, out[i:i+utf8.RuneLen([]rune(out[i:])[0])], i, out)
		}
		var back struct {
			Messages []map[string]string `json:"messages" yaml:"messages"`
		}
		var err error
		if f == "json" {
			err = json.Unmarshal([]byte(out), &back)
		} else {
			err = yaml.Unmarshal([]byte(out), &back)
		}
		if err != nil || len(back.Messages) != 1 || back.Messages[0]["data"] != data || back.Messages[0]["id\u202e"] != data {
			t.Errorf("-o %s does not read back: %v %q\n%s", f, err, back, out)
		}
	}
	if got := safeText("tab\tnew\nline ü"); got != "tab\tnew\nline ü" {
		t.Errorf("plain text changed: %q", got)
	}
	if got := safeText("\xff"); got != `\xff` {
		t.Errorf("a byte that is not UTF-8: %q", got)
	}
}
