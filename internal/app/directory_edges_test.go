package app

import (
	"strconv"

	"github.com/go-ldap/ldap/v3"
	"strings"
	"testing"

	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/testenv"
)

// recheckNow runs a directory re-check as the break-glass administrator.
func (ta *testApp) recheckNow(t *testing.T) string {
	t.Helper()
	st, _, raw := ta.call(t, "POST", "/v1/directory/recheck", "", nil)
	if st != 200 {
		t.Fatalf("recheck: %d %s", st, raw)
	}
	return raw
}

// What a directory user holds never outlives the directory: it cannot grant itself its group's
// role (which would stay after the group), a user the directory no longer has is forgotten
// (sessions, keys, grants, record), and a new entry given the same name starts with nothing of
// the departed user's.
func TestDirectoryRolesDoNotOutliveTheDirectory(t *testing.T) {
	s := testenv.StartSlapd(t)
	ta := startApp(t, func(c *config.Config) { useDirectory(c, s) })
	ta.adminSession(t)
	ta.must(t, "POST", "/v1/tenants", map[string]string{"name": "acme"}, 201)
	ta.must(t, "POST", "/v1/tenants/acme/environments/production/applications", map[string]string{"name": "billing"}, 201)
	ta.must(t, "POST", "/v1/directory/mappings", map[string]string{"group": testenv.GroupDN("acme-devs"), "role": "admin", "scope": "acme/production"}, 201)
	base := "/v1/tenants/acme/environments/production/applications/billing"

	bob := ta.dirSession(t, "bob")
	if st, _, raw := ta.call(t, "POST", "/v1/roles", bob, map[string]string{"subject": "user:bob", "role": "admin", "scope": "acme/production"}); st != 403 {
		t.Fatalf("bob grants himself admin: %d %s", st, raw)
	}
	st, key, raw := ta.call(t, "POST", "/v1/apikeys", bob, map[string]any{"role": "developer", "scope": "acme/production/billing"})
	if st != 201 {
		t.Fatalf("bob's key: %d %s", st, raw)
	}
	oldKey := key["key"].(string)
	// bob's own key cannot grant bob anything either: roles are granted by people.
	if st, _, raw := ta.call(t, "POST", "/v1/roles", oldKey, map[string]string{"subject": "user:bob", "role": "viewer", "scope": "acme/production"}); st != 403 {
		t.Fatalf("bob's key grants bob a role: %d %s", st, raw)
	}

	// The platform administrator grants bob a role of his own in Penstock: it is the
	// administrator's decision, and it stays while bob is in the directory.
	ta.must(t, "POST", "/v1/roles", map[string]string{"subject": "user:bob", "role": "viewer", "scope": "acme"}, 201)

	s.RemoveMember(t, "acme-devs", testenv.UserDN("bob"))
	ta.recheckNow(t)
	if st, _, raw := ta.call(t, "POST", base+"/queues", bob, map[string]any{"name": "after-removal"}); st != 403 {
		t.Fatalf("bob out of acme-devs creates a queue: %d %s", st, raw)
	}
	if st, _, _ := ta.call(t, "GET", "/v1/tenants/acme", bob, nil); st != 200 {
		t.Fatalf("bob keeps the viewer role granted in Penstock: %d", st)
	}

	// Two entries answer to bob (a mistake in the directory): everything bob holds is
	// withheld, nothing is destroyed; once the twin is gone, bob has it back.
	s.Admin(t, func(c *ldap.Conn) error {
		a := ldap.NewAddRequest("cn=bob-twin,ou=people,"+testenv.LDAPBase, nil)
		a.Attribute("objectClass", []string{"inetOrgPerson"})
		a.Attribute("uid", []string{"bob"})
		a.Attribute("cn", []string{"bob-twin"})
		a.Attribute("sn", []string{"twin"})
		return c.Add(a)
	})
	ta.recheckNow(t) // the re-check every second may have done it already
	waitUntil(t, "bob's session to end with two bobs", func() bool {
		st, _, _ := ta.call(t, "GET", "/v1/tenants/acme", bob, nil)
		return st == 401
	})
	if st, _, _ := ta.call(t, "GET", base+"/queues", oldKey, nil); st != 401 {
		t.Fatalf("bob's key with two bobs: %d, want 401", st)
	}
	s.Admin(t, func(c *ldap.Conn) error {
		return c.Del(ldap.NewDelRequest("cn=bob-twin,ou=people,"+testenv.LDAPBase, nil))
	})
	ta.recheckNow(t)
	bob = ta.dirSession(t, "bob")
	if st, _, _ := ta.call(t, "GET", "/v1/tenants/acme", bob, nil); st != 200 {
		t.Fatalf("bob back, with his viewer grant: %d", st)
	}

	// bob leaves: withheld (his key and session stop), not yet destroyed.
	s.DeleteUser(t, "bob")
	ta.recheckNow(t)
	waitUntil(t, "departed bob's key to stop", func() bool {
		st, _, _ := ta.call(t, "GET", base+"/queues", oldKey, nil)
		return st == 401
	})
	if st, _, _ := ta.call(t, "GET", "/v1/auth/whoami", bob, nil); st != 401 {
		t.Fatalf("departed bob's session: %d, want 401", st)
	}

	// A new person gets uid=bob (a new entry, with its own entryUUID) and, since the group
	// still names uid=bob, is in acme-devs: the departed bob is forgotten at this login (keys
	// revoked, grants and record removed) and nothing of his passes.
	s.AddUser(t, "bob", false)
	s.AddMember(t, "acme-devs", testenv.UserDN("bob"))
	newBob := ta.dirSession(t, "bob")
	if st, _, _ := ta.call(t, "GET", base+"/queues", oldKey, nil); st != 401 {
		t.Fatalf("the old key with a new bob: %d, want 401", st)
	}
	if _, _, raw := ta.call(t, "GET", "/v1/auth/whoami", newBob, nil); strings.Contains(raw, "viewer") {
		t.Fatalf("the new bob has the old bob's grant: %s", raw)
	}
	if _, _, raw := ta.call(t, "GET", "/v1/roles?scope=acme", "", nil); strings.Contains(raw, "user:bob") {
		t.Fatalf("the departed bob's grant is still there: %s", raw)
	}

	// A new entry given the name between two re-checks: the next login sees another
	// entryUUID and starts over too.
	st, key, raw = ta.call(t, "POST", "/v1/apikeys", newBob, map[string]any{"role": "developer", "scope": "acme/production/billing"})
	if st != 201 {
		t.Fatalf("new bob's key: %d %s", st, raw)
	}
	s.DeleteUser(t, "bob")
	s.AddUser(t, "bob", false)
	ta.dirSession(t, "bob")
	if st, _, _ := ta.call(t, "GET", base+"/queues", key["key"].(string), nil); st != 401 {
		t.Fatalf("a key of the entry before: %d, want 401", st)
	}
}

// Deleting a tenant deletes the mappings made into it: a new tenant of that name is not handed
// to the old tenant's groups.
func TestDeletedTenantTakesItsMappings(t *testing.T) {
	s := testenv.StartSlapd(t)
	ta := startApp(t, func(c *config.Config) { useDirectory(c, s) })
	ta.adminSession(t)
	ta.must(t, "POST", "/v1/tenants", map[string]string{"name": "acme"}, 201)
	ta.must(t, "POST", "/v1/tenants", map[string]string{"name": "globex"}, 201)
	ta.must(t, "POST", "/v1/directory/mappings", map[string]string{"group": testenv.GroupDN("acme-devs"), "role": "admin", "scope": "acme"}, 201)
	ta.must(t, "POST", "/v1/directory/mappings", map[string]string{"group": testenv.GroupDN("acme-devs"), "role": "viewer", "scope": "globex"}, 201)
	ta.must(t, "DELETE", "/v1/tenants/acme", nil, 204)
	ta.must(t, "POST", "/v1/tenants", map[string]string{"name": "acme"}, 201)
	bob := ta.dirSession(t, "bob")
	if _, _, raw := ta.call(t, "GET", "/v1/auth/whoami", bob, nil); strings.Contains(raw, `"role":"admin"`) || !strings.Contains(raw, `"scope":"globex"`) {
		t.Fatalf("bob after acme was deleted and made again: %s", raw)
	}
	if _, _, raw := ta.call(t, "GET", "/v1/directory/mappings", "", nil); strings.Contains(raw, `"scope":"acme"`) || !strings.Contains(raw, `"scope":"globex"`) {
		t.Fatalf("mappings: %s", raw)
	}
}

// Names the directory would fold onto bob's entry (spaces, full-width letters) never reach
// it: even with bob's right password they are refused, so they neither guess his password
// around his lockout nor tell a right guess from a wrong one.
func TestNameVariantsNeverReachTheDirectory(t *testing.T) {
	s := testenv.StartSlapd(t)
	ta := startApp(t, func(c *config.Config) { useDirectory(c, s) })
	ta.dirSession(t, "bob")
	for i, v := range []string{"bob ", " bob", "bob  ", "\uff42\uff4f\uff42", " bob ", "b\uff4fb", "b\u200bob"} {
		if st, raw := ta.loginFrom(t, "127.0.1."+strconv.Itoa(10+i), v, "bob"+testenv.LDAPPasswordTail); st != 401 {
			t.Errorf("%q with bob's password: %d %s", v, st, raw)
		}
	}
	if st, raw := ta.loginFrom(t, "127.0.1.99", "bob", "bob"+testenv.LDAPPasswordTail); st != 200 {
		t.Fatalf("bob himself: %d %s", st, raw)
	}
}

// A user in more groups than the server lets the service account read: the login says the
// directory cannot serve it (503, never a wrong password, no lockout), and a re-check withholds
// that user's roles and goes on with the others. Once the directory's administrator lifts the
// limit, the paged group search reads all 1,001 groups.
func TestUserInManyGroups(t *testing.T) {
	s := testenv.StartSlapd(t)
	ta := startApp(t, func(c *config.Config) { useDirectory(c, s) })
	ta.adminSession(t)
	ta.must(t, "POST", "/v1/tenants", map[string]string{"name": "acme"}, 201)
	ta.must(t, "POST", "/v1/directory/mappings", map[string]string{"group": testenv.GroupDN("acme-devs"), "role": "viewer", "scope": "acme"}, 201)
	bob := ta.dirSession(t, "bob")
	s.AddMember(t, "acme-devs", testenv.UserDN("dave"))
	dave := ta.dirSession(t, "dave")
	if st, _, _ := ta.call(t, "GET", "/v1/tenants/acme", dave, nil); st != 200 {
		t.Fatalf("dave in acme-devs: %d", st)
	}
	for i := range 1001 {
		s.AddGroup(t, "self-service-"+strconv.Itoa(i), testenv.UserDN("dave"))
	}
	for i := range 6 { // more than the lockout's 5: none of them counts as a failure
		if st, raw := ta.loginFrom(t, "127.0.2."+strconv.Itoa(1+i), "dave", "dave"+testenv.LDAPPasswordTail); st != 503 || !strings.Contains(raw, "auth.directory_unavailable") {
			t.Fatalf("dave in 1,001 groups, limit 500: %d %s", st, raw)
		}
	}
	// The re-checks (every second here) withhold dave's roles and carry on with bob.
	waitUntil(t, "dave's roles to be withheld", func() bool {
		st, _, _ := ta.call(t, "GET", "/v1/tenants/acme", dave, nil)
		return st == 404
	})
	ta.recheckNow(t)
	if st, _, _ := ta.call(t, "GET", "/v1/tenants/acme", bob, nil); st != 200 {
		t.Fatalf("bob after re-checks that could not read dave: %d", st)
	}
	s.UnlimitedSearches(t)
	if st, raw := ta.loginFrom(t, "127.0.2.99", "dave", "dave"+testenv.LDAPPasswordTail); st != 200 {
		t.Fatalf("dave, limit lifted: %d %s", st, raw)
	}
	if st, _, raw := ta.call(t, "GET", "/v1/directory/users/dave", "", nil); st != 200 || strings.Count(raw, "self-service-") != 1001 {
		t.Fatalf("auth test dave: %d (%d groups)", st, strings.Count(raw, "self-service-"))
	}
}
