package api

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/danielgtaylor/huma/v2"

	"github.com/penstock/penstock/internal/authz"
	"github.com/penstock/penstock/internal/identity"
	"github.com/penstock/penstock/internal/redact"
)

type loginInput struct {
	Body struct {
		User     string `json:"user" maxLength:"63"`
		Password string `json:"password" maxLength:"1024" writeOnly:"true"`
		Code     string `json:"code,omitempty" maxLength:"32" doc:"TOTP code or recovery code, once a second factor is enrolled"`
	}
}

type passwordPolicyOutput struct {
	Body struct {
		Rules     string `json:"rules" doc:"the rules in words"`
		MinLength int    `json:"min_length"`
	}
}

type loginOutput struct {
	SetCookie string `header:"Set-Cookie"`
	Body      struct {
		Token              string    `json:"token" doc:"Session token: send as Authorization: Bearer <token>. Shown once."`
		Expires            time.Time `json:"expires"`
		MustChangePassword bool      `json:"must_change_password"`
		MustEnrolMFA       bool      `json:"must_enrol_mfa"`
	}
}

type whoamiOutput struct {
	Body struct {
		Kind       string          `json:"kind" enum:"user,apikey"`
		Name       string          `json:"name"`
		Bindings   []authz.Binding `json:"bindings"`
		Restricted string          `json:"restricted,omitempty" doc:"password or mfa: what must be done before anything else"`
	}
}

type passwordInput struct {
	Body struct {
		Current string `json:"current" maxLength:"1024" writeOnly:"true"`
		New     string `json:"new" maxLength:"1024" writeOnly:"true"`
	}
}

type enrolOutput struct {
	Body struct {
		URI           string   `json:"uri" doc:"otpauth:// URI for an authenticator app (show as a QR code)"`
		Secret        string   `json:"secret" doc:"the same secret, for typing in"`
		RecoveryCodes []string `json:"recovery_codes" doc:"ten one-time codes; shown once"`
	}
}

type codeInput struct {
	Body struct {
		Code string `json:"code" minLength:"6" maxLength:"6"`
	}
}

func registerAccount(g gate, hapi huma.API, o Options) {
	setup := Route{Action: authz.Action("account"), AccountSetup: true}
	none := func(*struct{}) authz.Scope { return authz.Platform }

	register(g, hapi, Route{Action: Public}, huma.Operation{
		OperationID: "password-policy", Method: http.MethodGet, Path: "/v1/auth/password-policy", Tags: []string{"auth"},
		Summary: "What a new password must be, in words and as settings (shown before a password is chosen)",
	}, nil, func(ctx context.Context, _ *caller, _ *struct{}) (*passwordPolicyOutput, error) {
		p := o.Identity.Policy()
		out := &passwordPolicyOutput{}
		out.Body.Rules, out.Body.MinLength = p.Describe(), p.MinLength
		return out, nil
	})

	register(g, hapi, Route{Action: Public}, huma.Operation{
		OperationID: "login", Method: http.MethodPost, Path: "/v1/auth/login", Tags: []string{"auth"},
		Summary: "Log in with a password (and, once enrolled, a one-time code); returns a session token",
		Errors:  []int{http.StatusUnauthorized, http.StatusTooManyRequests},
	}, nil, func(ctx context.Context, _ *caller, in *loginInput) (*loginOutput, error) {
		src := sourceFrom(ctx)
		name := in.Body.User
		// With a directory, every login but a break-glass user's goes to it.
		via := map[string]string{"via": "local"}
		var (
			tok  redact.Secret
			sess identity.Session
			err  error
		)
		if o.Directory != nil && !o.Identity.BreakGlass(name) {
			name = strings.ToLower(name)
			via["via"] = "directory"
			tok, sess, err = o.Identity.LoginDirectory(ctx, o.Lockout, o.Directory, name, redact.NewSecret(in.Body.Password), in.Body.Code, src)
		} else {
			if o.Directory != nil {
				via["break_glass"] = "true"
			}
			tok, sess, err = o.Identity.Login(ctx, o.Lockout, name, redact.NewSecret(in.Body.Password), in.Body.Code, src)
		}
		actor := "user:" + name
		if _, known := o.Identity.User(name); !known {
			// What was typed may be a password: record only a fingerprint of it.
			sum := sha256.Sum256([]byte("penstock unknown user\x00" + name))
			actor = "unknown-user:" + hex.EncodeToString(sum[:6])
		}
		if err != nil {
			code := "auth.invalid_credentials"
			switch {
			case errors.Is(err, identity.ErrLocked):
				code = "auth.locked"
			case errors.Is(err, identity.ErrMFARequired):
				code = "auth.mfa_required"
			case errors.Is(err, identity.ErrBadCode):
				code = "auth.invalid_code"
			case errors.Is(err, identity.ErrDirectoryUnavailable):
				code = "auth.directory_unavailable"
				o.Logger.Error("directory login failed: the directory cannot be asked", "error", err)
			}
			if aerr := recordAuthDetails(ctx, o, actor, "auth.login", "denied", code, via); aerr != nil {
				o.Logger.Error("audit log: failed login not recorded", "error", aerr)
			}
		} else if aerr := recordAuthDetails(ctx, o, actor, "auth.login", "ok", "", via); aerr != nil {
			// A login the audit log does not know of does not happen.
			_ = o.Identity.Logout(ctx, tok.Reveal())
			return nil, NewError(http.StatusServiceUnavailable, "audit.unavailable", "the audit log cannot be written, so the login was not made")
		} else if via["break_glass"] != "" {
			o.Logger.Warn("break-glass login: a local user logged in with a password while a directory is configured", "user", name)
			if aerr := recordAuthDetails(ctx, o, actor, "auth.break_glass", "ok", "", map[string]string{"warning": "local password login while a directory is configured"}); aerr != nil {
				_ = o.Identity.Logout(ctx, tok.Reveal())
				return nil, NewError(http.StatusServiceUnavailable, "audit.unavailable", "the audit log cannot be written, so the login was not made")
			}
		}
		switch {
		case errors.Is(err, identity.ErrDirectoryUnavailable):
			return nil, NewError(http.StatusServiceUnavailable, "auth.directory_unavailable", "the directory cannot be reached; try again later")
		case errors.Is(err, identity.ErrLocked):
			return nil, NewError(http.StatusTooManyRequests, "auth.locked", "too many failed attempts; try again later")
		case errors.Is(err, identity.ErrMFARequired):
			return nil, NewError(http.StatusUnauthorized, "auth.mfa_required", "a one-time code from your authenticator (or a recovery code) is required")
		case errors.Is(err, identity.ErrBadCode):
			return nil, NewError(http.StatusUnauthorized, "auth.invalid_code", "invalid or already used one-time code")
		case errors.Is(err, identity.ErrBadCredentials):
			return nil, NewError(http.StatusUnauthorized, "auth.invalid_credentials", "invalid user name or password"+lockoutRule(o.Lockout))
		case err != nil:
			return nil, internalError(o, "login", err)
		}
		out := &loginOutput{}
		out.Body.Token, out.Body.Expires = tok.Reveal(), sess.Expires
		u, _ := o.Identity.User(sess.User)
		out.Body.MustChangePassword = u.MustChange
		out.Body.MustEnrolMFA = o.Identity.MFARequired(sess.User) && !sess.MFA
		out.SetCookie = (&http.Cookie{Name: SessionCookie, Value: tok.Reveal(), Path: "/", Secure: true, HttpOnly: true,
			SameSite: http.SameSiteStrictMode, Expires: sess.Expires}).String()
		return out, nil
	})

	register(g, hapi, setup, huma.Operation{
		OperationID: "logout", Method: http.MethodPost, Path: "/v1/auth/logout", Tags: []string{"auth"},
		Summary: "End this session", DefaultStatus: http.StatusNoContent,
	}, none, func(ctx context.Context, c *caller, _ *struct{}) (*struct {
		SetCookie string `header:"Set-Cookie"`
	}, error) {
		if c.token != "" {
			if err := o.Identity.Logout(ctx, c.token); err != nil {
				return nil, internalError(o, "logout", err)
			}
		}
		return &struct {
			SetCookie string `header:"Set-Cookie"`
		}{(&http.Cookie{Name: SessionCookie, Value: "", Path: "/", MaxAge: -1, Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode}).String()}, nil
	})

	register(g, hapi, setup, huma.Operation{
		OperationID: "whoami", Method: http.MethodGet, Path: "/v1/auth/whoami", Tags: []string{"auth"},
		Summary: "Who this credential is and what it is bound to",
	}, none, func(ctx context.Context, c *caller, _ *struct{}) (*whoamiOutput, error) {
		out := &whoamiOutput{}
		out.Body.Kind, out.Body.Name, out.Body.Bindings, out.Body.Restricted = c.principal.Kind, c.principal.Name, c.principal.Bindings, c.restricted
		if out.Body.Bindings == nil {
			out.Body.Bindings = []authz.Binding{}
		}
		return out, nil
	})

	register(g, hapi, setup, huma.Operation{
		OperationID: "change-password", Method: http.MethodPost, Path: "/v1/auth/password", Tags: []string{"auth"},
		Summary: "Change your password", DefaultStatus: http.StatusNoContent,
	}, nil, func(ctx context.Context, c *caller, in *passwordInput) (*struct{}, error) {
		if c.user == "" {
			return nil, NewError(http.StatusForbidden, "forbidden", "only a logged-in user has a password")
		}
		err := o.Identity.ChangePassword(ctx, o.Lockout, c.user, redact.NewSecret(in.Body.Current), redact.NewSecret(in.Body.New), c.token)
		return nil, identityError(o, "change password", err)
	})

	register(g, hapi, setup, huma.Operation{
		OperationID: "mfa-enrol", Method: http.MethodPost, Path: "/v1/auth/mfa/enrol", Tags: []string{"auth"},
		Summary: "Start enrolling a TOTP second factor; confirm it with mfa/verify",
	}, none, func(ctx context.Context, c *caller, _ *struct{}) (*enrolOutput, error) {
		if c.user == "" {
			return nil, NewError(http.StatusForbidden, "forbidden", "only a logged-in user enrols a second factor")
		}
		e, err := o.Identity.EnrolMFA(ctx, c.user)
		if err != nil {
			return nil, identityError(o, "enrol", err)
		}
		out := &enrolOutput{}
		out.Body.URI, out.Body.Secret = e.URI.Reveal(), e.Secret.Reveal()
		for _, rc := range e.RecoveryCodes {
			out.Body.RecoveryCodes = append(out.Body.RecoveryCodes, rc.Reveal())
		}
		return out, nil
	})

	register(g, hapi, setup, huma.Operation{
		OperationID: "mfa-verify", Method: http.MethodPost, Path: "/v1/auth/mfa/verify", Tags: []string{"auth"},
		Summary: "Confirm the enrolment with a first code; this session counts as verified", DefaultStatus: http.StatusNoContent,
	}, nil, func(ctx context.Context, c *caller, in *codeInput) (*struct{}, error) {
		if c.user == "" {
			return nil, NewError(http.StatusForbidden, "forbidden", "only a logged-in user enrols a second factor")
		}
		if err := o.Identity.ConfirmMFA(ctx, o.Lockout, c.user, in.Body.Code); err != nil {
			return nil, identityError(o, "confirm enrolment", err)
		}
		return nil, identityError(o, "confirm enrolment", o.Identity.MarkSessionMFA(ctx, c.token))
	})
}

// lockoutRule says how failed logins are limited, the same for every user name, known or not.
func lockoutRule(l *identity.Lockout) string {
	if l == nil || l.Threshold <= 0 {
		return ""
	}
	short := func(d time.Duration) string {
		s := d.String() // 1m0s, 1h0m0s, 1m30s
		if strings.HasSuffix(s, "m0s") {
			s = strings.TrimSuffix(s, "0s")
		}
		if strings.HasSuffix(s, "h0m") {
			s = strings.TrimSuffix(s, "0m")
		}
		return s
	}
	return fmt.Sprintf(" (attempts are limited: after %d failures in a row, logins are refused for %s, doubling up to %s)", l.Threshold, short(l.Base), short(l.Max))
}

// sourceFrom is the request's source address, for lockouts.
func sourceFrom(ctx context.Context) string { return requestFrom(ctx).source }

// identityError maps identity errors to answers.
func identityError(o Options, op string, err error) error {
	var pe *identity.PolicyError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &pe):
		return &Error{Status: http.StatusUnprocessableEntity, Code: "user.weak_password", Message: pe.Error() + " (a password must be " + o.Identity.Policy().Describe() + ")",
			Details: []*ErrorDetail{{Location: "body.new", Message: pe.Rule}}}
	case errors.Is(err, identity.ErrBadCredentials):
		return NewError(http.StatusUnauthorized, "auth.invalid_credentials", "the current password is wrong")
	case errors.Is(err, identity.ErrLocked):
		return NewError(http.StatusTooManyRequests, "auth.locked", "too many failed attempts; try again later")
	case errors.Is(err, identity.ErrBadCode):
		return NewError(http.StatusUnprocessableEntity, "auth.invalid_code", "invalid or already used one-time code")
	case errors.Is(err, identity.ErrNotFound):
		return notFoundOf(err)
	case errors.Is(err, identity.ErrDeleting):
		return NewError(http.StatusConflict, "scope.deleting", err.Error()+"; the deletion finishes first (retry the delete, or wait)")
	case errors.Is(err, identity.ErrExists):
		var n *namedError
		if errors.As(err, &n) {
			return NewError(http.StatusConflict, "already_exists", n.what+" already exists")
		}
		return NewError(http.StatusConflict, "already_exists", "a resource with that name already exists")
	case errors.Is(err, identity.ErrInvalid):
		return NewError(http.StatusUnprocessableEntity, "invalid_request", err.Error())
	}
	return keyError(o, op, err)
}

// namedError says which resource an error is about, so that the answer can name it.
type namedError struct {
	what string
	err  error
}

func (e *namedError) Error() string { return e.what + ": " + e.err.Error() }
func (e *namedError) Unwrap() error { return e.err }

// notFoundOf is the 404 for err, naming the resource it is about if it says.
func notFoundOf(err error) error {
	var n *namedError
	if errors.As(err, &n) {
		return NewError(http.StatusNotFound, "not_found", "no such "+n.what)
	}
	return notFound()
}

// named wraps err (if any) with the resource it is about.
func named(err error, what string) error {
	if err == nil {
		return nil
	}
	return &namedError{what: what, err: err}
}
