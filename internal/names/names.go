// Package names owns the naming rules of everything a user names: tenants, environments,
// applications, users, queues, pipelines, secrets. Every name is checked here before it
// reaches a key, a subject or a path; this package never stores or looks anything up.
package names

// MaxLen is the longest name.
const MaxLen = 63

// Valid reports whether s is 1-63 of a-z, 0-9 and the characters in extra, starting with a
// letter or digit. It runs on hot paths (every seal and open), so it is a loop rather than a
// regular expression.
func Valid(s, extra string) bool {
	return Rule{Max: MaxLen, Extra: extra}.Valid(s)
}

// Check validates the name of a thing of the given kind (tenant, environment, application,
// user, queue) against the Name rule.
func Check(kind, s string) error { return Name.Check(kind, s) }
