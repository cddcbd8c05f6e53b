package api

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"html"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/danielgtaylor/huma/v2"
	"golang.org/x/oauth2"

	"github.com/penstock/penstock/internal/directory"
	"github.com/penstock/penstock/internal/identity"
	"github.com/penstock/penstock/internal/keyring"
	"github.com/penstock/penstock/internal/redact"
)

// OIDCCookie carries a browser login's state, nonce and PKCE verifier between its start and
// the issuer's redirect back, sealed by the keyring (any node can finish the login).
const OIDCCookie = "penstock_oidc"

// OIDC is what the single sign-on routes need of the relying party.
type OIDC interface {
	AuthURL(ctx context.Context, state, nonce, verifier string) (string, error)
	Exchange(ctx context.Context, code, verifier, nonce string) (directory.Claims, string, error)
	DeviceAuth(ctx context.Context) (*oauth2.DeviceAuthResponse, error)
	DeviceToken(ctx context.Context, deviceCode string, interval int64) (directory.Claims, string, error)
}

var oidcScope = keyring.Scope{Tenant: "platform"}

// devicePolls holds the device codes being polled now; devicePollSlots bounds how many are.
var (
	devicePolls     sync.Map
	devicePollSlots = make(chan struct{}, 64)
)

type oidcPending struct {
	State, Nonce, Verifier, ReturnTo string `json:",omitempty"`
	DeviceCode                       string `json:",omitempty"`
	Interval                         int64  `json:",omitempty"`
	Expires                          time.Time
}

func (o Options) sealPending(ctx context.Context, kind string, p oidcPending) (string, error) {
	b, _ := json.Marshal(p)
	sealed, err := o.Keyring.Seal(ctx, oidcScope, kind, "oidc", b)
	if err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(sealed), nil
}

func (o Options) openPending(ctx context.Context, kind, s string) (oidcPending, bool) {
	var p oidcPending
	raw, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(raw) > 4096 {
		return p, false
	}
	b, err := o.Keyring.Unseal(ctx, oidcScope, kind, "oidc", raw)
	if err != nil || json.Unmarshal(b, &p) != nil || o.now().After(p.Expires) {
		return oidcPending{}, false
	}
	return p, true
}

// localPath reports whether s is a path on this server and nothing else: printable ASCII
// without spaces or backslashes (a browser drops tabs and newlines and reads \ as /, which
// would make "/\t/evil.example" a link elsewhere), no scheme or host, one leading /.
func localPath(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f || s[i] == '\\' {
			return false
		}
	}
	u, err := url.Parse(s)
	return err == nil && u.Scheme == "" && u.Host == "" && u.User == nil && strings.HasPrefix(s, "/") && !strings.HasPrefix(s, "//")
}

func randomText() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic("crypto/rand: " + err.Error())
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

type oidcStartInput struct {
	ReturnTo string `query:"return_to" maxLength:"512" doc:"a path on this server to go to once logged in (default /v1/auth/whoami)"`
}

type redirectOutput struct {
	Status    int
	Location  string   `header:"Location"`
	SetCookie []string `header:"Set-Cookie"`
}

type landingOutput struct {
	ContentType  string   `header:"Content-Type"`
	CacheControl string   `header:"Cache-Control"`
	SetCookie    []string `header:"Set-Cookie"`
	Body         []byte
}

type oidcCallbackInput struct {
	Code    string `query:"code" maxLength:"2048"`
	State   string `query:"state" maxLength:"256"`
	Error   string `query:"error" maxLength:"256"`
	Pending string `cookie:"penstock_oidc"`
}

type deviceStartOutput struct {
	Body struct {
		VerificationURI         string `json:"verification_uri"`
		VerificationURIComplete string `json:"verification_uri_complete,omitempty"`
		UserCode                string `json:"user_code"`
		ExpiresIn               int64  `json:"expires_in" doc:"seconds"`
		Interval                int64  `json:"interval" doc:"seconds between polls"`
		Handle                  string `json:"handle" doc:"give it to device/token to finish the login"`
	}
}

type deviceTokenInput struct {
	Body struct {
		Handle string `json:"handle" maxLength:"4096"`
	}
}

func registerOIDC(g gate, hapi huma.API, o Options) {
	tags := []string{"auth"}
	notConfigured := func() error {
		return NewError(http.StatusConflict, "auth.oidc_not_configured", "single sign-on is not configured (directory.oidc.issuer)")
	}
	register(g, hapi, Route{Action: Public}, huma.Operation{
		OperationID: "oidc-login", Method: http.MethodGet, Path: "/v1/auth/oidc/login", Tags: tags,
		Summary:       "Single sign-on for a browser: redirects to the OpenID provider (authorization code with PKCE)",
		DefaultStatus: http.StatusFound, Errors: []int{http.StatusBadRequest, http.StatusConflict, http.StatusServiceUnavailable},
	}, nil, func(ctx context.Context, _ *caller, in *oidcStartInput) (*redirectOutput, error) {
		if o.OIDC == nil {
			return nil, notConfigured()
		}
		ret := in.ReturnTo
		if ret == "" {
			ret = "/v1/auth/whoami"
		}
		if !localPath(ret) {
			return nil, &Error{Status: http.StatusBadRequest, Code: "invalid_request", Message: "return_to must be a path on this server, such as /v1/auth/whoami",
				Details: []*ErrorDetail{{Location: "query.return_to", Message: "a path starting with one /"}}}
		}
		p := oidcPending{State: randomText(), Nonce: randomText(), Verifier: oauth2.GenerateVerifier(), ReturnTo: ret, Expires: o.now().Add(10 * time.Minute)}
		to, err := o.OIDC.AuthURL(ctx, p.State, p.Nonce, p.Verifier)
		if err != nil {
			o.Logger.Error("single sign-on: the OpenID provider cannot be reached", "error", err)
			return nil, NewError(http.StatusServiceUnavailable, "auth.directory_unavailable", "the OpenID provider cannot be reached; try again later")
		}
		sealed, err := o.sealPending(ctx, "oidc-login", p)
		if err != nil {
			return nil, internalError(o, "oidc login", err)
		}
		ck := &http.Cookie{Name: OIDCCookie, Value: sealed, Path: "/v1/auth/oidc/", MaxAge: 600, Secure: true, HttpOnly: true, SameSite: http.SameSiteLaxMode}
		return &redirectOutput{Status: http.StatusFound, Location: to, SetCookie: []string{ck.String()}}, nil
	})

	register(g, hapi, Route{Action: Public}, huma.Operation{
		OperationID: "oidc-callback", Method: http.MethodGet, Path: "/v1/auth/oidc/callback", Tags: tags,
		Summary:       "Where the OpenID provider sends the browser back: checks the login, sets the session cookie, and a page that goes on to return_to",
		DefaultStatus: http.StatusOK, Errors: []int{http.StatusBadRequest, http.StatusUnauthorized, http.StatusServiceUnavailable},
	}, nil, func(ctx context.Context, _ *caller, in *oidcCallbackInput) (*landingOutput, error) {
		if o.OIDC == nil {
			return nil, notConfigured()
		}
		p, ok := o.openPending(ctx, "oidc-login", in.Pending)
		if !ok || subtle.ConstantTimeCompare([]byte(p.State), []byte(in.State)) != 1 || !localPath(p.ReturnTo) {
			_ = recordAuthDetails(ctx, o, "anonymous", "auth.login", "denied", "auth.oidc_state", map[string]string{"via": "oidc"})
			return nil, NewError(http.StatusBadRequest, "auth.oidc_state", "this login was not started here, or took longer than 10 minutes: start again at /v1/auth/oidc/login")
		}
		if in.Error != "" {
			_ = recordAuthDetails(ctx, o, "anonymous", "auth.login", "denied", "auth.oidc_denied", map[string]string{"via": "oidc", "error": in.Error})
			return nil, NewError(http.StatusUnauthorized, "auth.oidc_denied", "the OpenID provider did not log you in")
		}
		claims, refresh, err := o.OIDC.Exchange(ctx, in.Code, p.Verifier, p.Nonce)
		tok, sess, err := o.oidcLogin(ctx, claims, refresh, err)
		if err != nil {
			return nil, err
		}
		session := &http.Cookie{Name: SessionCookie, Value: tok.Reveal(), Path: "/", Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode, Expires: sess.Expires}
		gone := &http.Cookie{Name: OIDCCookie, Value: "", Path: "/v1/auth/oidc/", MaxAge: -1, Secure: true, HttpOnly: true, SameSite: http.SameSiteLaxMode}
		// A page that moves on by itself rather than a redirect: a browser does not send a
		// SameSite=Strict cookie along a redirect chain that began at another site (the
		// provider), so the landing page would look logged out; the page's own navigation is
		// same-site.
		to := html.EscapeString(p.ReturnTo)
		body := "<!doctype html><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"0;url=" + to + "\"><title>Logged in</title>" +
			"<p>Logged in. <a href=\"" + to + "\">Continue</a></p>\n"
		return &landingOutput{ContentType: "text/html; charset=utf-8", CacheControl: "no-store", SetCookie: []string{session.String(), gone.String()}, Body: []byte(body)}, nil
	})

	register(g, hapi, Route{Action: Public}, huma.Operation{
		OperationID: "oidc-device", Method: http.MethodPost, Path: "/v1/auth/oidc/device", Tags: tags,
		Summary: "Single sign-on for the CLI: starts a device login (open the address, approve the code), finished by oidc/device/token",
		Errors:  []int{http.StatusConflict, http.StatusServiceUnavailable},
	}, nil, func(ctx context.Context, _ *caller, _ *struct{}) (*deviceStartOutput, error) {
		if o.OIDC == nil {
			return nil, notConfigured()
		}
		da, err := o.OIDC.DeviceAuth(ctx)
		if err != nil {
			o.Logger.Error("single sign-on: device login could not start", "error", err)
			return nil, NewError(http.StatusServiceUnavailable, "auth.directory_unavailable", "the OpenID provider cannot start a device login; try again later")
		}
		exp := da.Expiry
		if exp.IsZero() {
			exp = o.now().Add(10 * time.Minute)
		}
		handle, err := o.sealPending(ctx, "oidc-device", oidcPending{DeviceCode: da.DeviceCode, Interval: da.Interval, Expires: exp})
		if err != nil {
			return nil, internalError(o, "oidc device", err)
		}
		out := &deviceStartOutput{}
		b := &out.Body
		b.VerificationURI, b.VerificationURIComplete, b.UserCode = da.VerificationURI, da.VerificationURIComplete, da.UserCode
		b.ExpiresIn, b.Interval, b.Handle = int64(time.Until(exp).Seconds()), max(da.Interval, 1), handle
		return out, nil
	})

	register(g, hapi, Route{Action: Public}, huma.Operation{
		OperationID: "oidc-device-token", Method: http.MethodPost, Path: "/v1/auth/oidc/device/token", Tags: tags,
		Summary: "Finish a device login: waits up to 8 s (longer if the provider asks for a longer interval) for the approval; 428 auth.pending means ask again",
		Errors:  []int{http.StatusBadRequest, http.StatusUnauthorized, http.StatusPreconditionRequired, http.StatusServiceUnavailable},
	}, nil, func(ctx context.Context, _ *caller, in *deviceTokenInput) (*loginOutput, error) {
		if o.OIDC == nil {
			return nil, notConfigured()
		}
		p, ok := o.openPending(ctx, "oidc-device", in.Body.Handle)
		if !ok || p.DeviceCode == "" {
			return nil, &Error{Status: http.StatusBadRequest, Code: "auth.oidc_state", Message: "unknown or expired device login: start again",
				Details: []*ErrorDetail{{Location: "body.handle", Message: "not a handle from oidc/device, or expired"}}}
		}
		// One poll of the provider at a time per device code, and a bounded number in all:
		// the route is public, and each poll uses Penstock's client at the provider.
		key := p.DeviceCode
		if _, busy := devicePolls.LoadOrStore(key, struct{}{}); busy {
			return nil, NewError(http.StatusPreconditionRequired, "auth.pending", "not approved yet: ask again")
		}
		defer devicePolls.Delete(key)
		select {
		case devicePollSlots <- struct{}{}:
			defer func() { <-devicePollSlots }()
		default:
			return nil, NewError(http.StatusTooManyRequests, "rate_limited", "too many device logins waiting: ask again in a few seconds")
		}
		// Long enough for one poll after the provider's interval, short of the CLI's timeout.
		wait := min(max(8*time.Second, time.Duration(p.Interval+2)*time.Second), 25*time.Second, time.Until(p.Expires))
		wctx, cancel := context.WithTimeout(ctx, wait)
		defer cancel()
		claims, refresh, err := o.OIDC.DeviceToken(wctx, p.DeviceCode, p.Interval)
		if errors.Is(err, directory.ErrPending) {
			return nil, NewError(http.StatusPreconditionRequired, "auth.pending", "not approved yet: ask again")
		}
		tok, sess, err := o.oidcLogin(ctx, claims, refresh, err)
		if err != nil {
			return nil, err
		}
		out := &loginOutput{}
		out.Body.Token, out.Body.Expires = tok.Reveal(), sess.Expires
		out.Body.MustEnrolMFA = o.Identity.MFARequired(sess.User) && !sess.MFA
		return out, nil
	})
}

// oidcLogin makes the session for a login the OpenID provider vouched for, and audits it.
func (o Options) oidcLogin(ctx context.Context, claims directory.Claims, refresh string, err error) (redact.Secret, identity.Session, error) {
	via := map[string]string{"via": "oidc"}
	actor := "anonymous"
	var (
		tok  redact.Secret
		sess identity.Session
	)
	if err == nil {
		actor = "user:" + claims.Name
		tok, sess, err = o.Identity.LoginOIDC(ctx, claims, refresh, o.Directory)
	}
	switch {
	case err == nil:
		if aerr := recordAuthDetails(ctx, o, actor, "auth.login", "ok", "", via); aerr != nil {
			_ = o.Identity.Logout(ctx, tok.Reveal())
			return redact.Secret{}, identity.Session{}, NewError(http.StatusServiceUnavailable, "audit.unavailable", "the audit log cannot be written, so the login was not made")
		}
		return tok, sess, nil
	case errors.Is(err, directory.ErrUnavailable), errors.Is(err, directory.ErrUnreadable), errors.Is(err, identity.ErrDirectoryUnavailable):
		o.Logger.Error("single sign-on failed: the OpenID provider", "error", err)
		_ = recordAuthDetails(ctx, o, actor, "auth.login", "denied", "auth.directory_unavailable", via)
		return redact.Secret{}, identity.Session{}, NewError(http.StatusServiceUnavailable, "auth.directory_unavailable", "the OpenID provider cannot be reached; try again later")
	default:
		o.Logger.Info("single sign-on refused", "error", err)
		_ = recordAuthDetails(ctx, o, actor, "auth.login", "denied", "auth.invalid_credentials", via)
		return redact.Secret{}, identity.Session{}, NewError(http.StatusUnauthorized, "auth.invalid_credentials", "the single sign-on login was refused")
	}
}
