// Package authz owns who may do what: the roles, the actions each role grants, scopes, and the
// one policy decision point, Decide. It is deny by default. It never authenticates anyone and
// never reads storage: the principal it is given is all it knows.
package authz

import (
	"fmt"
	"slices"
	"strings"

	"github.com/penstock/penstock/internal/names"
)

// Action is something a principal does to a resource.
type Action string

// The actions. Each HTTP route declares exactly one.
const (
	TenantCreate    Action = "tenant.create"
	TenantRead      Action = "tenant.read"
	TenantDelete    Action = "tenant.delete"
	EnvManage       Action = "env.manage"
	AppManage       Action = "app.manage"
	UserManage      Action = "user.manage"
	RoleManage      Action = "role.manage"
	APIKeyManage    Action = "apikey.manage"
	AllowlistManage Action = "allowlist.manage"
	EgressManage    Action = "egress.manage" // what a tenant's connectors may reach: platform admins only
	SecretWrite     Action = "secret.write"
	SecretRead      Action = "secret.read" // names and metadata, never values
	KeyManage       Action = "key.manage"
	QueuePublish    Action = "queue.publish"
	QueueConsume    Action = "queue.consume"
	QueueManage     Action = "queue.manage"
	PipelineManage  Action = "pipeline.manage"
	PipelineRun     Action = "pipeline.run"
	AuditRead       Action = "audit.read"
	BackupCreate    Action = "backup.create" // take, list and verify backups
	BackupRestore   Action = "backup.restore"
	ClusterManage   Action = "cluster.manage"   // cluster status and draining a node: platform admins only
	NotifyManage    Action = "notify.manage"    // notification channels and alerting rules
	AlertAck        Action = "alert.ack"        // acknowledge an alert (stops its escalation)
	RetentionManage Action = "retention.manage" // run retention, set a tenant's retention: platform admins only
	DirectoryManage Action = "directory.manage" // directory mappings, what a directory user would get: platform admins only
)

// Role is a fixed, documented set of actions.
type Role string

// The roles.
const (
	PlatformAdmin Role = "platform-admin"
	Owner         Role = "owner"
	Admin         Role = "admin"
	Developer     Role = "developer"
	Operator      Role = "operator"
	Viewer        Role = "viewer"
	Auditor       Role = "auditor"
)

var (
	readOnly = []Action{TenantRead, SecretRead}
	roles    = map[Role][]Action{
		// Platform administrators do everything, and only they create tenants, manage
		// platform users and the master key.
		PlatformAdmin: {TenantCreate, TenantRead, TenantDelete, EnvManage, AppManage, UserManage, RoleManage, APIKeyManage,
			AllowlistManage, EgressManage, SecretWrite, SecretRead, KeyManage, QueuePublish, QueueConsume, QueueManage, PipelineManage,
			PipelineRun, AuditRead, BackupCreate, BackupRestore, ClusterManage, NotifyManage, AlertAck, RetentionManage, DirectoryManage},
		Owner: {TenantRead, TenantDelete, EnvManage, AppManage, RoleManage, APIKeyManage, AllowlistManage, SecretWrite,
			SecretRead, QueuePublish, QueueConsume, QueueManage, PipelineManage, PipelineRun, AuditRead, BackupCreate, BackupRestore,
			NotifyManage, AlertAck},
		Admin: {TenantRead, EnvManage, AppManage, RoleManage, APIKeyManage, AllowlistManage, SecretWrite, SecretRead,
			QueuePublish, QueueConsume, QueueManage, PipelineManage, PipelineRun, NotifyManage, AlertAck},
		Developer: {TenantRead, AppManage, SecretWrite, SecretRead, QueuePublish, QueueConsume, QueueManage, PipelineManage, PipelineRun,
			AlertAck},
		Operator: {TenantRead, SecretRead, QueuePublish, QueueConsume, PipelineRun, AlertAck},
		Viewer:   readOnly,
		Auditor:  {TenantRead, AuditRead},
	}
)

// covers[a][b] holds when role a grants every action role b does.
var covers = func() map[Role]map[Role]bool {
	out := map[Role]map[Role]bool{}
	for a, aa := range roles {
		out[a] = map[Role]bool{}
		for b, ba := range roles {
			all := true
			for _, x := range ba {
				all = all && slices.Contains(aa, x)
			}
			out[a][b] = all
		}
	}
	return out
}()

// Roles lists every role.
func Roles() []Role {
	return []Role{PlatformAdmin, Owner, Admin, Developer, Operator, Viewer, Auditor}
}

// Actions returns the actions a role grants, sorted.
func Actions(r Role) []Action {
	out := slices.Clone(roles[r])
	slices.Sort(out)
	return out
}

// ValidRole reports whether r is a role.
func ValidRole(r Role) bool { _, ok := roles[r]; return ok }

// Scope is where a role is bound, and where a resource lives: the platform (all empty), a
// tenant, an environment of it, or an application in that.
type Scope struct {
	Tenant, Environment, Application string
}

// Platform is the scope above every tenant.
var Platform = Scope{}

// ParseScope reads "platform", "tenant", "tenant/env" or "tenant/env/app".
func ParseScope(s string) (Scope, error) {
	if s == "platform" {
		return Platform, nil
	}
	parts := strings.Split(s, "/")
	if len(parts) > 3 || slices.Contains(parts, "") {
		return Scope{}, fmt.Errorf("scope %q: platform, tenant, tenant/environment or tenant/environment/application", s)
	}
	for _, p := range parts {
		if !names.Valid(p, "-") {
			return Scope{}, fmt.Errorf("scope %q: each part must be 1-%d of a-z, 0-9 and -, starting with a letter or digit", s, names.MaxLen)
		}
	}
	sc := Scope{Tenant: parts[0]}
	if len(parts) > 1 {
		sc.Environment = parts[1]
	}
	if len(parts) > 2 {
		sc.Application = parts[2]
	}
	return sc, nil
}

func (s Scope) String() string {
	if s.Tenant == "" {
		return "platform"
	}
	out := s.Tenant
	if s.Environment != "" {
		out += "/" + s.Environment
		if s.Application != "" {
			out += "/" + s.Application
		}
	}
	return out
}

// Validate checks every part of a scope made from request input against the naming rule, so
// nothing downstream (an audit chain, a subject, a key) is named by an unchecked string.
func (s Scope) Validate() error {
	for _, p := range []struct{ kind, v string }{{"tenant", s.Tenant}, {"environment", s.Environment}, {"application", s.Application}} {
		if p.v != "" {
			if err := names.Check(p.kind, p.v); err != nil {
				return err
			}
		}
	}
	switch {
	case s.Tenant == "" && (s.Environment != "" || s.Application != ""), s.Environment == "" && s.Application != "":
		return fmt.Errorf("scope %s: a part is missing", s)
	}
	return nil
}

// MarshalText writes the scope as people do: platform, acme, acme/production, ...
func (s Scope) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText reads what MarshalText writes.
func (s *Scope) UnmarshalText(b []byte) error {
	sc, err := ParseScope(string(b))
	if err != nil {
		return err
	}
	*s = sc
	return nil
}

// Contains reports whether r is s or lies under it.
func (s Scope) Contains(r Scope) bool {
	switch {
	case s.Tenant == "":
		return true
	case s.Tenant != r.Tenant:
		return false
	case s.Environment == "":
		return true
	case s.Environment != r.Environment:
		return false
	case s.Application == "":
		return true
	}
	return s.Application == r.Application
}

// Binding grants a role at a scope.
type Binding struct {
	Role  Role  `json:"role"`
	Scope Scope `json:"scope"`
}

// Principal is an authenticated caller: a user (through a session) or an API key, with its
// role bindings.
type Principal struct {
	Kind     string // "user" or "apikey"
	Name     string // user name, or API key id
	Bindings []Binding
}

// Decision is Decide's answer. Hidden means the principal has nothing at all in the
// resource's tenant: the API then answers 404, so a tenant's existence is not revealed.
type Decision struct {
	Allow  bool
	Hidden bool
	Reason string
}

// Decide is the policy decision point: allow if a binding whose scope contains the resource
// grants the action; deny otherwise.
func Decide(p Principal, a Action, r Scope) Decision {
	visible := r.Tenant == ""
	for _, b := range p.Bindings {
		if b.Scope.Tenant == "" || b.Scope.Tenant == r.Tenant {
			visible = true
		}
		if b.Scope.Contains(r) && slices.Contains(roles[b.Role], a) {
			return Decision{Allow: true, Reason: fmt.Sprintf("%s at %s grants %s", b.Role, b.Scope, a)}
		}
	}
	if !visible {
		return Decision{Hidden: true, Reason: fmt.Sprintf("no role in tenant %s", r.Tenant)}
	}
	return Decision{Reason: fmt.Sprintf("no role of %s %s grants %s at %s", p.Kind, p.Name, a, r)}
}

// Grants reports whether bindings together grant every action role gives at scope: the check
// that keeps a principal from handing out more than it has.
func Grants(bindings []Binding, role Role, at Scope) bool {
	// Fast path, on every API key check: one binding whose role includes role.
	for _, b := range bindings {
		if b.Scope.Contains(at) && covers[b.Role][role] {
			return true
		}
	}
	// Otherwise several bindings may grant the actions between them.
	p := Principal{Bindings: bindings}
	for _, a := range roles[role] {
		if !Decide(p, a, at).Allow {
			return false
		}
	}
	return true
}

// CheckGrant says whether role may be granted at scope: platform-admin at the platform scope
// only, viewer and auditor anywhere, every other role inside a tenant.
func CheckGrant(role Role, scope Scope) error {
	switch {
	case !ValidRole(role):
		return fmt.Errorf("role %q: one of %v", role, Roles())
	case role == PlatformAdmin && scope != Platform:
		return fmt.Errorf("platform-admin is granted at the platform scope only")
	case role != PlatformAdmin && scope == Platform && role != Viewer && role != Auditor:
		return fmt.Errorf("role %s is granted in a tenant, not at the platform scope", role)
	}
	return nil
}
