package identity

import (
	"crypto/rand"
	"encoding/base32"
	"net/netip"
	"strings"
	"time"

	"github.com/penstock/penstock/internal/authz"
)

// DefaultEnvironments are created with every tenant.
var DefaultEnvironments = []string{"production", "staging", "test"}

// ReservedTenants cannot be created: "platform" names the platform scope, and its keyring
// scope seals platform users' second factors.
var ReservedTenants = []string{"platform", "penstock", "system", "admin"}

// Tenant is a customer: the unit of isolation.
type Tenant struct {
	ID           string    `json:"id"`
	Name         string    `json:"name"`
	Environments []string  `json:"environments"`
	AllowList    []string  `json:"allow_list,omitempty" doc:"CIDRs allowed to make authenticated requests for this tenant; empty allows all"`
	Egress       []string  `json:"egress,omitempty" doc:"destinations (CIDR, address or host, each with an optional :port) the tenant's connectors may reach beyond the default policy, which denies loopback, link-local, private, multicast and metadata addresses"`
	Created      time.Time `json:"created"`
}

// Application is the unit of ownership inside an environment.
type Application struct {
	ID          string    `json:"id"`
	Tenant      string    `json:"tenant"`
	Environment string    `json:"environment"`
	Name        string    `json:"name"`
	Created     time.Time `json:"created"`
}

// User is a person who logs in.
type User struct {
	ID           string    `json:"id"`
	Name         string    `json:"name"`
	Email        string    `json:"email,omitempty"`
	PasswordHash string    `json:"password_hash"`
	MustChange   bool      `json:"must_change_password"`
	Disabled     bool      `json:"disabled"`
	MFA          *MFA      `json:"mfa,omitempty"`
	Created      time.Time `json:"created"`
	// Directory is set for a user who logs in through the directory (no PasswordHash then).
	Directory *DirectoryUser `json:"directory,omitempty"`
}

// DirectoryUser is what the directory said of a user at its last login or re-check. The
// user's roles come from its groups through the directory mappings, and hold only while the
// answer is recent (Config.DirectoryValidFor).
type DirectoryUser struct {
	Source  string    `json:"source,omitempty" enum:"ldap,oidc" doc:"ldap (empty in records made before OpenID Connect) or oidc"`
	DN      string    `json:"dn" doc:"the LDAP entry, or issuer#subject for an OpenID Connect user"`
	EntryID string    `json:"entry_id,omitempty" doc:"the entry's entryUUID (or objectGUID): another entry of the same name is another user"`
	Groups  []string  `json:"groups" doc:"group DNs, normalized"`
	MFA     bool      `json:"mfa,omitempty" doc:"the entry carries the attribute that says the directory checks a second factor"`
	Gone    bool      `json:"gone,omitempty" doc:"the directory no longer has this user"`
	Error   string    `json:"error,omitempty" doc:"why the last re-check could not read this user (its roles are withheld until one can)"`
	Checked time.Time `json:"checked"`
	// SealedRefresh is an OpenID Connect user's refresh token, sealed by the keyring: the
	// re-check reads its groups with it. Without one, its roles hold from its login only.
	SealedRefresh []byte `json:"sealed_refresh,omitempty"`
}

// DirectoryMapping gives the members of a directory group a role at a scope.
type DirectoryMapping struct {
	ID      string      `json:"id"`
	Group   string      `json:"group" doc:"the group's DN"`
	Role    authz.Role  `json:"role"`
	Scope   authz.Scope `json:"scope"`
	Source  string      `json:"source" enum:"config,api" doc:"config: directory.mappings (changed in the file only); api: made through the API"`
	Created time.Time   `json:"created,omitzero"`
}

// MFA is a user's TOTP enrolment. The secret is sealed by the keyring; recovery codes are
// SHA-256 digests.
type MFA struct {
	SealedSecret []byte   `json:"sealed_secret"`
	Confirmed    bool     `json:"confirmed"`
	LastStep     int64    `json:"last_step"`
	Recovery     []string `json:"recovery"`
}

// RoleBinding grants a role at a scope to a user or an API key.
type RoleBinding struct {
	ID      string      `json:"id"`
	Subject string      `json:"subject" doc:"user:<name> or apikey:<id>"`
	Role    authz.Role  `json:"role"`
	Scope   authz.Scope `json:"scope"`
	Created time.Time   `json:"created"`
}

// APIKey is a key's stored form: the digest of its secret, never the secret.
type APIKey struct {
	ID         string      `json:"id"`
	Owner      string      `json:"owner" doc:"user:<name>, or app:<tenant>/<env>/<app> for a service key"`
	Name       string      `json:"name,omitempty"`
	Digest     string      `json:"digest"`
	SealedHMAC []byte      `json:"sealed_hmac" doc:"signing key for signed requests, sealed by the keyring"`
	Role       authz.Role  `json:"role"`
	Scope      authz.Scope `json:"scope"`
	CIDRs      []string    `json:"cidrs,omitempty"`
	Expires    time.Time   `json:"expires,omitzero"`
	LastUsed   time.Time   `json:"last_used,omitzero"`
	Revoked    bool        `json:"revoked"`
	Created    time.Time   `json:"created"`
}

// Session is a logged-in user's token, stored under the token's SHA-256.
type Session struct {
	User     string    `json:"user"`
	Created  time.Time `json:"created"`
	LastSeen time.Time `json:"last_seen"`
	Expires  time.Time `json:"expires"`
	MFA      bool      `json:"mfa" doc:"the second factor was verified at login"`
}

// NewID returns a random, unguessable id: prefix and 26 base32 characters (128 bits).
func NewID(prefix string) string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic("crypto/rand: " + err.Error()) // the kernel's random source failing is not recoverable
	}
	return prefix + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b))
}

// AllowedFrom reports whether addr is inside one of cidrs (an empty list allows everyone).
func AllowedFrom(cidrs []string, addr netip.Addr) bool {
	if len(cidrs) == 0 {
		return true
	}
	addr = addr.Unmap()
	for _, c := range cidrs {
		if p, err := netip.ParsePrefix(c); err == nil && p.Contains(addr) {
			return true
		}
	}
	return false
}
