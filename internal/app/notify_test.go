package app

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/penstock/penstock/internal/audit"
	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/notify"
	"github.com/penstock/penstock/internal/redact"
	"github.com/penstock/penstock/internal/testenv"
)

// Planted in payloads and credentials: no notice may carry them.
const (
	payloadMarker = "PAYLOAD-MARKER-7f3a9c"
	twilioToken   = "twilio-TOKEN-secret-55aa"
	hookSecret    = "hook-SECRET-0123456789abcdef"
)

func fastNotify(c *config.Config) {
	c.Notify.Tick, c.Notify.RetryBase, c.Notify.RetryMax = 100*time.Millisecond, 200*time.Millisecond, time.Second
}

// provider is a local Twilio-compatible API: it checks each request's path, basic
// authentication and form, and keeps what it was asked.
type provider struct {
	mu    sync.Mutex
	calls []url.Values // with "kind" = sms or voice
	bad   []string
	srv   *httptest.Server
}

func newProvider(t *testing.T) *provider {
	p := &provider{}
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		defer p.mu.Unlock()
		user, pass, ok := r.BasicAuth()
		if !ok || user != "AC0123456789" || subtle.ConstantTimeCompare([]byte(pass), []byte(twilioToken)) != 1 {
			p.bad = append(p.bad, "auth")
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		if r.Method != "POST" || r.Header.Get("Content-Type") != "application/x-www-form-urlencoded" {
			p.bad = append(p.bad, "method or content type")
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		_ = r.ParseForm()
		f := r.PostForm
		switch r.URL.Path {
		case "/2010-04-01/Accounts/AC0123456789/Messages.json":
			f.Set("kind", "sms")
			if f.Get("Body") == "" {
				p.bad = append(p.bad, "sms without Body")
			}
		case "/2010-04-01/Accounts/AC0123456789/Calls.json":
			f.Set("kind", "voice")
			if !strings.HasPrefix(f.Get("Twiml"), "<Response><Say>") {
				p.bad = append(p.bad, "call without TwiML")
			}
		default:
			p.bad = append(p.bad, "path "+r.URL.Path)
			http.Error(w, "not found", http.StatusNotFound)
			return
		}
		if f.Get("From") != "+15550001111" || f.Get("To") != "+15550002222" {
			p.bad = append(p.bad, "numbers")
		}
		p.calls = append(p.calls, f)
		w.WriteHeader(201)
		_, _ = w.Write([]byte(`{"sid":"SM1"}`))
	}))
	t.Cleanup(p.srv.Close)
	return p
}

func (p *provider) kinds() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, c := range p.calls {
		out = append(out, c.Get("kind")+":"+c.Get("Body")+c.Get("Twiml"))
	}
	return out
}

func count(list []string, prefix, contains string) int {
	n := 0
	for _, s := range list {
		if strings.HasPrefix(s, prefix) && strings.Contains(s, contains) {
			n++
		}
	}
	return n
}

// deadLetters publishes n messages carrying the payload marker to a queue and rejects them.
func deadLetters(t *testing.T, ta *testApp, base, queue string, n int) {
	t.Helper()
	var msgs []map[string]any
	for i := range n {
		msgs = append(msgs, map[string]any{"data": payloadMarker + "-" + strconv.Itoa(i)})
	}
	if st, _, raw := ta.call(t, "POST", base+"/queues/"+queue+"/messages", "", map[string]any{"messages": msgs}); st != 200 {
		t.Fatalf("publish: %d %s", st, raw)
	}
	st, out, raw := ta.call(t, "POST", base+"/queues/"+queue+"/consume", "", map[string]any{"max": n, "wait_ms": 2000})
	if st != 200 || len(out["messages"].([]any)) != n {
		t.Fatalf("consume: %d %s", st, raw)
	}
	var tokens []string
	for _, m := range out["messages"].([]any) {
		tokens = append(tokens, m.(map[string]any)["ack_token"].(string))
	}
	if st, _, raw := ta.call(t, "POST", base+"/queues/"+queue+"/reject", "", map[string]any{"tokens": tokens}); st != 204 {
		t.Fatalf("reject: %d %s", st, raw)
	}
}

func (ta *testApp) must(t *testing.T, method, path string, body any, want int) map[string]any {
	t.Helper()
	st, out, raw := ta.call(t, method, path, "", body)
	if st != want {
		t.Fatalf("%s %s: %d %s (want %d)", method, path, st, raw, want)
	}
	return out
}

func alertsOf(t *testing.T, ta *testApp, query string) []notify.Alert {
	t.Helper()
	st, _, raw := ta.call(t, "GET", "/v1/alerts?"+query, "", nil)
	if st != 200 {
		t.Fatalf("alerts: %d %s", st, raw)
	}
	var out struct{ Alerts []notify.Alert }
	if err := json.Unmarshal([]byte(raw), &out); err != nil {
		t.Fatal(err)
	}
	return out.Alerts
}

// TestEscalationEmailThenSMSThenVoiceStoppedByAck: a burst of dead letters is one alert,
// mailed through a real SMTP server (STARTTLS, authenticated, read back), then texted, then
// called about as it stays unacknowledged; an alert acknowledged at once gets its mail and
// nothing more. No notice carries the payloads or any credential; the resolve notice follows.
func TestEscalationEmailThenSMSThenVoiceStoppedByAck(t *testing.T) {
	mp := testenv.StartMailpit(t)
	prov := newProvider(t)
	ta := startApp(t, func(c *config.Config) { fastNotify(c); c.Notify.PublicURL = "https://penstock.acme.test" })
	ta.adminSession(t)
	ta.must(t, "POST", "/v1/tenants", map[string]string{"name": "acme"}, 201)
	ta.must(t, "POST", "/v1/tenants/acme/environments/production/applications", map[string]string{"name": "billing"}, 201)
	base := "/v1/tenants/acme/environments/production/applications/billing"
	for _, q := range []string{"orders", "invoices"} {
		ta.must(t, "POST", base+"/queues", map[string]any{"name": q}, 201)
	}
	provAddr := prov.srv.Listener.Addr().String()

	// Loopback is denied until a platform admin allows it: a channel dials through egress.
	email := map[string]any{"type": "email", "smtp_host": "localhost", "smtp_port": mp.SMTPPort, "tls": "starttls",
		"username": mp.User, "password": mp.Password, "from": "Penstock <alerts@penstock.test>", "to": []string{"oncall@acme.test"},
		"ca_pem": mp.CAPEM}
	ta.must(t, "PUT", "/v1/notify/channels/ops-email?tenant=acme", email, 200)
	st, _, raw := ta.call(t, "POST", "/v1/notify/channels/ops-email/test?tenant=acme", "", nil)
	if st != 502 || !strings.Contains(raw, "egress denied") || strings.Contains(raw, mp.Password) {
		t.Fatalf("test before egress allowed: %d %s", st, raw)
	}
	ta.must(t, "PUT", "/v1/tenants/acme/egress", map[string]any{"rules": []string{"localhost:" + strconv.Itoa(mp.SMTPPort), provAddr}}, 200)
	ta.must(t, "POST", "/v1/notify/channels/ops-email/test?tenant=acme", nil, 200)
	waitUntil(t, "the test mail", func() bool { return len(mp.Messages(t)) == 1 })
	if m := mp.Messages(t)[0]; !strings.Contains(m.Subject, "TEST") || m.To[0] != "oncall@acme.test" {
		t.Fatalf("test mail: %+v", m)
	}

	for name, typ := range map[string]string{"oncall-sms": "sms", "oncall-voice": "voice"} {
		out := ta.must(t, "PUT", "/v1/notify/channels/"+name+"?tenant=acme", map[string]any{"type": typ, "base_url": "http://" + provAddr,
			"account_sid": "AC0123456789", "auth_token": twilioToken, "from": "+15550001111", "to": []string{"+15550002222"}}, 200)
		if b, _ := json.Marshal(out); strings.Contains(string(b), twilioToken) || !strings.Contains(string(b), `"auth_token"`) {
			t.Fatalf("channel view: %s", b)
		}
	}
	st, _, raw = ta.call(t, "PUT", "/v1/notify/rules/dead?tenant=acme", "", map[string]any{"event": "queue.dead_letters",
		"channels": []string{"ops-email"}, "escalate": []map[string]any{{"after": "1s", "channels": []string{"nope"}}}})
	if st != 422 || !strings.Contains(raw, "escalate") || !strings.Contains(raw, `\"nope\" does not exist`) {
		t.Fatalf("rule with a missing channel: %d %s", st, raw)
	}
	ta.must(t, "PUT", "/v1/notify/rules/dead?tenant=acme", map[string]any{"event": "queue.dead_letters", "application": "billing",
		"severity": "critical", "window": "14s", "channels": []string{"ops-email"},
		// The acknowledged alert must be acknowledged before its first step: 5 s leaves a busy
		// machine room; the window outlasts the last step, so the alert is still open then.
		"escalate": []map[string]any{{"after": "5s", "channels": []string{"oncall-sms"}}, {"after": "10s", "channels": []string{"oncall-voice"}}}}, 200)

	deadLetters(t, ta, base, "orders", 3)
	deadLetters(t, ta, base, "invoices", 1)
	var orders, invoices notify.Alert
	waitUntil(t, "two alerts", func() bool {
		for _, a := range alertsOf(t, ta, "tenant=acme") {
			switch a.Resource {
			case "production/billing/orders":
				orders = a
			case "production/billing/invoices":
				invoices = a
			}
		}
		return orders.ID != "" && invoices.ID != "" && orders.Count == 3
	})
	ta.must(t, "POST", "/v1/alerts/"+invoices.ID+"/ack?tenant=acme", nil, 200)

	waitUntil(t, "the voice call of the unacknowledged alert", func() bool { return count(prov.kinds(), "voice:", orders.ID) == 1 })
	if n := count(prov.kinds(), "sms:", orders.ID); n != 1 {
		t.Fatalf("%d texts of the alert, want 1: %q", n, prov.kinds())
	}
	if n := count(prov.kinds(), "", invoices.ID); n != 0 {
		t.Fatalf("the acknowledged alert escalated: %q", prov.kinds())
	}
	got, _ := json.Marshal(alertsOf(t, ta, "tenant=acme"))
	var inv notify.Alert
	for _, a := range alertsOf(t, ta, "tenant=acme") {
		if a.ID == invoices.ID {
			inv = a
		}
	}
	if inv.Step != 0 || inv.AckedBy == "" || len(inv.Notices) != 1 || inv.Notices[0].Channel != "ops-email" {
		t.Fatalf("acknowledged alert: %s", got)
	}
	// The unacknowledged alert's mail carries a link that acknowledges it without a login: its
	// page only shows a button (a mail scanner following links acknowledges nothing), the
	// button's POST does; a wrong secret is a 404 like an unknown alert.
	var link string
	for _, m := range mp.Messages(t) {
		if strings.Contains(m.Text, orders.ID) {
			for _, f := range strings.Fields(m.Text) {
				if strings.HasPrefix(f, "https://penstock.acme.test/v1/ack/acme/"+orders.ID+"/") {
					link = strings.TrimPrefix(f, "https://penstock.acme.test")
				}
			}
		}
	}
	if link == "" || !strings.Contains(mp.Messages(t)[1].Text, "https://penstock.acme.test/v1/alerts/a-") {
		t.Fatalf("no acknowledgement link in the mail of %s", orders.ID)
	}
	if strings.Contains(string(got), link[strings.LastIndexByte(link, '/')+1:]) {
		t.Fatalf("the API shows the link's secret: %s", got)
	}
	if st, _, raw := ta.call(t, "GET", link, "-", nil); st != 200 || !strings.Contains(raw, "<button") {
		t.Fatalf("link page: %d %s", st, raw)
	}
	wrong := link[:len(link)-1] + map[bool]string{true: "1", false: "0"}[strings.HasSuffix(link, "0")]
	if st, _, raw := ta.call(t, "POST", wrong, "-", nil); st != 404 {
		t.Fatalf("link with a wrong secret: %d %s", st, raw)
	}
	if st, _, raw := ta.call(t, "POST", link, "-", nil); st != 200 || !strings.Contains(raw, "acknowledged by ack-link") {
		t.Fatalf("link POST: %d %s", st, raw)
	}
	if secret := link[strings.LastIndexByte(link, '/')+1:]; strings.Contains(ta.logs.String(), secret) {
		t.Fatal("the link's secret is in the server's log")
	}
	if st, _, raw := ta.call(t, "GET", "/v1/audit?limit=1000", "", nil); st != 200 || strings.Contains(raw, link[strings.LastIndexByte(link, '/')+1:]) ||
		!strings.Contains(raw, "ack-link") {
		t.Fatalf("audit of the link: %d %s", st, raw)
	}

	// A window without a dead letter: both resolve, and every channel told is told so.
	waitUntil(t, "the resolve notices", func() bool {
		n := 0
		for _, m := range mp.Messages(t) {
			if strings.Contains(m.Subject, "RESOLVED") {
				n++
			}
		}
		return n == 2 && count(prov.kinds(), "sms:", "RESOLVED") == 1 && count(prov.kinds(), "voice:", "RESOLVED") == 1
	})
	mails := mp.Messages(t)
	var firing int
	for _, m := range mails {
		if strings.Contains(m.Subject, "FIRING") && strings.Contains(m.Subject, "queue.dead_letters") {
			firing++
		}
		for _, bad := range []string{payloadMarker, mp.Password, twilioToken} {
			if strings.Contains(m.Text+m.Subject, bad) {
				t.Fatalf("a mail carries %q:\n%s", bad, m.Text)
			}
		}
	}
	if firing != 2 {
		t.Fatalf("%d firing mails, want one per alert", firing)
	}
	for _, c := range prov.kinds() {
		if strings.Contains(c, payloadMarker) || strings.Contains(c, twilioToken) {
			t.Fatalf("a text or call carries a payload or a credential: %q", c)
		}
	}
	if prov.bad != nil {
		t.Fatalf("provider requests not as the API wants them: %q", prov.bad)
	}
	for _, m := range mails {
		if strings.Contains(m.Subject, "FIRING") && strings.Contains(m.Text, orders.ID) &&
			(!strings.Contains(m.Text, "penstock alerts ack "+orders.ID+" --tenant acme") || !strings.Contains(m.Text, "messages moved to a queue's dead-letter queue")) {
			t.Fatalf("the alert's mail says neither how to acknowledge nor what happened:\n%s", m.Text)
		}
	}
}

// receiver is a webhook endpoint that checks the signature of every request and keeps the
// deliveries it accepted, by delivery id; while failing, it answers 503.
type receiver struct {
	mu        sync.Mutex
	failing   bool
	attempts  int
	delivered map[string]int
	bodies    []string
	bad       []string
	srv       *httptest.Server
}

func newReceiver(t *testing.T, secret string, check func(r *http.Request, body []byte) string) *receiver {
	rc := &receiver{delivered: map[string]int{}}
	rc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		defer rc.mu.Unlock()
		rc.attempts++
		if msg := check(r, body); msg != "" {
			rc.bad = append(rc.bad, msg)
			http.Error(w, msg, 400)
			return
		}
		if rc.failing {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		rc.delivered[r.Header.Get("X-Penstock-Delivery")]++
		rc.bodies = append(rc.bodies, string(body))
		w.WriteHeader(204)
	}))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *receiver) state() (attempts int, delivered map[string]int) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	d := map[string]int{}
	for k, v := range rc.delivered {
		d[k] = v
	}
	return rc.attempts, d
}

func signed(secret string) func(r *http.Request, body []byte) string {
	return func(r *http.Request, body []byte) string {
		ts := r.Header.Get("X-Penstock-Timestamp")
		sec, err := strconv.ParseInt(ts, 10, 64)
		if err != nil || time.Since(time.Unix(sec, 0)).Abs() > 5*time.Minute {
			return "stale or missing timestamp"
		}
		want := notify.Signature([]byte(secret), ts, body)
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("X-Penstock-Signature")), []byte(want)) != 1 {
			return "bad signature"
		}
		return ""
	}
}

// TestNoticesSurviveARestartMidRetry: a notice one channel confirmed and another keeps
// refusing survives a restart of the process: after it, the refusing channel gets it once and
// the confirming one never again. Signatures are checked by the receivers; chat formats too.
func TestNoticesSurviveARestartMidRetry(t *testing.T) {
	good := newReceiver(t, hookSecret, signed(hookSecret))
	flaky := newReceiver(t, hookSecret+"-2", signed(hookSecret+"-2"))
	flaky.failing = true
	slack := newReceiver(t, "", func(r *http.Request, body []byte) string {
		var m map[string]string
		if json.Unmarshal(body, &m) != nil || !strings.Contains(m["text"], "queue.dead_letters") {
			return "not a Slack message"
		}
		return ""
	})
	teams := newReceiver(t, "", func(r *http.Request, body []byte) string {
		var m map[string]any
		if json.Unmarshal(body, &m) != nil || m["@type"] != "MessageCard" || !strings.Contains(m["title"].(string), "queue.dead_letters") {
			return "not a Teams card"
		}
		return ""
	})
	ta := startApp(t, fastNotify)
	ta.adminSession(t)
	ta.must(t, "POST", "/v1/tenants", map[string]string{"name": "acme"}, 201)
	ta.must(t, "POST", "/v1/tenants/acme/environments/production/applications", map[string]string{"name": "billing"}, 201)
	base := "/v1/tenants/acme/environments/production/applications/billing"
	ta.must(t, "POST", base+"/queues", map[string]any{"name": "orders"}, 201)
	var allow []string
	for _, r := range []*receiver{good, flaky, slack, teams} {
		allow = append(allow, r.srv.Listener.Addr().String())
	}
	ta.must(t, "PUT", "/v1/tenants/acme/egress", map[string]any{"rules": allow}, 200)
	ta.must(t, "PUT", "/v1/notify/channels/good?tenant=acme", map[string]any{"type": "webhook", "url": good.srv.URL + "/hook", "secret": hookSecret}, 200)
	ta.must(t, "PUT", "/v1/notify/channels/flaky?tenant=acme", map[string]any{"type": "webhook", "url": flaky.srv.URL + "/hook", "secret": hookSecret + "-2"}, 200)
	ta.must(t, "PUT", "/v1/notify/channels/chat?tenant=acme", map[string]any{"type": "slack", "url": slack.srv.URL + "/services/T0/B0/XXXX"}, 200)
	ta.must(t, "PUT", "/v1/notify/channels/teams?tenant=acme", map[string]any{"type": "teams", "url": teams.srv.URL + "/webhookb2/x"}, 200)
	ta.must(t, "PUT", "/v1/notify/rules/dead?tenant=acme", map[string]any{"event": "queue.dead_letters", "window": "10m",
		"channels": []string{"good", "flaky", "chat", "teams"}}, 200)

	deadLetters(t, ta, base, "orders", 2)
	waitUntil(t, "the confirmed delivery and failed attempts", func() bool {
		_, g := good.state()
		n, _ := flaky.state()
		return len(g) == 1 && n >= 2
	})
	alerts := alertsOf(t, ta, "tenant=acme")
	if len(alerts) != 1 || alerts[0].Count != 2 {
		t.Fatalf("alerts: %+v", alerts)
	}
	id := alerts[0].ID

	ta.stop()
	dataDir, admin := ta.cfg.DataDir, ta.admin
	flaky.mu.Lock()
	flaky.failing = false
	flaky.mu.Unlock()
	ta = startApp(t, func(c *config.Config) { fastNotify(c); c.DataDir = dataDir })
	ta.admin = admin

	waitUntil(t, "the delivery after the restart", func() bool {
		_, f := flaky.state()
		return f[id+"/2"] == 1
	})
	waitUntil(t, "every notice recorded as sent", func() bool {
		a := alertsOf(t, ta, "tenant=acme")[0]
		for _, n := range a.Notices {
			if n.State != notify.Sent {
				return false
			}
		}
		return len(a.Notices) == 4
	})
	_, g := good.state()
	_, f := flaky.state()
	if len(g) != 1 || g[id+"/1"] != 1 || len(f) != 1 {
		t.Fatalf("deliveries: good %v, flaky %v", g, f)
	}
	for _, rc := range []*receiver{good, flaky, slack, teams} {
		if rc.bad != nil {
			t.Fatalf("receiver refused: %q", rc.bad)
		}
		for _, b := range rc.bodies {
			for _, bad := range []string{payloadMarker, hookSecret, "XXXX"} {
				if strings.Contains(b, bad) {
					t.Fatalf("a notice carries %q: %s", bad, b)
				}
			}
		}
	}
	m := metrics(t, ta)
	if !strings.Contains(m, `penstock_alert_notices_sent_total{type="webhook"}`) {
		t.Fatalf("metrics: no sent notices")
	}
}

// TestLevelAlertResolvesAndAFailingChannelTellsThePlatform: a queue deeper than a rule's
// threshold opens one alert (measured every tick, not once per measurement); draining it sends
// the resolve notice. A tenant's channel that keeps failing raises the platform's
// notify.channel_failing, delivered through a platform channel that platform egress allows.
func TestLevelAlertResolvesAndAFailingChannelTellsThePlatform(t *testing.T) {
	hook := newReceiver(t, hookSecret, signed(hookSecret))
	broken := newReceiver(t, hookSecret, signed(hookSecret))
	broken.failing = true
	ops := newReceiver(t, hookSecret+"-ops", signed(hookSecret+"-ops"))
	quota := newReceiver(t, hookSecret, signed(hookSecret))
	ta := startApp(t, func(c *config.Config) {
		fastNotify(c)
		c.Fabric.MaxStorage = 1 << 20
		c.Notify.FailingAfter = 2
		c.Notify.PlatformEgress = []string{ops.srv.Listener.Addr().String()}
	})
	ta.adminSession(t)
	ta.must(t, "POST", "/v1/tenants", map[string]string{"name": "acme"}, 201)
	ta.must(t, "POST", "/v1/tenants/acme/environments/production/applications", map[string]string{"name": "billing"}, 201)
	base := "/v1/tenants/acme/environments/production/applications/billing"
	ta.must(t, "POST", base+"/queues", map[string]any{"name": "orders"}, 201)
	ta.must(t, "PUT", "/v1/tenants/acme/egress", map[string]any{"rules": []string{hook.srv.Listener.Addr().String(),
		broken.srv.Listener.Addr().String(), quota.srv.Listener.Addr().String()}}, 200)
	ta.must(t, "PUT", "/v1/notify/channels/quota?tenant=acme", map[string]any{"type": "webhook", "url": quota.srv.URL, "secret": hookSecret}, 200)
	ta.must(t, "PUT", "/v1/notify/rules/storage?tenant=acme", map[string]any{"event": "quota.storage", "threshold": 5,
		"channels": []string{"quota"}}, 200)
	ta.must(t, "PUT", "/v1/notify/channels/hook?tenant=acme", map[string]any{"type": "webhook", "url": hook.srv.URL, "secret": hookSecret}, 200)
	ta.must(t, "PUT", "/v1/notify/channels/broken?tenant=acme", map[string]any{"type": "webhook", "url": broken.srv.URL, "secret": hookSecret}, 200)
	ta.must(t, "PUT", "/v1/notify/channels/ops", map[string]any{"type": "webhook", "url": ops.srv.URL, "secret": hookSecret + "-ops"}, 200)
	ta.must(t, "PUT", "/v1/notify/rules/failing", map[string]any{"event": "notify.channel_failing", "channels": []string{"ops"}}, 200)
	// A tenant cannot watch platform events, nor filter by tenant.
	if st, _, raw := ta.call(t, "PUT", "/v1/notify/rules/x?tenant=acme", "", map[string]any{"event": "notify.channel_failing",
		"channels": []string{"hook"}}); st != 422 || !strings.Contains(raw, "event") {
		t.Fatalf("tenant rule on a platform event: %d %s", st, raw)
	}
	ta.must(t, "PUT", "/v1/notify/rules/backlog?tenant=acme", map[string]any{"event": "queue.depth", "resource": "production/billing/orders",
		"threshold": 3, "channels": []string{"hook", "broken"}}, 200)

	// Four messages of 16 KiB: about 6 % of the environment's 1 MiB of storage.
	var msgs []map[string]any
	for i := range 4 {
		msgs = append(msgs, map[string]any{"data": payloadMarker + strconv.Itoa(i) + strings.Repeat("x", 16<<10)})
	}
	ta.must(t, "POST", base+"/queues/orders/messages", map[string]any{"messages": msgs}, 200)
	waitUntil(t, "the backlog alert", func() bool { _, d := hook.state(); return len(d) == 1 })
	waitUntil(t, "the platform alert about the failing channel", func() bool { _, d := ops.state(); return len(d) == 1 })
	waitUntil(t, "the storage alert", func() bool { _, d := quota.state(); return len(d) == 1 })
	platform := alertsOf(t, ta, "")
	if len(platform) != 1 || platform[0].Event != "notify.channel_failing" || platform[0].Resource != "channel:acme/broken" {
		t.Fatalf("platform alerts: %+v", platform)
	}
	out := ta.must(t, "POST", base+"/queues/orders/consume", map[string]any{"max": 4, "wait_ms": 2000}, 200)
	var tokens []string
	for _, m := range out["messages"].([]any) {
		tokens = append(tokens, m.(map[string]any)["ack_token"].(string))
	}
	ta.must(t, "POST", base+"/queues/orders/ack", map[string]any{"tokens": tokens}, 204)
	waitUntil(t, "the resolve notices", func() bool {
		_, d := hook.state()
		_, q := quota.state()
		return len(d) == 2 && len(q) == 2
	})
	alerts := alertsOf(t, ta, "tenant=acme")
	if len(alerts) != 2 {
		t.Fatalf("alerts: %+v", alerts)
	}
	for _, a := range alerts {
		if a.State != notify.Resolved || a.Event == "queue.depth" && a.Value != 4 || a.Event == "quota.storage" && (a.Value < 5 || a.Value > 10) {
			t.Fatalf("alerts: %+v", alerts)
		}
	}
	for _, b := range append(append(hook.bodies, ops.bodies...), quota.bodies...) {
		if strings.Contains(b, payloadMarker) || strings.Contains(b, hookSecret) {
			t.Fatalf("a notice carries a payload or a secret: %s", b)
		}
	}
	if len(alertsOf(t, ta, "tenant=acme&state=firing")) != 0 {
		t.Fatal("a resolved alert listed as firing")
	}
}

// TestEventSources: failed logins (every unknown name one resource), the API certificate and an
// API key near expiry, and a failed pipeline run each open one alert through their rules.
func TestEventSources(t *testing.T) {
	hook := newReceiver(t, hookSecret, signed(hookSecret))
	ops := newReceiver(t, hookSecret, signed(hookSecret))
	ta := startApp(t, func(c *config.Config) {
		fastNotify(c)
		c.Notify.PlatformEgress = []string{ops.srv.Listener.Addr().String()}
	})
	ta.adminSession(t)
	ta.must(t, "POST", "/v1/tenants", map[string]string{"name": "acme"}, 201)
	ta.must(t, "POST", "/v1/tenants/acme/environments/production/applications", map[string]string{"name": "billing"}, 201)
	base := "/v1/tenants/acme/environments/production/applications/billing"
	ta.must(t, "PUT", "/v1/tenants/acme/egress", map[string]any{"rules": []string{hook.srv.Listener.Addr().String()}}, 200)
	ta.must(t, "PUT", "/v1/notify/channels/hook?tenant=acme", map[string]any{"type": "webhook", "url": hook.srv.URL, "secret": hookSecret}, 200)
	ta.must(t, "PUT", "/v1/notify/channels/ops", map[string]any{"type": "webhook", "url": ops.srv.URL, "secret": hookSecret}, 200)
	for name, rule := range map[string]map[string]any{
		"logins": {"event": "auth.login_failed", "threshold": 3, "window": "10m"},
		"cert":   {"event": "cert.expiring", "threshold": 100000},
	} {
		rule["channels"] = []string{"ops"}
		ta.must(t, "PUT", "/v1/notify/rules/"+name, rule, 200)
	}
	for name, rule := range map[string]map[string]any{
		"runs":  {"event": "pipeline.run_failed", "resource": "production/billing/*"},
		"keys":  {"event": "apikey.expiring", "threshold": 30},
		"bad":   {"event": "pipeline.dead_letters", "resource": "production/billing/mixed"},
		"ratio": {"event": "pipeline.error_rate", "threshold": 10},
	} {
		rule["channels"] = []string{"hook"}
		ta.must(t, "PUT", "/v1/notify/rules/"+name+"?tenant=acme", rule, 200)
	}

	for i := range 3 {
		ta.call(t, "POST", "/v1/auth/login", "-", map[string]string{"user": "nobody-" + strconv.Itoa(i), "password": "Wrong-" + payloadMarker})
	}
	key := ta.must(t, "POST", "/v1/apikeys", map[string]any{"role": "viewer", "scope": "acme/production", "expires": time.Now().Add(72 * time.Hour)}, 201)
	ta.must(t, "PUT", base+"/pipelines/broken", map[string]any{
		"source": map[string]any{"type": "file", "path": "missing.csv"}, "sink": map[string]any{"type": "file", "path": "out.jsonl"},
		"schedule": "every 1h"}, 200)
	ta.must(t, "POST", base+"/pipelines/broken/run", nil, 202)
	// One record of three fails validation: it goes to the dead-letter queue with its value,
	// which no notice carries.
	files := filepath.Join(ta.cfg.DataDir, "files", "acme")
	if err := os.MkdirAll(files, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(files, "mixed.jsonl"), []byte("{\"n\": 1}\n{\"n\": \""+payloadMarker+"\"}\n{\"n\": 3}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ta.must(t, "PUT", base+"/pipelines/mixed", map[string]any{
		"source": map[string]any{"type": "file", "path": "mixed.jsonl"}, "sink": map[string]any{"type": "file", "path": "out.jsonl"},
		"transforms": []any{map[string]any{"validate": map[string]any{"schema": map[string]any{"type": "object",
			"properties": map[string]any{"n": map[string]any{"type": "integer"}}, "required": []string{"n"}}}}},
		"schedule": "every 1h"}, 200)
	ta.must(t, "POST", base+"/pipelines/mixed/run", nil, 202)

	waitUntil(t, "the platform's two alerts", func() bool { _, d := ops.state(); return len(d) == 2 })
	waitUntil(t, "the tenant's four alerts", func() bool { _, d := hook.state(); return len(d) == 4 })
	got := map[string]notify.Alert{}
	for _, a := range append(alertsOf(t, ta, ""), alertsOf(t, ta, "tenant=acme")...) {
		got[a.Event] = a
	}
	if a := got["auth.login_failed"]; a.Resource != "unknown-user" || a.Count != 3 {
		t.Fatalf("failed logins: %+v", a)
	}
	if a := got["cert.expiring"]; a.Resource != "api-certificate" || a.Value < 1 {
		t.Fatalf("certificate: %+v", a)
	}
	if a := got["apikey.expiring"]; a.Resource != "apikey:"+key["record"].(map[string]any)["id"].(string) || a.Value != 2 {
		t.Fatalf("API key: %+v", a)
	}
	if a := got["pipeline.run_failed"]; a.Resource != "production/billing/broken" || a.Count != 1 {
		t.Fatalf("pipeline: %+v", a)
	}
	if a := got["pipeline.dead_letters"]; a.Resource != "production/billing/mixed" || a.Count != 1 {
		t.Fatalf("pipeline dead letters: %+v", a)
	}
	if a := got["pipeline.error_rate"]; a.Resource != "production/billing/mixed" || a.Value < 33 || a.Value > 34 {
		t.Fatalf("pipeline error rate: %+v", a)
	}
	for _, b := range append(hook.bodies, ops.bodies...) {
		if strings.Contains(b, payloadMarker) || strings.Contains(b, "nobody-") {
			t.Fatalf("a notice carries what a caller typed: %s", b)
		}
	}
}

// TestPlatformEventsAndRateLimits: a SIEM that refuses the audit log, a failed backup and
// damage found (as their subsystems audit them) each open a platform alert; a channel's
// per_hour holds back a second alert's notice while an unlimited channel of the same rule
// takes it.
func TestPlatformEventsAndRateLimits(t *testing.T) {
	siem := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "down", http.StatusInternalServerError)
	}))
	t.Cleanup(siem.Close)
	caFile := filepath.Join(t.TempDir(), "siem.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: siem.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	ops := newReceiver(t, hookSecret, signed(hookSecret))
	free := newReceiver(t, hookSecret, signed(hookSecret))
	limited := newReceiver(t, hookSecret, signed(hookSecret))
	ta := startApp(t, func(c *config.Config) {
		fastNotify(c)
		c.Notify.PlatformEgress = []string{ops.srv.Listener.Addr().String()}
		c.Audit.WebhookURL, c.Audit.WebhookCAFile = siem.URL, caFile
		c.Audit.WebhookSecret = redact.NewSecret("siem-secret-0123456789")
	})
	ta.adminSession(t)
	ta.must(t, "PUT", "/v1/notify/channels/ops", map[string]any{"type": "webhook", "url": ops.srv.URL, "secret": hookSecret}, 200)
	for name, rule := range map[string]map[string]any{
		"siem":    {"event": "audit.forward_failed", "threshold": 2},
		"backups": {"event": "backup.failed"},
		"damage":  {"event": "data.damaged", "severity": "critical"},
	} {
		rule["channels"] = []string{"ops"}
		ta.must(t, "PUT", "/v1/notify/rules/"+name, rule, 200)
	}
	ctx := context.Background()
	for _, e := range []audit.Event{
		{Actor: "system", Action: "backup.missed", Result: audit.ResultError, Details: map[string]string{"late": "25h0m0s"}},
		{Actor: "system", Action: "platform.stream_damaged", Result: audit.ResultError,
			Details: map[string]string{"account": "t_acme_production", "stream": "Q_shop_orders", "problem": "missing"}},
	} {
		if _, err := ta.audit.Append(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	waitUntil(t, "three platform alerts", func() bool { _, d := ops.state(); return len(d) == 3 })
	got := map[string]notify.Alert{}
	for _, a := range alertsOf(t, ta, "") {
		got[a.Event] = a
	}
	if got["audit.forward_failed"].Resource != "webhook" || got["backup.failed"].Resource != "backup.missed" ||
		got["data.damaged"].Resource != "t_acme_production/Q_shop_orders" {
		t.Fatalf("platform alerts: %+v", got)
	}

	ta.must(t, "POST", "/v1/tenants", map[string]string{"name": "acme"}, 201)
	ta.must(t, "POST", "/v1/tenants/acme/environments/production/applications", map[string]string{"name": "billing"}, 201)
	base := "/v1/tenants/acme/environments/production/applications/billing"
	ta.must(t, "PUT", "/v1/tenants/acme/egress", map[string]any{"rules": []string{free.srv.Listener.Addr().String(), limited.srv.Listener.Addr().String()}}, 200)
	ta.must(t, "PUT", "/v1/notify/channels/free?tenant=acme", map[string]any{"type": "webhook", "url": free.srv.URL, "secret": hookSecret}, 200)
	ta.must(t, "PUT", "/v1/notify/channels/limited?tenant=acme", map[string]any{"type": "webhook", "url": limited.srv.URL, "secret": hookSecret, "per_hour": 1}, 200)
	ta.must(t, "PUT", "/v1/notify/rules/dead?tenant=acme", map[string]any{"event": "queue.dead_letters", "window": "10m",
		"channels": []string{"limited", "free"}}, 200)
	for _, q := range []string{"orders", "invoices"} {
		ta.must(t, "POST", base+"/queues", map[string]any{"name": q}, 201)
		deadLetters(t, ta, base, q, 1)
	}
	// Each alert's notices are attended together, the limited channel's first: once the free
	// channel has both, the limited one was asked for both and took one.
	waitUntil(t, "both alerts through the unlimited channel", func() bool { _, d := free.state(); return len(d) == 2 })
	if n, d := limited.state(); n != 1 || len(d) != 1 {
		t.Fatalf("the channel limited to 1 an hour was sent %d (%v)", n, d)
	}
	pending := 0
	for _, a := range alertsOf(t, ta, "tenant=acme") {
		for _, n := range a.Notices {
			if n.Channel == "limited" && n.State == notify.Pending && n.Attempts == 0 {
				pending++
			}
		}
	}
	if pending != 1 {
		t.Fatalf("%d notices held back by the limit, want 1", pending)
	}
}
