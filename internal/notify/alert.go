package notify

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Alert states.
const (
	Firing   = "firing"
	Resolved = "resolved"
)

// Notice kinds: what a notice tells.
const (
	Raised    = "raised"    // the alert opened (step 0's channels)
	Escalated = "escalated" // still open and unacknowledged: a later step's channels
	Cleared   = "resolved"  // the condition cleared (every channel told before)
	Test      = "test"      // penstock notify test
)

// Notice states.
const (
	Pending   = "pending"
	Sent      = "sent"
	Abandoned = "abandoned" // retried for notify.give_up_after without success
)

// Notice is one message of an alert to one channel, kept until the channel confirms it.
type Notice struct {
	Seq       int       `json:"seq"`
	Kind      string    `json:"kind"`
	Channel   string    `json:"channel"`
	State     string    `json:"state"`
	Created   time.Time `json:"created"`
	Attempts  int       `json:"attempts"`
	NextAt    time.Time `json:"next_at,omitzero"`
	SentAt    time.Time `json:"sent_at,omitzero"`
	LastError string    `json:"last_error,omitempty"`
}

// Alert is one open (or recently resolved) condition of a rule on a resource. Bursts of the
// same condition are one alert with a count.
type Alert struct {
	ID          string  `json:"id"`
	Tenant      string  `json:"tenant,omitempty"`
	Rule        string  `json:"rule"`
	Event       string  `json:"event"`
	Environment string  `json:"environment,omitempty"`
	Application string  `json:"application,omitempty"`
	Resource    string  `json:"resource"`
	Detail      string  `json:"detail,omitempty"`
	Severity    string  `json:"severity"`
	State       string  `json:"state"`
	Value       float64 `json:"value" doc:"the last level measured, or the occurrences within the rule's window when it opened"`
	Threshold   float64 `json:"threshold"`
	Unit        string  `json:"unit"`
	// Count is every occurrence (or every evaluation over the threshold) since it opened.
	Count    int64     `json:"count"`
	Opened   time.Time `json:"opened"`
	Last     time.Time `json:"last"`
	Resolved time.Time `json:"resolved,omitzero"`
	Acked    time.Time `json:"acked,omitzero"`
	AckedBy  string    `json:"acked_by,omitempty"`
	// Step is how many escalation steps have been notified.
	Step    int      `json:"escalation_step"`
	Notices []Notice `json:"notices"`
	// Slot is the record that marks it open for its rule and resource.
	Slot string `json:"slot,omitempty" doc:"internal"`
	// Opening marks an alert written whose slot is not taken yet (see open).
	Opening bool `json:"opening,omitempty" doc:"internal"`
	// AckKey is the secret of the acknowledgement link the notices carry (never shown).
	AckKey string `json:"ack_key,omitempty" doc:"internal"`
}

// Public is the alert as the API and webhooks show it: without its bookkeeping and without
// the acknowledgement link's secret.
func (a Alert) Public() Alert {
	a.Slot, a.AckKey, a.Opening = "", "", false
	return a
}

// pending says whether a notice still waits for its channel.
func (a *Alert) pending() bool {
	for _, n := range a.Notices {
		if n.State == Pending {
			return true
		}
	}
	return false
}

// addNotices queues one notice of kind to each of channels (once each).
func (a *Alert) addNotices(kind string, channels []string, now time.Time) {
	seen := map[string]bool{}
	for _, ch := range channels {
		if seen[ch] {
			continue
		}
		seen[ch] = true
		a.Notices = append(a.Notices, Notice{Seq: len(a.Notices) + 1, Kind: kind, Channel: ch, State: Pending, Created: now, NextAt: now})
	}
}

// notified lists the channels told anything of this alert, in order.
func (a *Alert) notified() []string {
	var out []string
	for _, n := range a.Notices {
		if n.Kind == Test {
			continue
		}
		seen := false
		for _, o := range out {
			seen = seen || o == n.Channel
		}
		if !seen {
			out = append(out, n.Channel)
		}
	}
	return out
}

// where names the alert's resource with its environment and application.
func (a *Alert) where() string {
	parts := []string{}
	if a.Tenant != "" {
		parts = append(parts, "tenant "+a.Tenant)
	} else {
		parts = append(parts, "platform")
	}
	parts = append(parts, a.Resource)
	return strings.Join(parts, " ")
}

func num(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }

// condition says what crossed what, in numbers.
func (a *Alert) condition() string {
	k, _ := KindOf(a.Event)
	op := ">="
	if k.Below {
		op = "<="
	}
	if !k.Level {
		return fmt.Sprintf("%s %s within the rule's window (threshold %s); %d in all since it opened", num(a.Value), k.Description,
			num(a.Threshold), a.Count)
	}
	return fmt.Sprintf("%s: %s %s (threshold %s %s)", k.Description, num(a.Value), a.Unit, op, num(a.Threshold))
}

// Subject is a notice's one line: status, severity, event and resource.
func (a *Alert) Subject(kind string) string {
	status := strings.ToUpper(a.State)
	switch kind {
	case Escalated:
		status = "ESCALATED"
	case Test:
		status = "TEST"
	}
	return fmt.Sprintf("[Penstock %s] %s %s on %s", status, a.Severity, a.Event, a.where())
}

// Text is a notice's body: names, numbers and how to acknowledge, nothing else.
func (a *Alert) Text(kind string, l links) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n\n", a.Subject(kind))
	fmt.Fprintf(&b, "Alert:     %s\n", a.ID)
	if a.Tenant != "" {
		fmt.Fprintf(&b, "Tenant:    %s\n", a.Tenant)
	}
	fmt.Fprintf(&b, "Rule:      %s\n", a.Rule)
	fmt.Fprintf(&b, "Resource:  %s\n", a.Resource)
	fmt.Fprintf(&b, "Condition: %s\n", a.condition())
	if a.Detail != "" {
		fmt.Fprintf(&b, "Detail:    %s\n", a.Detail)
	}
	fmt.Fprintf(&b, "Opened:    %s\n", a.Opened.UTC().Format(time.RFC3339))
	if !a.Resolved.IsZero() {
		fmt.Fprintf(&b, "Resolved:  %s\n", a.Resolved.UTC().Format(time.RFC3339))
	}
	if !a.Acked.IsZero() {
		fmt.Fprintf(&b, "Acknowledged: %s by %s\n", a.Acked.UTC().Format(time.RFC3339), a.AckedBy)
	}
	if a.State == Firing && a.Acked.IsZero() {
		tenant := ""
		if a.Tenant != "" {
			tenant = " --tenant " + a.Tenant
		}
		fmt.Fprintf(&b, "\nAcknowledge: penstock alerts ack %s%s\n", a.ID, tenant)
		if l.ack != "" {
			fmt.Fprintf(&b, "         or open %s\n", l.ack)
		}
	}
	if l.details != "" {
		fmt.Fprintf(&b, "Details:   %s\n", l.details)
	}
	return b.String()
}

// Short is the text of an SMS or a voice call.
func (a *Alert) Short(kind string) string {
	s := fmt.Sprintf("Penstock %s %s: %s on %s, %s %s", strings.ToUpper(a.State), a.Severity, a.Event, a.where(), num(a.Value), a.Unit)
	if a.Detail != "" {
		s += ": " + a.Detail
	}
	if kind == Test {
		s = "Penstock test notice from " + a.where()
	}
	if a.State == Firing && kind != Test {
		s += ". Alert " + a.ID
	}
	return s
}

// links are what a notice points to, when notify.public_url is set.
type links struct{ details, ack string }
