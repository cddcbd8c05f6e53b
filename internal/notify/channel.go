package notify

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/mail"
	"net/url"
	"regexp"
	"slices"
	"strings"

	"github.com/penstock/penstock/internal/redact"
)

// The channel types.
const (
	Email   = "email"   // SMTP, STARTTLS or implicit TLS, optional auth
	SMS     = "sms"     // a Twilio-compatible Messages API
	Voice   = "voice"   // a Twilio-compatible Calls API; the call reads a short text
	Slack   = "slack"   // a Slack-compatible incoming webhook
	Teams   = "teams"   // a Microsoft Teams incoming webhook (MessageCard)
	Webhook = "webhook" // JSON, signed with HMAC-SHA256 over the timestamp and the body
)

var channelTypes = []string{Email, SMS, Voice, Slack, Teams, Webhook}

// Spec is a channel's settings without its credentials.
type Spec struct {
	Name string `json:"name,omitempty" doc:"taken from the path"`
	Type string `json:"type" enum:"email,sms,voice,slack,teams,webhook"`

	// email
	SMTPHost string `json:"smtp_host,omitempty"`
	SMTPPort int    `json:"smtp_port,omitempty"`
	TLS      string `json:"tls,omitempty" enum:"starttls,tls,none," doc:"email: starttls (default), tls, or none (no credentials then)"`
	Username string `json:"username,omitempty"`

	// sms, voice
	BaseURL    string `json:"base_url,omitempty" doc:"sms, voice: the provider's API (default https://api.twilio.com)"`
	AccountSID string `json:"account_sid,omitempty"`

	// email, sms, voice
	From string   `json:"from,omitempty"`
	To   []string `json:"to,omitempty"`

	// CAPEM trusts a private authority for this channel's TLS, beside the system's roots.
	CAPEM string `json:"ca_pem,omitempty"`
	// PerHour bounds notices sent through the channel (default 60); the others wait.
	PerHour int `json:"per_hour,omitempty"`
}

// Credentials are a channel's secrets as they come in; Channel keeps them as redact.Secret.
type Credentials struct {
	Password  string `json:"password,omitempty" writeOnly:"true" doc:"email: the SMTP password"`
	AuthToken string `json:"auth_token,omitempty" writeOnly:"true" doc:"sms, voice: the provider's auth token"`
	URL       string `json:"url,omitempty" writeOnly:"true" doc:"slack, teams, webhook: where to post (a chat webhook's URL holds its token)"`
	Secret    string `json:"secret,omitempty" writeOnly:"true" doc:"webhook: the HMAC-SHA256 key the receiver checks signatures with"`
}

// Input is a channel as the API and the CLI take it.
type Input struct {
	Spec
	Credentials
}

// Channel is where notices go, with its credentials. It is stored sealed with the tenant's
// data key (the platform's for platform channels); the credentials never leave the process
// (View shows which are set).
type Channel struct {
	Spec
	Password, AuthToken, URL, Secret redact.Secret
}

// Channel turns the input's credentials into secrets.
func (in Input) Channel() Channel {
	return Channel{Spec: in.Spec, Password: redact.NewSecret(in.Password), AuthToken: redact.NewSecret(in.AuthToken),
		URL: redact.NewSecret(in.URL), Secret: redact.NewSecret(in.Secret)}
}

// stored is the sealed form of a channel.
type stored struct {
	Spec
	Creds map[string]string `json:"creds,omitempty"`
}

func (c Channel) secrets() map[string]*redact.Secret {
	return map[string]*redact.Secret{"password": &c.Password, "auth_token": &c.AuthToken, "url": &c.URL, "secret": &c.Secret}
}

func (c Channel) stored() stored {
	st := stored{Spec: c.Spec, Creds: map[string]string{}}
	for k, v := range c.secrets() {
		if !v.IsZero() {
			st.Creds[k] = v.Reveal()
		}
	}
	return st
}

func (st stored) channel() Channel {
	c := Channel{Spec: st.Spec}
	for k, v := range map[string]*redact.Secret{"password": &c.Password, "auth_token": &c.AuthToken, "url": &c.URL, "secret": &c.Secret} {
		*v = redact.NewSecret(st.Creds[k])
	}
	return c
}

// View is a channel as the API shows it: its settings, and which credentials are set.
type View struct {
	Spec
	// Set lists the credentials that are stored (their values are never shown).
	Set []string `json:"credentials_set"`
}

// View hides the credentials.
func (c Channel) View() View {
	v := View{Spec: c.Spec, Set: []string{}}
	for name, s := range c.secrets() {
		if !s.IsZero() {
			v.Set = append(v.Set, name)
		}
	}
	slices.Sort(v.Set)
	return v
}

// keep takes from old the credentials c leaves out, so a change need not repeat them, but only
// if c still sends them to the same place: a change of server, provider, account or trusted
// authority needs the credentials again, or whoever may change a channel could redirect its
// stored password to a server of their own.
func (c *Channel) keep(old Channel) {
	c.defaults() // old is stored with its defaults filled
	if c.Type != old.Type || c.SMTPHost != old.SMTPHost || c.SMTPPort != old.SMTPPort || c.TLS != old.TLS ||
		c.Username != old.Username || c.BaseURL != old.BaseURL || c.AccountSID != old.AccountSID || c.CAPEM != old.CAPEM {
		return
	}
	if !c.URL.IsZero() && !c.URL.Equal(old.URL) {
		return // a webhook's secret signs for the receiver it was given for
	}
	for _, p := range []struct{ dst, src *redact.Secret }{{&c.Password, &old.Password}, {&c.AuthToken, &old.AuthToken},
		{&c.URL, &old.URL}, {&c.Secret, &old.Secret}} {
		if p.dst.IsZero() {
			*p.dst = *p.src
		}
	}
}

var phonePattern = regexp.MustCompile(`^\+[1-9][0-9]{6,14}$`)

// defaults fills what a channel may leave out.
func (c *Channel) defaults() {
	if c.PerHour == 0 {
		c.PerHour = 60
	}
	switch c.Type {
	case Email:
		if c.TLS == "" {
			c.TLS = "starttls"
		}
		if c.SMTPPort == 0 {
			c.SMTPPort = map[string]int{"starttls": 587, "tls": 465, "none": 25}[c.TLS]
		}
	case SMS, Voice:
		if c.BaseURL == "" {
			c.BaseURL = "https://api.twilio.com"
		}
	}
}

// Normalize fills defaults and checks the channel, naming the field at fault.
func (c *Channel) Normalize() error {
	if !validName(c.Name) {
		return invalid("name", "%q: 1-63 of a-z, 0-9 and -, starting with a letter or digit", c.Name)
	}
	if !slices.Contains(channelTypes, c.Type) {
		return invalid("type", "%q: one of %s", c.Type, strings.Join(channelTypes, ", "))
	}
	c.defaults()
	if c.PerHour < 1 || c.PerHour > 100000 {
		return invalid("per_hour", "between 1 and 100000")
	}
	if c.CAPEM != "" && !x509.NewCertPool().AppendCertsFromPEM([]byte(c.CAPEM)) {
		return invalid("ca_pem", "no PEM certificate in it")
	}
	if len(c.To) > 20 {
		return invalid("to", "at most 20 recipients")
	}
	switch c.Type {
	case Email:
		return c.normalizeEmail()
	case SMS, Voice:
		if err := checkURL("base_url", c.BaseURL); err != nil {
			return err
		}
		if c.AccountSID == "" || len(c.AccountSID) > 64 || !regexp.MustCompile(`^[A-Za-z0-9]+$`).MatchString(c.AccountSID) {
			return invalid("account_sid", "required: letters and digits")
		}
		if c.AuthToken.IsZero() {
			return invalid("auth_token", "required")
		}
		if !phonePattern.MatchString(c.From) {
			return invalid("from", "a phone number in E.164 form (+15551234567)")
		}
		if len(c.To) == 0 {
			return invalid("to", "at least one phone number")
		}
		for i, n := range c.To {
			if !phonePattern.MatchString(n) {
				return invalid(fmt.Sprintf("to[%d]", i), "a phone number in E.164 form (+15551234567)")
			}
		}
	case Slack, Teams, Webhook:
		if c.URL.IsZero() {
			return invalid("url", "required")
		}
		if err := checkURL("url", c.URL.Reveal()); err != nil {
			return err
		}
		if c.Type == Webhook && len(c.Secret.Reveal()) < 16 {
			return invalid("secret", "required: at least 16 characters (the receiver checks the signature with it)")
		}
	}
	return nil
}

func (c *Channel) normalizeEmail() error {
	if c.SMTPHost == "" || len(c.SMTPHost) > 253 || strings.ContainsAny(c.SMTPHost, "/ :@") {
		return invalid("smtp_host", "required: a host name or address")
	}
	if !slices.Contains([]string{"starttls", "tls", "none"}, c.TLS) {
		return invalid("tls", "%q: starttls, tls or none", c.TLS)
	}
	if c.SMTPPort < 1 || c.SMTPPort > 65535 {
		return invalid("smtp_port", "between 1 and 65535")
	}
	if c.TLS == "none" && (c.Username != "" || !c.Password.IsZero()) {
		return invalid("tls", "none sends credentials in the clear: use starttls or tls with a username")
	}
	if c.Username != "" && c.Password.IsZero() || c.Username == "" && !c.Password.IsZero() {
		return invalid("password", "username and password go together")
	}
	if _, err := mail.ParseAddress(c.From); err != nil || strings.ContainsAny(c.From, "\r\n") {
		return invalid("from", "an email address")
	}
	if len(c.To) == 0 {
		return invalid("to", "at least one email address")
	}
	for i, a := range c.To {
		if _, err := mail.ParseAddress(a); err != nil || strings.ContainsAny(a, "\r\n") {
			return invalid(fmt.Sprintf("to[%d]", i), "%q is not an email address", a)
		}
	}
	return nil
}

// checkURL accepts an http(s) URL without credentials in it (http only for what a platform
// admin allowed the tenant to reach: the egress policy decides at connect time).
func checkURL(field, s string) error {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil || len(s) > 2048 {
		return invalid(field, "an http(s):// URL without user information")
	}
	return nil
}

// tlsConfig trusts the system's roots and the channel's own authority, if any.
func (c Channel) tlsConfig(serverName string) *tls.Config {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName}
	if c.CAPEM != "" {
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		pool.AppendCertsFromPEM([]byte(c.CAPEM))
		tc.RootCAs = pool
	}
	return tc
}
