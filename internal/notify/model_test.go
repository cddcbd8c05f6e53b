package notify

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/penstock/penstock/internal/redact"
)

func TestRuleErrorsNameTheField(t *testing.T) {
	ok := func() Rule { return Rule{Name: "r", Event: "queue.depth", Threshold: 10, Channels: []string{"mail"}} }
	for _, tc := range []struct {
		change func(*Rule)
		field  string
	}{
		{func(r *Rule) { r.Name = "Bad Name" }, "name"},
		{func(r *Rule) { r.Event = "queue.nope" }, "event"},
		{func(r *Rule) { r.Event = "data.damaged" }, "event"}, // platform only
		{func(r *Rule) { r.Tenant = "acme" }, "tenant"},       // platform rules only
		{func(r *Rule) { r.Resource = "[" }, "resource"},
		{func(r *Rule) { r.Threshold = -1 }, "threshold"},
		{func(r *Rule) { r.Window = "5 minutes" }, "window"},
		{func(r *Rule) { r.Window = "100ms" }, "window"},
		{func(r *Rule) { r.For = "-1s" }, "for"},
		{func(r *Rule) { r.Severity = "urgent" }, "severity"},
		{func(r *Rule) { r.Channels = nil }, "channels"},
		{func(r *Rule) { r.Channels = []string{"ok", "../x"} }, "channels[1]"},
		{func(r *Rule) { r.Escalate = []Step{{After: "0s", Channels: []string{"sms"}}} }, "escalate[0].after"},
		{func(r *Rule) {
			r.Escalate = []Step{{After: "10m", Channels: []string{"sms"}}, {After: "5m", Channels: []string{"call"}}}
		}, "escalate[1].after"},
		{func(r *Rule) { r.Escalate = []Step{{After: "10m"}} }, "escalate[0].channels"},
	} {
		r := ok()
		tc.change(&r)
		err := r.Normalize(false)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), ": "+tc.field+": ") {
			t.Errorf("%+v: got %v, want an error naming %s", r, err, tc.field)
		}
	}
	r := ok()
	if err := r.Normalize(false); err != nil || r.window != 5*time.Minute || r.Severity != "warning" {
		t.Fatalf("defaults: %v %+v", err, r)
	}
	p := Rule{Name: "p", Event: "data.damaged", Tenant: "ac*", Channels: []string{"ops"}}
	if err := p.Normalize(true); err != nil {
		t.Fatalf("platform rule: %v", err)
	}
}

func TestChannelErrorsNameTheField(t *testing.T) {
	mail := func() Channel {
		return Channel{Spec: Spec{Name: "m", Type: Email, SMTPHost: "smtp.example.com", Username: "u", From: "a@example.com",
			To: []string{"b@example.com"}}, Password: redact.NewSecret("p")}
	}
	for _, tc := range []struct {
		c     func() Channel
		field string
	}{
		{func() Channel { c := mail(); c.Type = "pager"; return c }, "type"},
		{func() Channel { c := mail(); c.SMTPHost = "smtp.example.com:25"; return c }, "smtp_host"},
		{func() Channel { c := mail(); c.TLS = "none"; return c }, "tls"},
		{func() Channel { c := mail(); c.Password = redact.Secret{}; return c }, "password"},
		{func() Channel { c := mail(); c.From = "x\r\nBcc: evil@example.com"; return c }, "from"},
		{func() Channel { c := mail(); c.To = []string{"ok@example.com", "a@b\nBcc: c@d"}; return c }, "to[1]"},
		{func() Channel { c := mail(); c.CAPEM = "not a certificate"; return c }, "ca_pem"},
		{func() Channel {
			return Channel{Spec: Spec{Name: "s", Type: SMS, AccountSID: "AC1", From: "+15550001111", To: []string{"5550002222"}},
				AuthToken: redact.NewSecret("t")}
		}, "to[0]"},
		{func() Channel { return Channel{Spec: Spec{Name: "s", Type: SMS, AccountSID: "AC1"}} }, "auth_token"},
		{func() Channel { return Channel{Spec: Spec{Name: "w", Type: Webhook}, URL: redact.NewSecret("ftp://x")} }, "url"},
		{func() Channel {
			return Channel{Spec: Spec{Name: "w", Type: Webhook}, URL: redact.NewSecret("https://user:pw@example.com/")}
		}, "url"},
		{func() Channel {
			return Channel{Spec: Spec{Name: "w", Type: Webhook}, URL: redact.NewSecret("https://example.com/"), Secret: redact.NewSecret("short")}
		}, "secret"},
	} {
		c := tc.c()
		err := c.Normalize()
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), ": "+tc.field+": ") {
			t.Errorf("%s: got %v, want an error naming %s", tc.field, err, tc.field)
		}
		if err != nil && (strings.Contains(err.Error(), "user:pw") || strings.Contains(err.Error(), "short")) {
			t.Errorf("an error repeats a credential: %v", err)
		}
	}
	c := mail()
	if err := c.Normalize(); err != nil || c.SMTPPort != 587 || c.TLS != "starttls" || c.PerHour != 60 {
		t.Fatalf("defaults: %v %+v", err, c.Spec)
	}
}

// A channel's credentials survive the sealed form and never its view; a put that leaves them
// out keeps the stored ones, unless the type changed.
func TestChannelCredentialsStayInside(t *testing.T) {
	c := Channel{Spec: Spec{Name: "w", Type: Webhook}, URL: redact.NewSecret("https://hooks.example.com/T0/SECRET-PATH"),
		Secret: redact.NewSecret("0123456789abcdef-key")}
	back := c.stored().channel()
	if back.URL.Reveal() != c.URL.Reveal() || back.Secret.Reveal() != c.Secret.Reveal() {
		t.Fatal("credentials lost in the sealed form")
	}
	v := c.View()
	if s := strings.Join(v.Set, ","); s != "secret,url" {
		t.Fatalf("credentials_set = %s", s)
	}
	upd := Channel{Spec: Spec{Name: "w", Type: Webhook, PerHour: 10}}
	upd.keep(c)
	if upd.URL.Reveal() != c.URL.Reveal() || upd.Secret.Reveal() != c.Secret.Reveal() {
		t.Fatal("a put without credentials lost the stored ones")
	}
	other := Channel{Spec: Spec{Name: "w", Type: Slack}}
	other.keep(c)
	if !other.URL.IsZero() {
		t.Fatal("a channel of another type took the old credentials")
	}
	moved := Channel{Spec: Spec{Name: "w", Type: Webhook}, URL: redact.NewSecret("https://attacker.example.com/")}
	moved.keep(c)
	if !moved.Secret.IsZero() {
		t.Fatal("a webhook sent elsewhere kept the signing secret")
	}

	// Whoever may change a channel must not redirect its stored password: a new server, port,
	// TLS mode, user, provider, account or authority needs the credentials again.
	mail := Channel{Spec: Spec{Name: "m", Type: Email, SMTPHost: "smtp.example.com", Username: "u", From: "a@example.com",
		To: []string{"b@example.com"}}, Password: redact.NewSecret("smtp-password")}
	if err := mail.Normalize(); err != nil {
		t.Fatal(err)
	}
	for name, change := range map[string]func(*Channel){
		"smtp_host": func(c *Channel) { c.SMTPHost = "smtp.attacker.example" },
		"smtp_port": func(c *Channel) { c.SMTPPort = 2525 },
		"tls":       func(c *Channel) { c.TLS = "tls"; c.SMTPPort = 465 },
		"username":  func(c *Channel) { c.Username = "other" },
		"ca_pem":    func(c *Channel) { c.CAPEM = "x" },
	} {
		upd := Channel{Spec: mail.Spec}
		change(&upd)
		upd.keep(mail)
		if !upd.Password.IsZero() {
			t.Errorf("a change of %s kept the stored password", name)
		}
	}
	same := Channel{Spec: mail.Spec}
	same.To = []string{"c@example.com"}
	same.keep(mail)
	if same.Password.Reveal() != "smtp-password" {
		t.Fatal("a change of recipients lost the stored password")
	}
	// The same file put again, defaults left out as they were the first time.
	again := Channel{Spec: Spec{Name: "m", Type: Email, SMTPHost: "smtp.example.com", Username: "u", From: "a@example.com",
		To: []string{"b@example.com"}}}
	again.keep(mail)
	if err := again.Normalize(); err != nil || again.Password.Reveal() != "smtp-password" {
		t.Fatalf("the same channel put again without its password: %v", err)
	}
	sms := Channel{Spec: Spec{Name: "s", Type: SMS, BaseURL: "https://api.twilio.com", AccountSID: "AC1"}, AuthToken: redact.NewSecret("tok")}
	for _, spec := range []Spec{{Name: "s", Type: SMS, BaseURL: "https://evil.example.com", AccountSID: "AC1"},
		{Name: "s", Type: SMS, BaseURL: "https://api.twilio.com", AccountSID: "AC2"}} {
		upd := Channel{Spec: spec}
		upd.keep(sms)
		if !upd.AuthToken.IsZero() {
			t.Errorf("%+v kept the auth token", spec)
		}
	}
}

// The mail's headers come from checked addresses and names only: nothing in an alert starts
// a header of its own.
func TestMailHeadersHoldNoLineBreaks(t *testing.T) {
	c := Channel{Spec: Spec{Type: Email, From: "Penstock <alerts@example.com>", To: []string{"ops@example.com"}}}
	a := &Alert{ID: "a-0123456789abcdef", Tenant: "acme", Rule: "r", Event: "queue.depth", Resource: "production/app/q\r\nBcc: x@y",
		Severity: "warning", State: Firing, Opened: time.Now(), Unit: "messages"}
	b := string(mailBody(c, message{alert: a, kind: Raised, seq: 1}))
	head, _, _ := strings.Cut(b, "\r\n\r\n")
	for _, line := range strings.Split(head, "\r\n") {
		if strings.HasPrefix(line, "Bcc") {
			t.Fatalf("a header was injected:\n%s", head)
		}
	}
}

func TestSignature(t *testing.T) {
	// HMAC-SHA256("key", "1700000000.{}"), computed independently: printf '1700000000.{}' | openssl dgst -sha256 -hmac key.
	got := Signature([]byte("key"), "1700000000", []byte("{}"))
	if got != "v1=9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae" {
		t.Fatalf("signature %s", got)
	}
	if Signature([]byte("key"), "1700000000", []byte("{ }")) == got || Signature([]byte("key"), "1700000001", []byte("{}")) == got {
		t.Fatal("the signature does not cover the body and the timestamp")
	}
}

func TestOccurrenceAndLevelMatching(t *testing.T) {
	r := Rule{Name: "r", Event: "queue.depth", Environment: "production", Resource: "production/*/orders", Threshold: 100, Channels: []string{"c"}}
	if err := r.Normalize(false); err != nil {
		t.Fatal(err)
	}
	k, _ := KindOf("queue.depth")
	in := Event{Kind: "queue.depth", Environment: "production", Resource: "production/shop/orders"}
	if !r.matches(in) || r.matches(Event{Kind: "queue.depth", Environment: "staging", Resource: "staging/shop/orders"}) ||
		r.matches(Event{Kind: "queue.oldest_age", Environment: "production", Resource: "production/shop/orders"}) {
		t.Fatal("matching")
	}
	if r.over(k, 99) || !r.over(k, 100) {
		t.Fatal("threshold")
	}
	exp := Rule{Name: "e", Event: "cert.expiring", Threshold: 14, Channels: []string{"c"}}
	ek, _ := KindOf("cert.expiring")
	if !exp.over(ek, 14) || exp.over(ek, 15) {
		t.Fatal("a below kind alerts at or under its threshold")
	}
}

func TestOpensPerHourAreBounded(t *testing.T) {
	s := &Service{opens: map[string]openCount{}}
	now := time.Now()
	for i := range maxOpensPerHour {
		if !s.mayOpen("acme", now.Add(time.Duration(i)*time.Millisecond)) {
			t.Fatalf("open %d refused", i)
		}
	}
	if s.mayOpen("acme", now.Add(time.Second)) {
		t.Fatal("open past the hour's bound allowed")
	}
	if !s.mayOpen("globex", now) {
		t.Fatal("another owner is bounded by acme's opens")
	}
	if !s.mayOpen("acme", now.Add(time.Hour)) {
		t.Fatal("a new hour still refused")
	}
}
