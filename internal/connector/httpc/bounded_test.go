package httpc

import (
	"strings"
	"testing"

	"github.com/penstock/penstock/internal/connector"
)

// Every duration and number of the configuration has an upper bound, refused beyond it.
func TestEveryNumberIsBounded(t *testing.T) {
	for name, unbounded := range map[string][]string{
		"pollConfig": connector.Unbounded(&pollConfig{}),
		"sinkConfig": connector.Unbounded(&sinkConfig{}),
	} {
		if len(unbounded) > 0 {
			t.Errorf("%s: no max tag on %v", name, unbounded)
		}
	}
}

// A timeout beyond its bound is refused with its field path.
func TestHugeTimeoutIsRefused(t *testing.T) {
	_, _, err := newPoll("source", map[string]any{"url": "https://example.com/x", "timeout": "1000000h"}, connector.Resources{})
	if err == nil || err.Error() != "source.timeout: at most 10m" {
		t.Fatalf("timeout 1000000h: %v", err)
	}
}

// Credentials are never literals in a spec: header values and query parameters named like
// credentials are refused, naming the field and the way to send them from a secret.
func TestCredentialLiteralsAreRefused(t *testing.T) {
	for _, c := range []struct {
		cfg  map[string]any
		want string
	}{
		{map[string]any{"url": "https://example.com/x", "headers": map[string]any{"Authorization": "Bearer abc"}}, "source.headers.Authorization: looks like a credential"},
		{map[string]any{"url": "https://example.com/x", "headers": map[string]any{"X-Api-Key": "abc"}}, "source.headers.X-Api-Key: looks like a credential"},
		{map[string]any{"url": "https://example.com/x", "headers": map[string]any{"x-auth-token": "abc"}}, "source.headers.x-auth-token"},
		{map[string]any{"url": "https://example.com/x", "headers": map[string]any{"Cookie": "s=1"}}, "source.headers.Cookie"},
		{map[string]any{"url": "https://example.com/x?api_key=abc"}, `source.url: the query parameter "api_key" looks like a credential`},
		{map[string]any{"url": "https://example.com/x?access_token=abc&page=2"}, `"access_token"`},
		{map[string]any{"url": "https://example.com/x?client_secret=abc"}, `"client_secret"`},
		{map[string]any{"url": "https://example.com/x?password=abc"}, `"password"`},
		{map[string]any{"url": "https://bob:hunter2@example.com/x"}, "source.url: a password in the URL"},
		{map[string]any{"url": "https://bob@example.com/x"}, "source.url: credentials in the URL"},
		{map[string]any{"url": "https://example.com/x?X-Amz-Credential=abc"}, `"X-Amz-Credential"`},
		{map[string]any{"url": "https://example.com/x?jwt=abc"}, `"jwt"`},
		{map[string]any{"url": "https://example.com/x?pass=abc"}, `"pass"`},
		{map[string]any{"url": "https://example.com/x", "headers": map[string]any{"X-JWT": "abc"}}, "source.headers.X-JWT"},
		{map[string]any{"url": "https://example.com/x", "headers": map[string]any{"Bearer": "abc"}}, "source.headers.Bearer"},
		{map[string]any{"url": "https://example.com/x", "headers": map[string]any{"X-Pass": "abc"}}, "source.headers.X-Pass"},
	} {
		for _, kind := range []string{"poll", "sink"} {
			var err error
			if kind == "poll" {
				_, _, err = newPoll("source", c.cfg, connector.Resources{})
			} else {
				_, _, err = newSink("source", c.cfg, connector.Resources{})
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%s %v: %v, want %q", kind, c.cfg, err, c.want)
			}
		}
	}
	for _, ok := range []map[string]any{
		{"url": "https://example.com/x?page=2&limit=10&sort=asc", "headers": map[string]any{"Accept": "application/json", "X-Request-Source": "penstock"}},
	} {
		if _, _, err := newPoll("source", ok, connector.Resources{}); err != nil && strings.Contains(err.Error(), "credential") {
			t.Errorf("%v refused: %v", ok, err)
		}
	}
}
