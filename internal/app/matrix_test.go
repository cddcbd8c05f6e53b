package app

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/penstock/penstock/internal/api"
	"github.com/penstock/penstock/internal/authz"
	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/testenv"
)

// may is the documented role table (docs/access.md), written out independently of the code's
// table so that this test checks the code against the documentation.
var may = map[authz.Action][]authz.Role{
	authz.TenantCreate:    {},
	authz.UserManage:      {},
	authz.KeyManage:       {},
	authz.TenantRead:      {authz.Owner, authz.Admin, authz.Developer, authz.Operator, authz.Viewer, authz.Auditor},
	authz.TenantDelete:    {authz.Owner},
	authz.EnvManage:       {authz.Owner, authz.Admin},
	authz.AppManage:       {authz.Owner, authz.Admin, authz.Developer},
	authz.RoleManage:      {authz.Owner, authz.Admin},
	authz.APIKeyManage:    {authz.Owner, authz.Admin},
	authz.AllowlistManage: {authz.Owner, authz.Admin},
	authz.EgressManage:    {},
	authz.RetentionManage: {},
	authz.DirectoryManage: {},
	authz.SecretWrite:     {authz.Owner, authz.Admin, authz.Developer},
	authz.SecretRead:      {authz.Owner, authz.Admin, authz.Developer, authz.Operator, authz.Viewer},
	authz.AuditRead:       {authz.Owner, authz.Auditor},
	authz.QueuePublish:    {authz.Owner, authz.Admin, authz.Developer, authz.Operator},
	authz.QueueConsume:    {authz.Owner, authz.Admin, authz.Developer, authz.Operator},
	authz.QueueManage:     {authz.Owner, authz.Admin, authz.Developer},
	authz.PipelineManage:  {authz.Owner, authz.Admin, authz.Developer},
	authz.PipelineRun:     {authz.Owner, authz.Admin, authz.Developer, authz.Operator},
	authz.BackupCreate:    {authz.Owner},
	authz.BackupRestore:   {authz.Owner},
	authz.NotifyManage:    {authz.Owner, authz.Admin},
	authz.AlertAck:        {authz.Owner, authz.Admin, authz.Developer, authz.Operator},
}

type principal struct {
	label string
	token string
	role  authz.Role
	scope authz.Scope // platform for the administrator
	key   bool        // an API key (keys do not create keys), else a session
}

// call describes one request of a route, made fresh for each principal.
type call struct {
	method, path string
	body         any
	scope        authz.Scope // the resource the route acts on
}

// TestEveryRouteForEveryRoleAndScope walks every registered route with an API key for every
// tenant role at the tenant, environment and application scopes, the platform administrator,
// and a principal of another tenant, and checks allow/deny against the documented table:
// allowed calls are not refused (401/403), denied ones get 403, and another tenant's principal
// gets 404 for anything of this tenant.
func TestEveryRouteForEveryRoleAndScope(t *testing.T) {
	ta := startApp(t, func(c *config.Config) { // hundreds of calls from one address
		c.API.Limits.ConnRate, c.API.Limits.ConnBurst = 1e6, 1e6
		c.API.Limits.RequestRate, c.API.Limits.RequestBurst = 1e6, 1e6
	})
	admin := ta.adminSession(t)
	routeMatrix(t, ta, admin, func(mustOK func(method, path string, body any) map[string]any) []principal {
		principals := []principal{{label: "platform-admin", token: admin, role: authz.PlatformAdmin}}
		for _, role := range tenantRoles {
			for _, sc := range matrixScopes {
				out := mustOK("POST", "/v1/apikeys", map[string]any{"role": role, "scope": sc.String()})
				principals = append(principals, principal{label: string(role) + "@" + sc.String(), token: out["key"].(string), role: role, scope: sc, key: true})
			}
		}
		out := mustOK("POST", "/v1/apikeys", map[string]any{"role": authz.Owner, "scope": "globex"})
		return append(principals, principal{label: "owner@globex", token: out["key"].(string), role: authz.Owner, scope: authz.Scope{Tenant: "globex"}, key: true})
	})
}

// The same walk with directory users: each logs in through the directory (a session) and has
// its role only through a group mapped to it; the platform administrator is a member of the
// group the configuration maps to platform-admin.
func TestEveryRouteForDirectoryPrincipals(t *testing.T) {
	s := testenv.StartSlapd(t)
	ta := startApp(t, func(c *config.Config) {
		useDirectory(c, s)
		c.Directory.RecheckEvery, c.Directory.RolesValidFor = time.Minute, time.Hour // no re-check needed here
	})
	admin := ta.adminSession(t) // break-glass, for the setup
	routeMatrix(t, ta, admin, func(mustOK func(method, path string, body any) map[string]any) []principal {
		// Every user carries the attribute that says the directory checked a second factor, so
		// owners' and admins' sessions are not held back for TOTP enrolment.
		s.AddUser(t, "root-ops", true)
		s.AddMember(t, "ops", testenv.UserDN("root-ops"))
		principals := []principal{{label: "directory platform-admin", token: ta.dirSession(t, "root-ops"), role: authz.PlatformAdmin}}
		add := func(role authz.Role, sc authz.Scope, n int) {
			user, group := fmt.Sprintf("m-%s-%d", role, n), fmt.Sprintf("g-%s-%d", role, n)
			s.AddUser(t, user, true)
			s.AddGroup(t, group, testenv.UserDN(user))
			mustOK("POST", "/v1/directory/mappings", map[string]string{"group": testenv.GroupDN(group), "role": string(role), "scope": sc.String()})
			principals = append(principals, principal{label: "directory " + string(role) + "@" + sc.String(), token: ta.dirSession(t, user), role: role, scope: sc})
		}
		for _, role := range tenantRoles {
			for i, sc := range matrixScopes {
				add(role, sc, i)
			}
		}
		add(authz.Owner, authz.Scope{Tenant: "globex"}, 9)
		return principals
	})
}

var (
	tenantRoles  = []authz.Role{authz.Owner, authz.Admin, authz.Developer, authz.Operator, authz.Viewer, authz.Auditor}
	matrixScopes = []authz.Scope{{Tenant: "acme"}, {Tenant: "acme", Environment: "production"}, {Tenant: "acme", Environment: "production", Application: "billing"}}
)

// routeMatrix sets up acme and globex, makes the principals and walks every route with each.
func routeMatrix(t *testing.T, ta *testApp, admin string, makePrincipals func(mustOK func(method, path string, body any) map[string]any) []principal) {
	mustOK := func(method, path string, body any) map[string]any {
		t.Helper()
		status, out, raw := ta.call(t, method, path, admin, body)
		if status >= 300 {
			t.Fatalf("setup %s %s: %d %s", method, path, status, raw)
		}
		return out
	}
	for _, tenant := range []string{"acme", "globex"} {
		mustOK("POST", "/v1/tenants", map[string]string{"name": tenant})
		mustOK("POST", "/v1/tenants/"+tenant+"/environments/production/applications", map[string]string{"name": "billing"})
	}
	mustOK("POST", "/v1/users", map[string]string{"name": "victim"})
	base := "/v1/tenants/acme/environments/production/applications/billing"
	mustOK("POST", base+"/queues", map[string]any{"name": "jobs"})
	mustOK("POST", base+"/exchanges", map[string]any{"name": "events", "type": "fanout"})
	// Loopback, denied by egress: a channel test answers at once (502) for allowed callers.
	hook := map[string]any{"type": "webhook", "url": "https://127.0.0.1:9/hook", "secret": "0123456789abcdef-secret"}
	mustOK("PUT", "/v1/notify/channels/hook?tenant=acme", hook)
	mustOK("PUT", "/v1/notify/rules/dead?tenant=acme", map[string]any{"event": "queue.dead_letters", "channels": []string{"hook"}})
	principals := makePrincipals(mustOK)

	app := authz.Scope{Tenant: "acme", Environment: "production", Application: "billing"}
	env := authz.Scope{Tenant: "acme", Environment: "production"}
	acme := authz.Scope{Tenant: "acme"}
	secrets := "/v1/tenants/acme/environments/production/applications/billing/secrets"
	n := 0
	fresh := func(prefix string) string { n++; return fmt.Sprintf("%s-%d", prefix, n) }
	calls := map[string]func(p principal) call{
		"keys-status": func(principal) call { return call{"GET", "/v1/keys", nil, authz.Platform} },
		// One node here: allowed callers get 409 cluster.not_clustered (the cluster tests
		// cover the answers of a cluster), the others 403.
		"cluster-status": func(principal) call { return call{"GET", "/v1/cluster", nil, authz.Platform} },
		"cluster-drain":  func(principal) call { return call{"POST", "/v1/cluster/drain", nil, authz.Platform} },
		"audit-list":     func(principal) call { return call{"GET", "/v1/audit?tenant=acme&limit=5", nil, acme} },
		"audit-verify":   func(principal) call { return call{"GET", "/v1/audit/verify", nil, authz.Platform} },
		"audit-export":   func(principal) call { return call{"GET", "/v1/audit/export?tenant=acme", nil, acme} },
		"audit-key":      func(principal) call { return call{"GET", "/v1/audit/key", nil, authz.Platform} },
		"keys-rotate": func(principal) call {
			return call{"POST", "/v1/keys/rotate", map[string]string{"scope": "acme/production/billing"}, authz.Platform}
		},
		"keys-rotate-master": func(principal) call { return call{"POST", "/v1/keys/rotate-master", nil, authz.Platform} },
		// This platform has no backup target: an allowed call answers 409 backup.not_configured.
		"backup-create": func(principal) call { return call{"POST", "/v1/backups", map[string]any{"tenant": "acme"}, acme} },
		"backup-list":   func(principal) call { return call{"GET", "/v1/backups?tenant=acme", nil, acme} },
		"backup-verify": func(principal) call {
			return call{"POST", "/v1/backups/20261205T120000Z-abcdef/verify", map[string]any{"tenant": "acme"}, acme}
		},
		"backup-restore": func(principal) call {
			return call{"POST", "/v1/backups/20261205T120000Z-abcdef-acme/restore", map[string]any{"tenant": "acme"}, acme}
		},
		"backup-job": func(principal) call { return call{"GET", "/v1/backups/jobs/bj_000000000000", nil, authz.Platform} },
		"keys-destroy": func(principal) call {
			g := fresh("ghost")
			return call{"POST", "/v1/keys/destroy", map[string]string{"scope": g, "confirm": g}, authz.Platform}
		},
		"secret-put": func(principal) call {
			return call{"PUT", secrets + "/" + fresh("s"), map[string]string{"value": "v"}, app}
		},
		"secret-list":   func(principal) call { return call{"GET", secrets, nil, app} },
		"notify-events": func(principal) call { return call{"GET", "/v1/notify/events", nil, authz.Platform} },
		"channel-put": func(principal) call {
			return call{"PUT", "/v1/notify/channels/" + fresh("c") + "?tenant=acme", hook, acme}
		},
		"channel-list":   func(principal) call { return call{"GET", "/v1/notify/channels?tenant=acme", nil, acme} },
		"channel-get":    func(principal) call { return call{"GET", "/v1/notify/channels/hook?tenant=acme", nil, acme} },
		"channel-delete": func(principal) call { return call{"DELETE", "/v1/notify/channels/ghost?tenant=acme", nil, acme} },
		"channel-test":   func(principal) call { return call{"POST", "/v1/notify/channels/hook/test?tenant=acme", nil, acme} },
		"rule-put": func(principal) call {
			return call{"PUT", "/v1/notify/rules/" + fresh("r") + "?tenant=acme", map[string]any{"event": "queue.depth", "threshold": 10,
				"channels": []string{"hook"}}, acme}
		},
		"rule-list":     func(principal) call { return call{"GET", "/v1/notify/rules?tenant=acme", nil, acme} },
		"rule-delete":   func(principal) call { return call{"DELETE", "/v1/notify/rules/ghost?tenant=acme", nil, acme} },
		"alert-list":    func(principal) call { return call{"GET", "/v1/alerts?tenant=acme", nil, acme} },
		"alert-get":     func(principal) call { return call{"GET", "/v1/alerts/a-0123456789abcdef?tenant=acme", nil, acme} },
		"alert-ack":     func(principal) call { return call{"POST", "/v1/alerts/a-0123456789abcdef/ack?tenant=acme", nil, acme} },
		"secret-delete": func(principal) call { return call{"DELETE", secrets + "/ghost", nil, app} },
		"tenant-create": func(principal) call {
			return call{"POST", "/v1/tenants", map[string]string{"name": fresh("t")}, authz.Platform}
		},
		"tenant-get": func(principal) call { return call{"GET", "/v1/tenants/acme", nil, acme} },
		"tenant-delete": func(p principal) call {
			// A tenant of its own, with the principal's role re-created in it, for every call.
			name := fresh("del")
			mustOK("POST", "/v1/tenants", map[string]string{"name": name})
			return call{"DELETE", "/v1/tenants/" + name, nil, authz.Scope{Tenant: name}}
		},
		"egress-set": func(principal) call {
			return call{"PUT", "/v1/tenants/acme/egress", map[string]any{"rules": []string{}}, acme}
		},
		"allowlist-set": func(principal) call {
			return call{"PUT", "/v1/tenants/acme/allowlist", map[string]any{"cidrs": []string{}}, acme}
		},
		"env-list": func(principal) call { return call{"GET", "/v1/tenants/acme/environments", nil, acme} },
		"env-get":  func(principal) call { return call{"GET", "/v1/tenants/acme/environments/production", nil, env} },
		"env-delete": func(principal) call {
			// An environment of its own for every call.
			name := fresh("gone")
			mustOK("POST", "/v1/tenants/acme/environments", map[string]string{"name": name})
			return call{"DELETE", "/v1/tenants/acme/environments/" + name + "?confirm=acme/" + name, nil, authz.Scope{Tenant: "acme", Environment: name}}
		},
		"directory-status":   func(principal) call { return call{"GET", "/v1/directory", nil, authz.Platform} },
		"directory-mappings": func(principal) call { return call{"GET", "/v1/directory/mappings", nil, authz.Platform} },
		"directory-map": func(principal) call {
			return call{"POST", "/v1/directory/mappings", map[string]string{"group": "cn=" + fresh("matrix") + ",ou=groups,dc=example,dc=org",
				"role": "viewer", "scope": "acme"}, authz.Platform}
		},
		"directory-unmap": func(principal) call { return call{"DELETE", "/v1/directory/mappings/dm_ghost", nil, authz.Platform} },
		// Without a directory an allowed call answers 409 directory.not_configured.
		"directory-user":    func(principal) call { return call{"GET", "/v1/directory/users/nobody", nil, authz.Platform} },
		"directory-recheck": func(principal) call { return call{"POST", "/v1/directory/recheck", nil, authz.Platform} },
		"retention-report":  func(principal) call { return call{"GET", "/v1/retention?tenant=acme", nil, acme} },
		"retention-run": func(principal) call {
			return call{"POST", "/v1/retention/run", map[string]any{"dry_run": true}, authz.Platform}
		},
		"retention-policy-get": func(principal) call { return call{"GET", "/v1/retention/tenants/acme", nil, acme} },
		"retention-policy-put": func(principal) call {
			return call{"PUT", "/v1/retention/tenants/acme", map[string]any{"inactive_after": "90d"}, acme}
		},
		"env-create": func(principal) call {
			return call{"POST", "/v1/tenants/acme/environments", map[string]string{"name": fresh("e")}, acme}
		},
		"app-list": func(principal) call {
			return call{"GET", "/v1/tenants/acme/environments/production/applications", nil, env}
		},
		"app-create": func(principal) call {
			return call{"POST", "/v1/tenants/acme/environments/production/applications", map[string]string{"name": fresh("a")}, env}
		},
		"app-delete": func(principal) call {
			return call{"DELETE", "/v1/tenants/acme/environments/production/applications/ghost", nil, authz.Scope{Tenant: "acme", Environment: "production", Application: "ghost"}}
		},
		"user-create": func(principal) call {
			return call{"POST", "/v1/users", map[string]string{"name": fresh("u")}, authz.Platform}
		},
		"user-list":           func(principal) call { return call{"GET", "/v1/users", nil, authz.Platform} },
		"user-disable":        func(principal) call { return call{"POST", "/v1/users/victim/disable", nil, authz.Platform} },
		"user-enable":         func(principal) call { return call{"POST", "/v1/users/victim/enable", nil, authz.Platform} },
		"user-end-sessions":   func(principal) call { return call{"POST", "/v1/users/victim/end-sessions", nil, authz.Platform} },
		"user-reset-password": func(principal) call { return call{"POST", "/v1/users/victim/reset-password", nil, authz.Platform} },
		"role-grant": func(p principal) call {
			return call{"POST", "/v1/roles", map[string]string{"subject": "user:victim", "role": "viewer", "scope": "acme/production/billing"}, app}
		},
		"role-list": func(principal) call { return call{"GET", "/v1/roles?scope=acme/production", nil, env} },
		"role-revoke": func(principal) call {
			b := mustOK("POST", "/v1/roles", map[string]string{"subject": "user:victim", "role": "viewer", "scope": "acme/production/billing"})
			return call{"DELETE", "/v1/roles/" + b["id"].(string), nil, app}
		},
		"apikey-create": func(principal) call {
			return call{"POST", "/v1/apikeys", map[string]string{"role": "viewer", "scope": "acme/production/billing"}, app}
		},
		"queue-create": func(principal) call {
			return call{"POST", base + "/queues", map[string]any{"name": fresh("q")}, app}
		},
		"queue-list":   func(principal) call { return call{"GET", base + "/queues", nil, app} },
		"queue-get":    func(principal) call { return call{"GET", base + "/queues/jobs", nil, app} },
		"queue-delete": func(principal) call { return call{"DELETE", base + "/queues/ghost", nil, app} },
		"queue-publish": func(principal) call {
			return call{"POST", base + "/queues/jobs/messages", map[string]any{"messages": []map[string]string{{"data": "x"}}}, app}
		},
		"queue-consume": func(principal) call {
			return call{"POST", base + "/queues/jobs/consume", map[string]any{"max": 1}, app}
		},
		"queue-ack": func(principal) call {
			return call{"POST", base + "/queues/jobs/ack", map[string]any{"tokens": []string{"x"}}, app}
		},
		"queue-nack": func(principal) call {
			return call{"POST", base + "/queues/jobs/nack", map[string]any{"tokens": []string{"x"}}, app}
		},
		"queue-extend": func(principal) call {
			return call{"POST", base + "/queues/jobs/extend", map[string]any{"tokens": []string{"x"}}, app}
		},
		"queue-reject": func(principal) call {
			return call{"POST", base + "/queues/jobs/reject", map[string]any{"tokens": []string{"x"}}, app}
		},
		"dead-letter-list": func(principal) call {
			return call{"GET", base + "/queues/jobs/dead-letters", nil, app}
		},
		"dead-letter-get": func(principal) call { return call{"GET", base + "/queues/jobs/dead-letters/1", nil, app} },
		"dead-letter-replay": func(principal) call {
			return call{"POST", base + "/queues/jobs/dead-letters/replay", map[string]any{}, app}
		},
		"dead-letter-purge": func(principal) call { return call{"DELETE", base + "/queues/jobs/dead-letters", nil, app} },
		"exchange-create": func(principal) call {
			return call{"POST", base + "/exchanges", map[string]any{"name": fresh("x"), "type": "topic"}, app}
		},
		"exchange-list":   func(principal) call { return call{"GET", base + "/exchanges", nil, app} },
		"exchange-get":    func(principal) call { return call{"GET", base + "/exchanges/events", nil, app} },
		"exchange-delete": func(principal) call { return call{"DELETE", base + "/exchanges/ghost", nil, app} },
		"exchange-bind": func(principal) call {
			return call{"POST", base + "/exchanges/events/bind", map[string]any{"queue": "jobs"}, app}
		},
		"exchange-unbind": func(principal) call {
			return call{"POST", base + "/exchanges/events/unbind", map[string]any{"queue": "ghost"}, app}
		},
		"exchange-publish": func(principal) call {
			return call{"POST", base + "/exchanges/events/messages", map[string]any{"messages": []map[string]string{{"data": "x"}}}, app}
		},
		"pipeline-apply": func(principal) call {
			return call{"PUT", base + "/pipelines/ghost?dry_run=true", map[string]any{"source": map[string]any{"type": "queue", "queue": "jobs"},
				"sink": map[string]any{"type": "queue", "queue": "jobs"}}, app}
		},
		"pipeline-list":   func(principal) call { return call{"GET", base + "/pipelines", nil, app} },
		"pipeline-get":    func(principal) call { return call{"GET", base + "/pipelines/ghost", nil, app} },
		"pipeline-delete": func(principal) call { return call{"DELETE", base + "/pipelines/ghost", nil, app} },
		"pipeline-pause":  func(principal) call { return call{"POST", base + "/pipelines/ghost/pause", nil, app} },
		"pipeline-resume": func(principal) call { return call{"POST", base + "/pipelines/ghost/resume", nil, app} },
		"pipeline-run":    func(principal) call { return call{"POST", base + "/pipelines/ghost/run", nil, app} },
		"pipeline-runs":   func(principal) call { return call{"GET", base + "/pipelines/ghost/runs", nil, app} },
		"pipeline-logs":   func(principal) call { return call{"GET", base + "/pipelines/ghost/logs", nil, app} },
		"apikey-list":     func(principal) call { return call{"GET", "/v1/apikeys?scope=acme/production/billing", nil, app} },
		"apikey-revoke": func(principal) call {
			k := mustOK("POST", "/v1/apikeys", map[string]string{"role": "viewer", "scope": "acme/production/billing"})
			return call{"DELETE", "/v1/apikeys/" + k["record"].(map[string]any)["id"].(string), nil, app}
		},
	}

	checked := 0
	for _, r := range ta.routes {
		if r.Action == api.Public || r.AccountSetup {
			continue // no authorization to check: public, or the caller's own account
		}
		if r.Listing {
			continue // checked below by content
		}
		mk, ok := calls[r.OperationID]
		if !ok {
			t.Errorf("route %s %s (%s) has no case in this test", r.Method, r.Path, r.OperationID)
			continue
		}
		for _, p := range principals {
			c := mk(p)
			if c.method != r.Method {
				t.Fatalf("case for %s uses %s", r.OperationID, c.method)
			}
			status, body, raw := ta.call(t, c.method, c.path, p.token, c.body)
			want := expected(p, r.Action, c.scope)
			if (r.OperationID == "apikey-create" || r.OperationID == "role-grant") && p.key && want == "allowed" {
				want = "denied" // these principals are API keys: keys neither create keys nor grant roles
			}
			got := "allowed"
			switch {
			case status == 401:
				got = "unauthenticated"
			case status == 403 && body["code"] == "forbidden":
				got = "denied"
			case status == 404 && c.scope.Tenant != "" && p.scope.Tenant != "" && p.scope.Tenant != c.scope.Tenant:
				got = "hidden"
			}
			if got != want {
				t.Errorf("%s %s as %s: %s (%d %s), want %s", c.method, c.path, p.label, got, status, raw, want)
			}
			checked++
		}
	}
	t.Logf("%d route x principal checks", checked)

	// Listings show exactly what the principal may see.
	for _, p := range principals {
		_, body, raw := ta.call(t, "GET", "/v1/tenants", p.token, nil)
		var seen []string
		for _, tn := range body["tenants"].([]any) {
			seen = append(seen, tn.(map[string]any)["name"].(string))
		}
		switch {
		case p.role == authz.PlatformAdmin:
			if !slices.Contains(seen, "acme") || !slices.Contains(seen, "globex") {
				t.Errorf("platform admin sees %v", seen)
			}
		case len(seen) != 1 || seen[0] != p.scope.Tenant:
			t.Errorf("%s sees tenants %v (%s)", p.label, seen, raw)
		}
	}
}

// expected applies the documented table: platform actions belong to the platform
// administrator; a tenant principal sees nothing of another tenant; inside its tenant a role
// is allowed an action if the table grants it and its scope contains the resource.
func expected(p principal, a authz.Action, resource authz.Scope) string {
	if p.role == authz.PlatformAdmin {
		return "allowed"
	}
	if resource.Tenant != "" && resource.Tenant != p.scope.Tenant {
		return "hidden"
	}
	if !slices.Contains(may[a], p.role) {
		return "denied"
	}
	if !within(p.scope, resource) {
		return "denied"
	}
	return "allowed"
}

func within(outer, inner authz.Scope) bool {
	o, i := outer.String(), inner.String()
	return o == i || strings.HasPrefix(i, o+"/")
}
