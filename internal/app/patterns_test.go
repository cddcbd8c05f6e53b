package app

import (
	"encoding/json"
	"testing"

	"github.com/penstock/penstock/internal/names"
)

// Every name pattern the API's schema publishes (and its validator applies) is one of the
// rules of package names, which the CLI checks names with and puts in words: struct tags
// cannot name a constant, so this holds them together.
func TestNamePatternsAreTheNameRules(t *testing.T) {
	ta := startApp(t, nil)
	st, raw := get(t, ta.client("", nil), ta.url("/openapi.json"))
	var doc any
	if err := json.Unmarshal(raw, &doc); st != 200 || err != nil {
		t.Fatalf("/openapi.json: %d %v", st, err)
	}
	seen := map[string]int{}
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if p, ok := v["pattern"].(string); ok {
				seen[p]++
			}
			for _, e := range v {
				walk(e)
			}
		case []any:
			for _, e := range v {
				walk(e)
			}
		}
	}
	walk(doc)
	// Ids, not names: of API keys, of backups and of backup jobs, of alerts and the secret of
	// their acknowledgement links.
	ids := map[string]bool{`^a-[0-9a-f]{16}$`: true, `^[0-9a-f]{64}$`: true, `^[0-9a-f]{16}$`: true, `^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}(-[a-z0-9][a-z0-9-]{0,62})?$`: true, `^bj_[0-9a-f]{12}$`: true}
	for p, n := range seen {
		if _, ok := names.RuleOf(p); !ok && !ids[p] {
			t.Errorf("pattern %s (%d uses) is no rule of package names", p, n)
		}
	}
	for _, r := range names.Rules {
		if seen[r.Pattern()] == 0 {
			t.Errorf("rule %s is used by no route", r.Pattern())
		}
	}
}
