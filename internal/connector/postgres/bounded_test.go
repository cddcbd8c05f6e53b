package postgres

import (
	"testing"

	"github.com/penstock/penstock/internal/connector"
)

// Every duration and number of the configuration has an upper bound, refused beyond it.
func TestEveryNumberIsBounded(t *testing.T) {
	for name, unbounded := range map[string][]string{
		"sourceConfig": connector.Unbounded(&sourceConfig{}),
		"sinkConfig":   connector.Unbounded(&sinkConfig{}),
	} {
		if len(unbounded) > 0 {
			t.Errorf("%s: no max tag on %v", name, unbounded)
		}
	}
}
