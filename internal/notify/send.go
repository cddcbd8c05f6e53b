package notify

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/mail"
	"net/smtp"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/penstock/penstock/internal/egress"
)

// sendTimeout bounds one attempt on any channel.
const sendTimeout = 30 * time.Second

// message is what a notice says, built from the alert alone.
type message struct {
	alert *Alert
	kind  string
	seq   int
	links links
}

// send delivers one notice through c, dialling through d. A nil error means the channel (the
// SMTP server, the provider, the receiver) accepted it.
func send(ctx context.Context, d *egress.Dialer, c Channel, m message) error {
	ctx, cancel := context.WithTimeout(ctx, sendTimeout)
	defer cancel()
	switch c.Type {
	case Email:
		return sendMail(ctx, d, c, m)
	case SMS, Voice:
		return sendProvider(ctx, d, c, m)
	case Slack, Teams:
		return sendChat(ctx, d, c, m)
	case Webhook:
		return sendWebhook(ctx, d, c, m)
	}
	return fmt.Errorf("channel type %q", c.Type)
}

func sendMail(ctx context.Context, d *egress.Dialer, c Channel, m message) error {
	addr := net.JoinHostPort(c.SMTPHost, strconv.Itoa(c.SMTPPort))
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	_ = conn.SetDeadline(deadline)
	// A shutdown (or a lost lease) cancels ctx: the conversation ends at once, not at its deadline.
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()
	if c.TLS == "tls" {
		tc := tls.Client(conn, c.tlsConfig(c.SMTPHost))
		if err := tc.HandshakeContext(ctx); err != nil {
			return fmt.Errorf("smtp tls: %w", err)
		}
		conn = tc
	}
	cl, err := smtp.NewClient(conn, c.SMTPHost)
	if err != nil {
		return fmt.Errorf("smtp: %w", err)
	}
	defer cl.Close()
	if err := cl.Hello("penstock"); err != nil {
		return fmt.Errorf("smtp hello: %w", err)
	}
	if c.TLS == "starttls" {
		if ok, _ := cl.Extension("STARTTLS"); !ok {
			return errors.New("smtp: the server does not offer STARTTLS (tls: starttls requires it)")
		}
		if err := cl.StartTLS(c.tlsConfig(c.SMTPHost)); err != nil {
			return fmt.Errorf("smtp starttls: %w", err)
		}
	}
	if c.Username != "" {
		if err := cl.Auth(smtp.PlainAuth("", c.Username, c.Password.Reveal(), c.SMTPHost)); err != nil {
			return fmt.Errorf("smtp auth: %w", err)
		}
	}
	from, _ := parseAddress(c.From)
	if err := cl.Mail(from); err != nil {
		return fmt.Errorf("smtp mail from: %w", err)
	}
	for _, to := range c.To {
		a, _ := parseAddress(to)
		if err := cl.Rcpt(a); err != nil {
			return fmt.Errorf("smtp rcpt %s: %w", a, err)
		}
	}
	w, err := cl.Data()
	if err != nil {
		return fmt.Errorf("smtp data: %w", err)
	}
	if _, err := w.Write(mailBody(c, m)); err != nil {
		return fmt.Errorf("smtp data: %w", err)
	}
	if err := w.Close(); err != nil { // the server's answer to the message: accepted or not
		return fmt.Errorf("smtp data: %w", err)
	}
	return cl.Quit()
}

// mailBody is an RFC 5322 message in plain text. Every header value comes from a checked
// address or from names and numbers, and carries no line break.
func mailBody(c Channel, m message) []byte {
	var b bytes.Buffer
	host := "penstock"
	if from, err := parseAddress(c.From); err == nil {
		if i := strings.LastIndexByte(from, '@'); i >= 0 {
			host = from[i+1:]
		}
	}
	hdr := func(k, v string) {
		fmt.Fprintf(&b, "%s: %s\r\n", k, strings.NewReplacer("\r", " ", "\n", " ").Replace(v))
	}
	hdr("From", c.From)
	hdr("To", strings.Join(c.To, ", "))
	hdr("Subject", m.alert.Subject(m.kind))
	hdr("Date", time.Now().UTC().Format(time.RFC1123Z))
	// The same on every attempt of one notice: a mail system that keeps Message-IDs drops a
	// second copy.
	hdr("Message-ID", "<"+m.alert.ID+"."+strconv.Itoa(m.seq)+"@"+host+">")
	hdr("X-Penstock-Alert", m.alert.ID)
	hdr("X-Penstock-Delivery", m.alert.ID+"/"+strconv.Itoa(m.seq))
	hdr("MIME-Version", "1.0")
	hdr("Content-Type", "text/plain; charset=utf-8")
	hdr("Content-Transfer-Encoding", "8bit")
	b.WriteString("\r\n")
	b.WriteString(strings.ReplaceAll(m.alert.Text(m.kind, m.links), "\n", "\r\n"))
	return b.Bytes()
}

func parseAddress(s string) (string, error) {
	a, err := mail.ParseAddress(s)
	if err != nil {
		return "", err
	}
	return a.Address, nil
}

// httpClient dials through d and trusts the channel's own authority, if it has one.
func httpClient(d *egress.Dialer, c Channel, host string) *http.Client {
	client := d.HTTPClient(sendTimeout)
	if c.CAPEM != "" {
		client.Transport.(*http.Transport).TLSClientConfig = c.tlsConfig(host)
	}
	return client
}

// sendProvider calls a Twilio-compatible API: an SMS through Messages.json, a call through
// Calls.json reading the text, one request per recipient, with basic authentication.
func sendProvider(ctx context.Context, d *egress.Dialer, c Channel, m message) error {
	base := strings.TrimSuffix(c.BaseURL, "/") + "/2010-04-01/Accounts/" + url.PathEscape(c.AccountSID)
	bu, _ := url.Parse(c.BaseURL)
	client := httpClient(d, c, bu.Hostname())
	defer client.CloseIdleConnections()
	for _, to := range c.To {
		form := url.Values{"To": {to}, "From": {c.From}}
		endpoint := base + "/Messages.json"
		if c.Type == SMS {
			form.Set("Body", m.alert.Short(m.kind))
		} else {
			endpoint = base + "/Calls.json"
			var say bytes.Buffer
			_ = xml.EscapeText(&say, []byte(m.alert.Short(m.kind)))
			form.Set("Twiml", `<Response><Say>`+say.String()+`</Say></Response>`)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(form.Encode()))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.SetBasicAuth(c.AccountSID, c.AuthToken.Reveal())
		if err := do(client, req); err != nil {
			return fmt.Errorf("%s to %s: %w", c.Type, maskNumber(to), err)
		}
	}
	return nil
}

// maskNumber shows the last digits of a phone number only, for errors kept with a notice.
func maskNumber(n string) string {
	if len(n) <= 4 {
		return "****"
	}
	return strings.Repeat("*", len(n)-4) + n[len(n)-4:]
}

func sendChat(ctx context.Context, d *egress.Dialer, c Channel, m message) error {
	var body any = map[string]string{"text": m.alert.Text(m.kind, m.links)}
	if c.Type == Teams {
		body = map[string]any{"@type": "MessageCard", "@context": "https://schema.org/extensions",
			"summary": m.alert.Subject(m.kind), "title": m.alert.Subject(m.kind),
			"themeColor": map[string]string{"critical": "D00000", "warning": "FFA500", "info": "0078D7"}[m.alert.Severity],
			"text":       strings.ReplaceAll(m.alert.Text(m.kind, m.links), "\n", "  \n")}
	}
	b, _ := json.Marshal(body)
	return post(ctx, d, c, b, nil)
}

// WebhookBody is what the webhook channel posts.
type WebhookBody struct {
	Delivery string `json:"delivery" doc:"alert id / notice number: the same for every retry of one notice"`
	Kind     string `json:"kind"`
	Alert    Alert  `json:"alert"`
	Link     string `json:"link,omitempty"`
	AckURL   string `json:"ack_url,omitempty"`
}

// Signature is the webhook channel's signature of body at ts: "v1=" and the hex HMAC-SHA256,
// keyed by the channel's secret, of the timestamp (Unix seconds), a dot and the body.
func Signature(secret []byte, ts string, body []byte) string {
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(ts))
	mac.Write([]byte{'.'})
	mac.Write(body)
	return "v1=" + hex.EncodeToString(mac.Sum(nil))
}

func sendWebhook(ctx context.Context, d *egress.Dialer, c Channel, m message) error {
	a := m.alert.Public()
	a.Notices = nil // delivery state is ours, not the receiver's
	b, _ := json.Marshal(WebhookBody{Delivery: a.ID + "/" + strconv.Itoa(m.seq), Kind: m.kind, Alert: a, Link: m.links.details, AckURL: m.links.ack})
	ts := strconv.FormatInt(time.Now().Unix(), 10)
	return post(ctx, d, c, b, map[string]string{
		"X-Penstock-Timestamp": ts,
		"X-Penstock-Signature": Signature([]byte(c.Secret.Reveal()), ts, b),
		"X-Penstock-Delivery":  a.ID + "/" + strconv.Itoa(m.seq),
	})
}

func post(ctx context.Context, d *egress.Dialer, c Channel, body []byte, headers map[string]string) error {
	u, err := url.Parse(c.URL.Reveal())
	if err != nil {
		return errors.New("bad url") // the URL is a credential: not repeated
	}
	client := httpClient(d, c, u.Hostname())
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.URL.Reveal(), bytes.NewReader(body))
	if err != nil {
		return errors.New("bad url") // the URL is a credential: not repeated
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "penstock-notify")
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	return do(client, req)
}

// do sends req and accepts a 2xx answer. Errors never repeat the URL (a chat webhook's URL is
// its credential).
func do(client *http.Client, req *http.Request) error {
	resp, err := client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("post to %s: %w", req.URL.Host, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("post to %s: answered %s", req.URL.Host, resp.Status)
	}
	return nil
}
