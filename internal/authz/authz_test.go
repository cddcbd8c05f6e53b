package authz

import (
	"testing"
)

func TestDecide(t *testing.T) {
	acme, prod, billing := Scope{Tenant: "acme"}, Scope{Tenant: "acme", Environment: "production"}, Scope{Tenant: "acme", Environment: "production", Application: "billing"}
	staging := Scope{Tenant: "acme", Environment: "staging"}
	globex := Scope{Tenant: "globex"}
	dev := Principal{Kind: "user", Name: "dana", Bindings: []Binding{{Developer, prod}}}
	cases := []struct {
		name   string
		p      Principal
		a      Action
		r      Scope
		allow  bool
		hidden bool
	}{
		{"developer in its environment", dev, SecretWrite, billing, true, false},
		{"developer at the environment itself", dev, QueueManage, prod, true, false},
		{"developer in another environment", dev, SecretWrite, staging, false, false},
		{"developer above its scope", dev, SecretWrite, acme, false, false},
		{"developer lacks the action", dev, RoleManage, billing, false, false},
		{"developer in another tenant is hidden", dev, TenantRead, globex, false, true},
		{"platform action", dev, TenantCreate, Platform, false, false},
		{"platform admin anywhere", Principal{Bindings: []Binding{{PlatformAdmin, Platform}}}, KeyManage, Platform, true, false},
		{"platform admin in a tenant", Principal{Bindings: []Binding{{PlatformAdmin, Platform}}}, SecretWrite, billing, true, false},
		{"owner cannot create tenants", Principal{Bindings: []Binding{{Owner, acme}}}, TenantCreate, Platform, false, false},
		{"no bindings at all", Principal{}, TenantRead, acme, false, true},
		{"role at platform scope of a non-admin", Principal{Bindings: []Binding{{Viewer, Platform}}}, TenantRead, globex, true, false},
	}
	for _, tc := range cases {
		d := Decide(tc.p, tc.a, tc.r)
		if d.Allow != tc.allow || d.Hidden != tc.hidden || d.Reason == "" {
			t.Errorf("%s: %+v, want allow=%v hidden=%v", tc.name, d, tc.allow, tc.hidden)
		}
	}
}

// Every role's actions are as documented in docs/access.md's table; the role table here is
// that documentation's source, so this pins it.
func TestRolesAreOrdered(t *testing.T) {
	contains := func(big, small Role) bool {
		for _, a := range roles[small] {
			found := false
			for _, b := range roles[big] {
				found = found || a == b
			}
			if !found {
				return false
			}
		}
		return true
	}
	for _, pair := range [][2]Role{{PlatformAdmin, Owner}, {Owner, Admin}, {Admin, Developer}, {Developer, Operator}, {Operator, Viewer}} {
		if !contains(pair[0], pair[1]) {
			t.Errorf("%s does not include everything %s may do", pair[0], pair[1])
		}
	}
	for _, r := range Roles() {
		if !ValidRole(r) || len(Actions(r)) == 0 {
			t.Errorf("role %s has no actions", r)
		}
	}
	if ValidRole("superuser") {
		t.Error("an unknown role is valid")
	}
}

func TestGrantsPreventsEscalation(t *testing.T) {
	admin := []Binding{{Admin, Scope{Tenant: "acme"}}}
	if !Grants(admin, Developer, Scope{Tenant: "acme", Environment: "production"}) {
		t.Error("an admin cannot hand out developer below its scope")
	}
	if Grants(admin, Owner, Scope{Tenant: "acme"}) {
		t.Error("an admin can make an owner")
	}
	if Grants(admin, Developer, Scope{Tenant: "globex"}) {
		t.Error("an admin of acme can grant in globex")
	}
}

func TestScopes(t *testing.T) {
	for _, s := range []string{"platform", "acme", "acme/production", "acme/production/billing"} {
		sc, err := ParseScope(s)
		if err != nil || sc.String() != s {
			t.Errorf("ParseScope(%q) = %v, %v", s, sc, err)
		}
	}
	for _, bad := range []string{"", "a/", "/a", "a//b", "a/b/c/d"} {
		if _, err := ParseScope(bad); err == nil {
			t.Errorf("ParseScope(%q) accepted", bad)
		}
	}
}
