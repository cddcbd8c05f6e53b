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
