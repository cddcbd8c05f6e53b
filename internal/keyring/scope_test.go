package keyring

import (
	"strings"
	"testing"
)

func TestParseScope(t *testing.T) {
	for in, want := range map[string]Scope{
		"acme":                    {Tenant: "acme"},
		"acme/production":         {Tenant: "acme", Environment: "production"},
		"acme/production/billing": {Tenant: "acme", Environment: "production", Application: "billing"},
		"a1/t-2/x":                {Tenant: "a1", Environment: "t-2", Application: "x"},
	} {
		got, err := ParseScope(in)
		if err != nil || got != want || got.String() != in {
			t.Errorf("ParseScope(%q) = %+v, %v", in, got, err)
		}
	}
	for _, bad := range []string{"", "/", "acme/", "acme//x", "Acme", "-acme", "acme.prod", "a/b/c/d", "acme/prod/bill ing",
		strings.Repeat("a", 64), "acme/" + strings.Repeat("b", 64), "é"} {
		if _, err := ParseScope(bad); err == nil {
			t.Errorf("ParseScope(%q) accepted", bad)
		}
	}
}
