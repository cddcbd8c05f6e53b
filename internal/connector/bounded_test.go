package connector_test

import (
	"strings"
	"testing"
	"time"

	"github.com/penstock/penstock/internal/connector"
)

type boundedConfig struct {
	Timeout time.Duration `json:"timeout" max:"10m"`
	Pages   *int          `json:"pages" max:"100"`
	Rate    float64       `json:"rate" max:"1000"`
	Inner   struct {
		Wait time.Duration `json:"wait"`
	} `json:"inner"`
}

// A `max` tag is enforced with the field path; Unbounded names the fields that have none.
func TestMaxTags(t *testing.T) {
	for _, c := range []struct {
		cfg  map[string]any
		want string
	}{
		{map[string]any{"timeout": "1000000h"}, "timeout: at most 10m"},
		{map[string]any{"pages": 101}, "pages: at most 100"},
		{map[string]any{"rate": 1e9}, "rate: at most 1000"},
		{map[string]any{"timeout": "10m", "pages": 100, "rate": 1000}, ""},
	} {
		var out boundedConfig
		_, err := connector.Decode("source", c.cfg, &out)
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), "source."+c.want)) {
			t.Errorf("%v: %v, want %q", c.cfg, err, c.want)
		}
	}
	if got := connector.Unbounded(&boundedConfig{}); len(got) != 1 || got[0] != "inner.wait" {
		t.Fatalf("unbounded: %v", got)
	}
}
