package api

import (
	"testing"
	"time"

	"github.com/penstock/penstock/internal/identity"
)

func TestLockoutRule(t *testing.T) {
	for _, c := range []struct {
		l    *identity.Lockout
		want string
	}{
		{identity.NewLockout(), " (attempts are limited: after 5 failures in a row, logins are refused for 1m, doubling up to 1h)"},
		{&identity.Lockout{Threshold: 3, Base: 90 * time.Second, Max: 90 * time.Minute}, " (attempts are limited: after 3 failures in a row, logins are refused for 1m30s, doubling up to 1h30m)"},
		{&identity.Lockout{Threshold: 3, Base: 30 * time.Second, Max: 2 * time.Hour}, " (attempts are limited: after 3 failures in a row, logins are refused for 30s, doubling up to 2h)"},
		{nil, ""},
	} {
		if got := lockoutRule(c.l); got != c.want {
			t.Errorf("lockoutRule = %q, want %q", got, c.want)
		}
	}
}
