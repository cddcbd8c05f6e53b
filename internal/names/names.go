// Package names owns the naming rules of everything a user names: tenants, environments,
// applications, users, secrets. Every name is checked here before it reaches a key, a subject
// or a path; this package never stores or looks anything up.
package names

import "fmt"

// MaxLen is the longest name.
const MaxLen = 63

// Valid reports whether s is 1-63 of a-z, 0-9 and the characters in extra, starting with a
// letter or digit. It runs on hot paths (every seal and open), so it is a loop rather than a
// regular expression.
func Valid(s, extra string) bool {
	if len(s) == 0 || len(s) > MaxLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case i > 0 && indexByte(extra, c):
		default:
			return false
		}
	}
	return true
}

func indexByte(s string, c byte) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return true
		}
	}
	return false
}

// Check validates the name of a thing of the given kind (tenant, environment, application,
// user): a-z, 0-9 and -, 1-63 characters, starting with a letter or digit.
func Check(kind, s string) error {
	if !Valid(s, "-") {
		return fmt.Errorf("%s name %q: must be 1-%d of a-z, 0-9 and -, starting with a letter or digit", kind, s, MaxLen)
	}
	return nil
}
