package api

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/penstock/penstock/internal/authz"
	"github.com/penstock/penstock/internal/identity"
	"github.com/penstock/penstock/internal/signing"
)

// SessionCookie carries a browser's session token: Secure, HttpOnly, SameSite=Strict.
const SessionCookie = "penstock_session"

// caller is who made a request, as the authentication middleware found it.
type caller struct {
	principal authz.Principal
	source    netip.Addr
	user      string // for sessions
	token     string // the session token, for logout
	// restricted holds why a session may do nothing but fix its account: "password" (must
	// change it) or "mfa" (must enrol a second factor).
	restricted string
}

type callerKey struct{}

func callerFrom(ctx context.Context) (*caller, bool) {
	c, ok := ctx.Value(callerKey{}).(*caller)
	return c, ok
}

// authenticate finds the caller of a /v1/ request from, in order: a signed request, an API
// key, a session token (bearer or cookie). A request with none goes on unauthenticated: the
// route decides (only public routes accept it). A request with a credential that does not
// hold is refused here, with no hint of which part failed.
func authenticate(next http.Handler, o Options, mux *http.ServeMux, public map[string]bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/v1/") {
			next.ServeHTTP(w, r)
			return
		}
		src, _ := netip.ParseAddrPort(r.RemoteAddr)
		c, err := findCaller(w, r, o, src.Addr().Unmap())
		if err != nil {
			var tooLarge *http.MaxBytesError
			if errors.As(err, &tooLarge) {
				writeError(w, NewError(http.StatusRequestEntityTooLarge, "body_too_large", "request body exceeds the limit"))
				return
			}
			o.Logger.Info("authentication refused", "path", r.URL.Path, "reason", err.Error())
			code, msg := "unauthenticated", "invalid or expired credentials"
			defer func() {
				if aerr := recordAuth(r.Context(), o, "anonymous", "auth.authenticate", "denied", code); aerr != nil {
					o.Logger.Error("audit log: refused credential not recorded", "error", aerr)
				}
			}()
			switch {
			case errors.Is(err, signing.ErrSkew):
				code, msg = "auth.clock_skew", err.Error()
			case errors.Is(err, signing.ErrReplay):
				code, msg = "auth.replay", err.Error()
			case errors.Is(err, signing.ErrMalformed):
				code, msg = "auth.malformed_signature", err.Error()
			}
			w.Header().Set("WWW-Authenticate", `Bearer realm="penstock"`)
			writeError(w, NewError(http.StatusUnauthorized, code, msg))
			return
		}
		if c == nil {
			// Refuse before the body is even parsed, unless the route is public or unknown
			// (unknown routes answer 401 too, so they reveal nothing).
			if _, pattern := mux.Handler(r); !public[pattern] {
				w.Header().Set("WWW-Authenticate", `Bearer realm="penstock"`)
				writeError(w, NewError(http.StatusUnauthorized, "unauthenticated", "credentials are required"))
				return
			}
			next.ServeHTTP(w, r)
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), callerKey{}, c)))
	})
}

func findCaller(w http.ResponseWriter, r *http.Request, o Options, src netip.Addr) (*caller, error) {
	id := o.Identity
	h := r.Header.Get("Authorization")
	if p, ok, err := signing.Parse(h); ok {
		if err != nil {
			return nil, err
		}
		if err := signing.Precheck(r, o.now()); err != nil {
			return nil, err
		}
		k, key, err := id.KeyForSignature(r.Context(), p.ID, src)
		if err != nil {
			return nil, err
		}
		body, err := io.ReadAll(r.Body) // bounded by the edge's body limit
		if err != nil {
			return nil, err
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		if err := signing.Verify(r.Context(), r, p, key, body, o.now(), o.Nonces); err != nil {
			return nil, err
		}
		id.TouchAPIKey(r.Context(), k.ID)
		return &caller{principal: identity.KeyPrincipal(k), source: src}, nil
	}
	token, bearer := strings.CutPrefix(h, "Bearer ")
	if bearer && strings.HasPrefix(token, "psk_") {
		k, err := id.VerifyAPIKey(token, src)
		if err != nil {
			return nil, err
		}
		id.TouchAPIKey(r.Context(), k.ID)
		return &caller{principal: identity.KeyPrincipal(k), source: src}, nil
	}
	if !bearer {
		if ck, err := r.Cookie(SessionCookie); err == nil {
			token, bearer = ck.Value, true
		}
	}
	if !bearer {
		if h != "" {
			return nil, identity.ErrUnauthenticated
		}
		return nil, nil
	}
	sess, err := id.Session(r.Context(), token)
	if err != nil {
		return nil, err
	}
	c := &caller{principal: id.Principal("user:" + sess.User), source: src, user: sess.User, token: token}
	u, _ := id.User(sess.User)
	switch {
	case u.MustChange:
		c.restricted = "password"
	case id.MFARequired(sess.User) && !sess.MFA:
		c.restricted = "mfa"
	}
	return c, nil
}

func (o Options) now() time.Time {
	if o.Now != nil {
		return o.Now()
	}
	return time.Now()
}
