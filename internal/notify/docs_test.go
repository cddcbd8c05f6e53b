package notify

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"go.yaml.in/yaml/v4"
)

// Every rule and channel docs/notifications.md shows is one the service takes.
func TestDocumentedExamplesAreValid(t *testing.T) {
	b, err := os.ReadFile("../../docs/notifications.md")
	if err != nil {
		t.Fatal(err)
	}
	rules, channels := 0, 0
	for _, block := range strings.Split(string(b), "```yaml\n")[1:] {
		block = block[:strings.Index(block, "```")]
		switch {
		case strings.Contains(block, "\nevent: ") || strings.HasPrefix(block, "event: "):
			var r Rule
			asCLI(t, block, &r)
			r.Name = "example"
			if err := r.Normalize(false); err != nil {
				t.Errorf("documented rule refused: %v\n%s", err, block)
			}
			rules++
		case strings.Contains(block, "\ntype: "):
			var in Input
			asCLI(t, block, &in)
			c := in.Channel()
			c.Name = "example"
			if err := c.Normalize(); err != nil {
				t.Errorf("documented channel refused: %v\n%s", err, block)
			}
			channels++
		}
	}
	if rules < 4 || channels < 2 {
		t.Fatalf("found %d rules and %d channels in the docs", rules, channels)
	}
}

// asCLI reads a YAML document as penstock notify ... put does: YAML, then JSON to the API.
func asCLI(t *testing.T, doc string, v any) {
	t.Helper()
	var m map[string]any
	if err := yaml.Unmarshal([]byte(doc), &m); err != nil {
		t.Fatalf("%s: %v", doc, err)
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v", doc, err)
	}
}
