package names

import (
	"fmt"
	"strconv"
	"strings"
)

// Rule is one naming rule in the three forms its doors need: a check, the pattern the API
// publishes in its schema (and its validator applies), and the words a person reads. The API's
// struct tags cannot name a constant, so a test holds every pattern they carry to one of these
// rules.
type Rule struct {
	Max   int    // longest name; the shortest is one character
	Upper bool   // A-Z as well as a-z
	Extra string // characters allowed beyond letters and digits
	// ExtraFirst lets a name start with one of Extra; otherwise it starts with a letter or digit.
	ExtraFirst bool
}

var (
	// Name is the rule of tenants, environments, applications, users, queues and exchanges.
	Name = Rule{Max: MaxLen, Extra: "-"}
	// Pipeline names are shorter than Name: the pipeline's own queues and consumers carry
	// the name with a suffix.
	Pipeline = Rule{Max: 58, Extra: "-"}
	// Secret names are the identifiers connector settings refer to.
	Secret = Rule{Max: 128, Upper: true, Extra: "_-", ExtraFirst: true}
)

// Rules are every rule, for looking one up by its pattern.
var Rules = []Rule{Name, Pipeline, Secret}

// Valid reports whether s follows the rule.
func (r Rule) Valid(s string) bool {
	if len(s) == 0 || len(s) > r.Max {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', r.Upper && c >= 'A' && c <= 'Z':
		case (i > 0 || r.ExtraFirst) && strings.IndexByte(r.Extra, c) >= 0:
		default:
			return false
		}
	}
	return true
}

// Pattern is the rule as the regular expression of the API's schema.
func (r Rule) Pattern() string {
	class := "a-z0-9"
	if r.Upper {
		class = "A-Za-z0-9"
	}
	if r.ExtraFirst {
		return "^[" + class + r.Extra + "]{1," + strconv.Itoa(r.Max) + "}$"
	}
	return "^[" + class + "][" + class + r.Extra + "]{0," + strconv.Itoa(r.Max-1) + "}$"
}

// Words is the rule as a person reads it: "use 1 to 63 lower-case letters, digits and '-',
// starting with a letter or digit".
func (r Rule) Words() string {
	letters := "lower-case letters"
	if r.Upper {
		letters = "letters"
	}
	parts := []string{letters, "digits"}
	for _, c := range r.Extra {
		parts = append(parts, "'"+string(c)+"'")
	}
	last := len(parts) - 1
	s := fmt.Sprintf("use 1 to %d %s and %s", r.Max, strings.Join(parts[:last], ", "), parts[last])
	if !r.ExtraFirst {
		s += ", starting with a letter or digit"
	}
	return s
}

// Check refuses s, a name of the given kind (queue, secret), when it breaks the rule, with
// the rule in words.
func (r Rule) Check(kind, s string) error {
	if !r.Valid(s) {
		return fmt.Errorf("%s name %q is not valid: %s", kind, s, r.Words())
	}
	return nil
}

// RuleOf is the rule whose pattern is p.
func RuleOf(p string) (Rule, bool) {
	for _, r := range Rules {
		if r.Pattern() == p {
			return r, true
		}
	}
	return Rule{}, false
}
