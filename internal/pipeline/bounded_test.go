package pipeline

import (
	"testing"

	"github.com/penstock/penstock/internal/connector"
)

// Every duration and number of the configuration has an upper bound, refused beyond it.
func TestEveryNumberIsBounded(t *testing.T) {
	for name, unbounded := range map[string][]string{
		"Spec":           connector.Unbounded(&Spec{}),
		"redactConfig":   connector.Unbounded(&redactConfig{}),
		"validateConfig": connector.Unbounded(&validateConfig{}),
	} {
		if len(unbounded) > 0 {
			t.Errorf("%s: no max tag on %v", name, unbounded)
		}
	}
}
