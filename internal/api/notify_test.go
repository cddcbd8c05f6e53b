package api

import (
	"strings"
	"testing"
)

// An acknowledgement link's secret never reaches a log or an audit event, however the path
// is written.
func TestLoggedPathLeavesOutTheAckSecret(t *testing.T) {
	const key = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	for _, p := range []string{"/v1/ack/acme/a-0123456789abcdef/" + key, "/v1/ack/acme/a-0123456789abcdef/" + key + "/",
		"/v1/ack/acme/a-0123456789abcdef/x/" + key, "/v1/ack/" + key, "/v1/ack//" + key} {
		if got := loggedPath(p); strings.Contains(got, key) || !strings.HasPrefix(got, "/v1/ack/") {
			t.Errorf("loggedPath(%q) = %q", p, got)
		}
	}
	if got := loggedPath("/v1/alerts/a-0123456789abcdef"); got != "/v1/alerts/a-0123456789abcdef" {
		t.Errorf("other paths change: %q", got)
	}
}
