package names

import (
	"regexp"
	"strings"
	"testing"
)

// reference is the rule as a regular expression; Valid must agree with it on every input.
var reference = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

func TestCheck(t *testing.T) {
	for _, ok := range []string{"a", "acme", "acme-2", "0", strings.Repeat("x", 63), "a-"} {
		if err := Check("tenant", ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "-a", "Acme", "a_b", "a.b", "a b", "a/b", strings.Repeat("x", 64), "é", "a\x00", "ａ"} {
		err := Check("tenant", bad)
		if err == nil {
			t.Errorf("%q accepted", bad)
		} else if !strings.Contains(err.Error(), "tenant name") {
			t.Errorf("error does not name the kind: %v", err)
		}
	}
}

func FuzzValid(f *testing.F) {
	for _, s := range []string{"acme", "-a", "A", "a-b", strings.Repeat("z", 64), "\xff", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := Valid(s, "-"), reference.MatchString(s); got != want {
			t.Fatalf("Valid(%q) = %v, the rule says %v", s, got, want)
		}
	})
}

// Each rule's pattern (what the API's schema publishes) and its check agree on every input,
// and its words say what the pattern says.
func TestRules(t *testing.T) {
	for _, c := range []struct {
		r       Rule
		pattern string
		words   string
		ok, bad []string
	}{
		{Name, `^[a-z0-9][a-z0-9-]{0,62}$`, "use 1 to 63 lower-case letters, digits and '-', starting with a letter or digit",
			[]string{"a", "orders-2", strings.Repeat("q", 63)}, []string{"", "Bad_Name", "-a", strings.Repeat("q", 64)}},
		{Pipeline, `^[a-z0-9][a-z0-9-]{0,57}$`, "use 1 to 58 lower-case letters, digits and '-', starting with a letter or digit",
			[]string{"copy", strings.Repeat("p", 58)}, []string{strings.Repeat("p", 59), "Copy"}},
		{Secret, `^[A-Za-z0-9_-]{1,128}$`, "use 1 to 128 letters, digits, '_' and '-'",
			[]string{"DB_PASSWORD", "_x", "-", strings.Repeat("s", 128)}, []string{"", "a.b", "a b", strings.Repeat("s", 129)}},
	} {
		if got := c.r.Pattern(); got != c.pattern {
			t.Errorf("pattern %q, want %q", got, c.pattern)
		}
		if got := c.r.Words(); got != c.words {
			t.Errorf("words %q, want %q", got, c.words)
		}
		if r, ok := RuleOf(c.pattern); !ok || r != c.r {
			t.Errorf("RuleOf(%q) = %v %v", c.pattern, r, ok)
		}
		re := regexp.MustCompile(c.pattern)
		for _, s := range append(c.ok, c.bad...) {
			if c.r.Valid(s) != re.MatchString(s) {
				t.Errorf("%q: Valid %v, pattern %v", s, c.r.Valid(s), re.MatchString(s))
			}
		}
		for _, s := range c.ok {
			if err := c.r.Check("queue", s); err != nil {
				t.Errorf("%q refused: %v", s, err)
			}
		}
		for _, s := range c.bad {
			if err := c.r.Check("queue", s); err == nil || !strings.Contains(err.Error(), `queue name "`+s+`" is not valid: `+c.words) {
				t.Errorf("%q: %v", s, err)
			}
		}
	}
	if _, ok := RuleOf("^.*$"); ok {
		t.Error("RuleOf found a rule for a pattern no rule has")
	}
}

func FuzzRules(f *testing.F) {
	for _, s := range []string{"acme", "-a", "A_b", strings.Repeat("z", 129), "\xff", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, r := range Rules {
			if got, want := r.Valid(s), regexp.MustCompile(r.Pattern()).MatchString(s); got != want {
				t.Fatalf("%s: Valid(%q) = %v, the pattern says %v", r.Pattern(), s, got, want)
			}
		}
	})
}
