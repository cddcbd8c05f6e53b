package api

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/danielgtaylor/huma/v2"

	"github.com/penstock/penstock/internal/audit"
	"github.com/penstock/penstock/internal/authz"
	"github.com/penstock/penstock/internal/directory"
	"github.com/penstock/penstock/internal/identity"
)

type directoryStatus struct {
	Body struct {
		Configured      bool                        `json:"configured" doc:"users log in through a directory"`
		Server          string                      `json:"server,omitempty" doc:"the LDAP directory's host and port"`
		Issuer          string                      `json:"issuer,omitempty" doc:"the OpenID provider users log in through (single sign-on)"`
		RecheckEvery    string                      `json:"recheck_every"`
		RolesValidFor   string                      `json:"roles_valid_for"`
		BreakGlassUsers []string                    `json:"break_glass_users"`
		Users           int                         `json:"users" doc:"directory users who have logged in"`
		Mappings        []identity.DirectoryMapping `json:"mappings"`
	}
}

type mappingList struct {
	Body struct {
		Mappings []identity.DirectoryMapping `json:"mappings"`
	}
}

type mappingInput struct {
	Body struct {
		Group string `json:"group" minLength:"1" maxLength:"1024" doc:"the group's DN (for LDAP), e.g. cn=ops,ou=groups,dc=example,dc=org"`
		Role  string `json:"role" doc:"the role its members get"`
		Scope string `json:"scope" maxLength:"200" doc:"platform, tenant, tenant/environment or tenant/environment/application"`
	}
}

type mappingOutput struct{ Body identity.DirectoryMapping }

type mappingPath struct {
	ID string `path:"id" maxLength:"64"`
}

type directoryUserPath struct {
	Name string `path:"name" maxLength:"256"`
}

type directoryUserOutput struct {
	Body struct {
		Name        string          `json:"name"`
		DN          string          `json:"dn"`
		Groups      []string        `json:"groups" doc:"every group, nested ones included"`
		Roles       []authz.Binding `json:"roles" doc:"what the mappings give these groups now"`
		MFATrusted  bool            `json:"mfa_trusted" doc:"the entry carries directory.ldap.mfa_attribute: Penstock's TOTP is not asked"`
		MFARequired bool            `json:"mfa_required" doc:"the roles need a second factor (Penstock's TOTP unless trusted)"`
		CanLogIn    bool            `json:"can_log_in"`
		Note        string          `json:"note,omitempty" doc:"why the user cannot log in"`
	}
}

type recheckOutput struct {
	Body struct {
		Changed []recheckChange `json:"changed"`
	}
}

type recheckChange struct {
	User   string          `json:"user"`
	Before []authz.Binding `json:"before"`
	After  []authz.Binding `json:"after"`
	Gone   bool            `json:"gone,omitempty" doc:"the directory no longer has the user: its sessions ended"`
}

func registerDirectory(g gate, hapi huma.API, o Options) {
	tags := []string{"directory"}
	platform := func(*struct{}) authz.Scope { return authz.Platform }

	register(g, hapi, Route{Action: authz.DirectoryManage}, huma.Operation{
		OperationID: "directory-status", Method: http.MethodGet, Path: "/v1/directory",
		Summary: "The directory users log in through: its server, re-check interval, break-glass users and mappings", Tags: tags,
	}, platform, func(ctx context.Context, _ *caller, _ *struct{}) (*directoryStatus, error) {
		out := &directoryStatus{}
		b := &out.Body
		b.Configured = o.Directory != nil || o.OIDC != nil
		if u, err := url.Parse(o.DirectoryConfig.LDAP.URL); err == nil && o.Directory != nil {
			b.Server = u.Scheme + "://" + u.Host
		}
		if o.OIDC != nil {
			b.Issuer = o.DirectoryConfig.OIDC.Issuer
		}
		b.RecheckEvery, b.RolesValidFor = o.DirectoryConfig.RecheckEvery.String(), o.DirectoryConfig.RolesValidFor.String()
		b.BreakGlassUsers = append([]string{}, o.DirectoryConfig.BreakGlassUsers...)
		b.Users = len(o.Identity.DirectoryUsers())
		b.Mappings = mappingsOrEmpty(o.Identity.DirectoryMappings())
		return out, nil
	})

	register(g, hapi, Route{Action: authz.DirectoryManage}, huma.Operation{
		OperationID: "directory-mappings", Method: http.MethodGet, Path: "/v1/directory/mappings",
		Summary: "Every directory group mapped to a role at a scope (configuration's and the API's)", Tags: tags,
	}, platform, func(ctx context.Context, _ *caller, _ *struct{}) (*mappingList, error) {
		out := &mappingList{}
		out.Body.Mappings = mappingsOrEmpty(o.Identity.DirectoryMappings())
		return out, nil
	})

	register(g, hapi, Route{Action: authz.DirectoryManage}, huma.Operation{
		OperationID: "directory-map", Method: http.MethodPost, Path: "/v1/directory/mappings",
		Summary: "Give the members of a directory group a role at a scope; takes effect at their next request", Tags: tags,
		DefaultStatus: http.StatusCreated,
	}, func(*mappingInput) authz.Scope { return authz.Platform }, func(ctx context.Context, c *caller, in *mappingInput) (*mappingOutput, error) {
		sc, err := authz.ParseScope(in.Body.Scope)
		if err != nil {
			return nil, &Error{Status: http.StatusUnprocessableEntity, Code: "invalid_request", Message: err.Error(),
				Details: []*ErrorDetail{{Location: "body.scope", Message: err.Error()}}}
		}
		if err := authz.CheckGrant(authz.Role(in.Body.Role), sc); err != nil {
			return nil, &Error{Status: http.StatusUnprocessableEntity, Code: "invalid_request", Message: err.Error(),
				Details: []*ErrorDetail{{Location: "body.role", Message: err.Error()}}}
		}
		m, err := o.Identity.AddDirectoryMapping(ctx, in.Body.Group, authz.Role(in.Body.Role), sc)
		if err != nil {
			return nil, identityError(o, "add mapping", err)
		}
		if err := auditMapping(ctx, o, c, "directory.mapping_added", m); err != nil {
			return nil, err
		}
		return &mappingOutput{Body: m}, nil
	})

	register(g, hapi, Route{Action: authz.DirectoryManage}, huma.Operation{
		OperationID: "directory-unmap", Method: http.MethodDelete, Path: "/v1/directory/mappings/{id}",
		Summary: "Remove a mapping made through the API; its members lose the role at their next request", Tags: tags,
		DefaultStatus: http.StatusNoContent,
	}, func(*mappingPath) authz.Scope { return authz.Platform }, func(ctx context.Context, c *caller, in *mappingPath) (*struct{}, error) {
		i := slices.IndexFunc(o.Identity.DirectoryMappings(), func(m identity.DirectoryMapping) bool { return m.ID == in.ID })
		if i < 0 {
			return nil, NewError(http.StatusNotFound, "not_found", "no directory mapping "+in.ID)
		}
		m := o.Identity.DirectoryMappings()[i]
		if err := o.Identity.RemoveDirectoryMapping(ctx, in.ID); err != nil {
			return nil, identityError(o, "remove mapping", err)
		}
		return nil, auditMapping(ctx, o, c, "directory.mapping_removed", m)
	})

	register(g, hapi, Route{Action: authz.DirectoryManage}, huma.Operation{
		OperationID: "directory-user", Method: http.MethodGet, Path: "/v1/directory/users/{name}",
		Summary: "What a directory user would get (groups, roles, second factor), asked of the directory without logging in", Tags: tags,
		Errors: []int{http.StatusServiceUnavailable},
	}, func(*directoryUserPath) authz.Scope { return authz.Platform }, func(ctx context.Context, c *caller, in *directoryUserPath) (*directoryUserOutput, error) {
		if o.Directory == nil {
			return nil, NewError(http.StatusConflict, "directory.not_configured", "no LDAP directory is configured (directory.ldap.url): single sign-on users are known once they log in")
		}
		name := strings.ToLower(in.Name)
		e, err := o.Directory.Lookup(ctx, name)
		switch {
		case errors.Is(err, directory.ErrNotFound):
			return nil, NewError(http.StatusNotFound, "directory.user_not_found", "the directory has no user "+quoteName(name))
		case err != nil:
			o.Logger.Error("directory lookup failed", "user", name, "error", err)
			return nil, NewError(http.StatusServiceUnavailable, "directory.unavailable", "the directory cannot be reached: "+err.Error())
		}
		out := &directoryUserOutput{}
		b := &out.Body
		b.Name, b.DN, b.Groups, b.MFATrusted = name, e.DN, e.Groups, e.MFA
		if b.Groups == nil {
			b.Groups = []string{}
		}
		b.Roles = o.Identity.DirectoryRoles(e.Groups)
		if b.Roles == nil {
			b.Roles = []authz.Binding{}
		}
		b.MFARequired = o.Identity.MFARequiredFor(b.Roles)
		b.CanLogIn = true
		if u, ok := o.Identity.User(name); ok && u.Directory == nil {
			b.CanLogIn, b.Note = false, "a local user has this name: the directory user cannot log in"
		} else if ok && u.Disabled {
			b.CanLogIn, b.Note = false, "disabled in Penstock"
		} else if identity.CheckUserName(name) != nil {
			b.CanLogIn, b.Note = false, "not a possible Penstock user name (1-63 of a-z, 0-9 and -)"
		}
		return out, nil
	})

	register(g, hapi, Route{Action: authz.DirectoryManage}, huma.Operation{
		OperationID: "directory-recheck", Method: http.MethodPost, Path: "/v1/directory/recheck",
		Summary: "Read every directory user's groups again now (as every directory.recheck_every); returns what changed", Tags: tags,
		Errors: []int{http.StatusServiceUnavailable},
	}, platform, func(ctx context.Context, _ *caller, _ *struct{}) (*recheckOutput, error) {
		if o.Recheck == nil {
			return nil, NewError(http.StatusConflict, "directory.not_configured", "no directory is configured (directory.ldap.url)")
		}
		changes, err := o.Recheck(ctx)
		out := &recheckOutput{Body: struct {
			Changed []recheckChange `json:"changed"`
		}{Changed: []recheckChange{}}}
		for _, c := range changes {
			out.Body.Changed = append(out.Body.Changed, recheckChange{User: c.User, Before: bindingsOrEmpty(c.Before), After: bindingsOrEmpty(c.After), Gone: c.Gone})
		}
		if err != nil {
			o.Logger.Error("directory re-check failed", "error", err)
			return nil, NewError(http.StatusServiceUnavailable, "directory.unavailable", "the directory cannot be reached: "+err.Error())
		}
		return out, nil
	})
}

func mappingsOrEmpty(m []identity.DirectoryMapping) []identity.DirectoryMapping {
	if m == nil {
		return []identity.DirectoryMapping{}
	}
	return m
}

func bindingsOrEmpty(b []authz.Binding) []authz.Binding {
	if b == nil {
		return []authz.Binding{}
	}
	return b
}

func quoteName(s string) string { return "\"" + s + "\"" }

// auditMapping records which mapping changed (the route's own events name only the path).
func auditMapping(ctx context.Context, o Options, c *caller, action string, m identity.DirectoryMapping) error {
	ri := requestFrom(ctx)
	_, err := o.Audit.Append(ctx, audit.Event{Actor: c.principal.Kind + ":" + c.principal.Name, Action: action, Result: "ok",
		Target: m.ID, Source: ri.source, RequestID: ri.id,
		Details: map[string]string{"group": m.Group, "role": string(m.Role), "scope": m.Scope.String()}})
	if err != nil {
		return internalError(o, action, err)
	}
	return nil
}
