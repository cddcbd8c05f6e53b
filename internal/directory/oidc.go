package directory

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"

	"github.com/penstock/penstock/internal/config"
)

// GroupPrefixOIDC marks a group named by an OpenID provider (mappings name it so:
// "owner@acme=oidc:acme-owners"); such names are compared exactly.
const GroupPrefixOIDC = "oidc:"

// ErrPending means a device login has not been approved yet.
var ErrPending = errors.New("the login is not approved yet")

// Claims is what Penstock takes from an OpenID Connect login.
type Claims struct {
	Name    string   // from the username claim, lower case
	Subject string   // the issuer and the subject: the user for good
	Groups  []string // from the groups claim
	MFA     bool     // amr says a second factor was used, and the configuration trusts it
}

// OIDC is an OpenID Connect relying party: Penstock's client at one issuer. The issuer's
// discovery document and keys are fetched on first use (and again while they fail); its keys
// are fetched again whenever a token is signed with a key not seen before (rotation).
type OIDC struct {
	cfg    config.OIDC
	client *http.Client
	mu     sync.Mutex
	prov   *oidc.Provider
	verify *oidc.IDTokenVerifier
	oauth  oauth2.Config
}

// NewOIDC checks the configuration; the issuer is asked on first use.
func NewOIDC(cfg config.OIDC) (*OIDC, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("directory.oidc.ca_file: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("directory.oidc.ca_file: no PEM certificate in %s", cfg.CAFile)
		}
	}
	return &OIDC{cfg: cfg, client: &http.Client{Timeout: cfg.Timeout, Transport: &http.Transport{TLSClientConfig: tc}}}, nil
}

func (o *OIDC) ctx(ctx context.Context) context.Context { return oidc.ClientContext(ctx, o.client) }

// provider discovers the issuer once it answers.
func (o *OIDC) provider(ctx context.Context) (*oidc.Provider, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.prov != nil {
		return o.prov, nil
	}
	p, err := oidc.NewProvider(o.ctx(ctx), o.cfg.Issuer)
	if err != nil {
		return nil, fmt.Errorf("%w: OpenID provider %s: %v", ErrUnavailable, o.cfg.Issuer, err)
	}
	o.prov = p
	// Keys are fetched with a context of their own (the request's may end first).
	o.verify = p.VerifierContext(oidc.ClientContext(context.Background(), o.client), &oidc.Config{ClientID: o.cfg.ClientID})
	o.oauth = oauth2.Config{ClientID: o.cfg.ClientID, ClientSecret: o.cfg.ClientSecret.Reveal(), Endpoint: p.Endpoint(),
		RedirectURL: o.cfg.RedirectURL, Scopes: o.cfg.Scopes}
	return p, nil
}

// AuthURL is where the browser goes to log in: the authorization code flow with PKCE (S256),
// state and nonce.
func (o *OIDC) AuthURL(ctx context.Context, state, nonce, verifier string) (string, error) {
	if _, err := o.provider(ctx); err != nil {
		return "", err
	}
	return o.oauth.AuthCodeURL(state, oidc.Nonce(nonce), oauth2.S256ChallengeOption(verifier)), nil
}

// Exchange trades the code for tokens and checks the ID token: signature (the issuer's keys),
// issuer, audience, expiry and the nonce of this login. It returns the claims and the refresh
// token (empty if the issuer gave none).
func (o *OIDC) Exchange(ctx context.Context, code, verifier, nonce string) (Claims, string, error) {
	if _, err := o.provider(ctx); err != nil {
		return Claims{}, "", err
	}
	tok, err := o.oauth.Exchange(o.ctx(ctx), code, oauth2.VerifierOption(verifier))
	if err != nil {
		return Claims{}, "", o.tokenError(err)
	}
	return o.claims(ctx, tok, nonce)
}

// DeviceAuth starts a device login (for the CLI): the user opens the verification address on
// any device and approves the code.
func (o *OIDC) DeviceAuth(ctx context.Context) (*oauth2.DeviceAuthResponse, error) {
	if _, err := o.provider(ctx); err != nil {
		return nil, err
	}
	if o.oauth.Endpoint.DeviceAuthURL == "" {
		return nil, fmt.Errorf("%w: the OpenID provider offers no device authorization", ErrUnreadable)
	}
	// The device endpoint takes the client's credentials in the form (client_secret_post).
	da, err := o.oauth.DeviceAuth(o.ctx(ctx), oauth2.SetAuthURLParam("client_secret", o.cfg.ClientSecret.Reveal()))
	if err != nil {
		return nil, o.tokenError(err)
	}
	return da, nil
}

// DeviceToken waits (until ctx ends) for the device login to be approved: ErrPending if it
// is not yet, ErrInvalidCredentials if it was denied or expired.
func (o *OIDC) DeviceToken(ctx context.Context, deviceCode string, interval int64) (Claims, string, error) {
	if _, err := o.provider(ctx); err != nil {
		return Claims{}, "", err
	}
	tok, err := o.oauth.DeviceAccessToken(o.ctx(ctx), &oauth2.DeviceAuthResponse{DeviceCode: deviceCode, Interval: interval})
	if err != nil {
		if ctx.Err() != nil {
			return Claims{}, "", ErrPending
		}
		return Claims{}, "", o.tokenError(err)
	}
	return o.claims(ctx, tok, "")
}

// Refresh gets a new ID token with the refresh token: the user's groups as the issuer says
// now. ErrNotFound if the issuer no longer honours it (the user removed or disabled there).
func (o *OIDC) Refresh(ctx context.Context, refresh string) (Claims, string, error) {
	if _, err := o.provider(ctx); err != nil {
		return Claims{}, "", err
	}
	tok, err := o.oauth.TokenSource(o.ctx(ctx), &oauth2.Token{RefreshToken: refresh, Expiry: time.Unix(1, 0)}).Token()
	if err != nil {
		var re *oauth2.RetrieveError
		if errors.As(err, &re) && re.ErrorCode == "invalid_grant" {
			return Claims{}, "", ErrNotFound
		}
		return Claims{}, "", o.tokenError(err)
	}
	c, next, err := o.claims(ctx, tok, "")
	if next == "" {
		next = refresh
	}
	return c, next, err
}

// tokenError sorts an error of the token endpoint: a refusal of the grant is a failed login,
// anything else the issuer's trouble.
func (o *OIDC) tokenError(err error) error {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) && re.ErrorCode != "" {
		switch re.ErrorCode {
		case "authorization_pending", "slow_down":
			return ErrPending
		case "invalid_grant", "access_denied", "expired_token", "invalid_request":
			return ErrInvalidCredentials
		}
		return fmt.Errorf("%w: OpenID provider refused: %s", ErrUnreadable, re.ErrorCode)
	}
	return fmt.Errorf("%w: OpenID provider %s: %v", ErrUnavailable, o.cfg.Issuer, err)
}

// claims verifies the ID token of tok and reads the claims Penstock uses.
func (o *OIDC) claims(ctx context.Context, tok *oauth2.Token, nonce string) (Claims, string, error) {
	raw, ok := tok.Extra("id_token").(string)
	if !ok || raw == "" {
		return Claims{}, "", fmt.Errorf("%w: the OpenID provider returned no ID token (is openid among directory.oidc.scopes?)", ErrUnreadable)
	}
	idt, err := o.verify.Verify(o.ctx(ctx), raw)
	if err != nil {
		return Claims{}, "", fmt.Errorf("%w: ID token: %v", ErrInvalidCredentials, err)
	}
	if nonce != "" && idt.Nonce != nonce {
		return Claims{}, "", fmt.Errorf("%w: ID token: nonce does not match this login", ErrInvalidCredentials)
	}
	var all map[string]any
	if err := idt.Claims(&all); err != nil {
		return Claims{}, "", fmt.Errorf("%w: ID token claims: %v", ErrUnreadable, err)
	}
	name, _ := all[o.cfg.UsernameClaim].(string)
	c := Claims{Subject: idt.Issuer + "#" + idt.Subject}
	if isASCII(name) {
		// Lower case folds some other letters onto ASCII ones (the Kelvin sign onto k):
		// only ASCII names are taken, so two names at the provider stay two here.
		c.Name = strings.ToLower(name)
	}
	// Groups keep the provider's spelling, under their own prefix: a group named like an
	// LDAP group's DN must not take that group's mappings.
	switch g := all[o.cfg.GroupsClaim].(type) {
	case []any:
		for _, v := range g {
			if s, ok := v.(string); ok && s != "" {
				c.Groups = append(c.Groups, GroupPrefixOIDC+s)
			}
		}
	case string:
		c.Groups = []string{GroupPrefixOIDC + g}
	}
	if o.cfg.TrustAMR {
		amr, _ := all["amr"].([]any)
		c.MFA = twoFactors(amr)
	}
	refresh, _ := tok.Extra("refresh_token").(string)
	if refresh == "" {
		refresh = tok.RefreshToken
	}
	return c, refresh, nil
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// twoFactors reports whether an amr claim (RFC 8176) says a second factor was used: "mfa", or
// a knowledge factor with a possession or inherence one. "otp" or "hwk" alone is one factor
// (a passwordless code, a key without a PIN).
func twoFactors(amr []any) bool {
	var know, other bool
	for _, v := range amr {
		switch s, _ := v.(string); s {
		case "mfa":
			return true
		case "pwd", "pin", "kba":
			know = true
		case "otp", "sms", "tel", "hwk", "swk", "sc", "fpt", "face", "iris", "retina", "vbm":
			other = true
		}
	}
	return know && other
}
