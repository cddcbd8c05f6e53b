// Package notify owns alerting: channels (email, SMS, voice, chat, signed webhooks), rules that
// turn events into alerts, and the delivery of each alert's notices, at least once, kept in the
// engine until every channel confirmed. An alert names a resource, a condition, numbers and a
// link; it never carries a message payload, a record value or a secret, and nothing in this
// package logs or returns a channel's credentials.
package notify

import (
	"errors"
	"fmt"
	"path"
	"slices"
	"time"
)

// Kind is one built-in event, with what its number means.
type Kind struct {
	Name        string `json:"name"`
	Description string `json:"description"`
	// Level kinds are measured (a queue's depth): an alert opens when the value reaches the
	// threshold (or falls to it, Below) and resolves when it no longer does. The others are
	// occurrences: an alert opens when Threshold of them arrive within the rule's window, and
	// resolves after a window without any.
	Level bool `json:"level"`
	// PerRun levels are measured once per run (a pipeline's error rate): an alert on one
	// stays open until a run measures under the threshold.
	PerRun bool   `json:"per_run,omitempty"`
	Below  bool   `json:"below,omitempty"`
	Unit   string `json:"unit"`
	// Platform kinds happen outside any tenant: only platform rules see them.
	Platform bool `json:"platform,omitempty"`
}

// The built-in events. Resource formats are given in docs/notifications.md.
var Kinds = []Kind{
	{Name: "queue.dead_letters", Description: "messages moved to a queue's dead-letter queue", Unit: "messages"},
	{Name: "queue.depth", Description: "messages waiting in a queue", Level: true, Unit: "messages"},
	{Name: "queue.oldest_age", Description: "age of the oldest message in a queue", Level: true, Unit: "seconds"},
	{Name: "queue.no_consumer", Description: "time since anything consumed from a queue", Level: true, Unit: "seconds"},
	{Name: "pipeline.dead_letters", Description: "records a pipeline run sent to its dead-letter queue", Unit: "records"},
	{Name: "pipeline.run_failed", Description: "pipeline runs that failed", Unit: "runs"},
	{Name: "pipeline.error_rate", Description: "share of a run's records that went to the dead-letter queue", Level: true, PerRun: true, Unit: "percent"},
	{Name: "pipeline.late", Description: "time a scheduled pipeline is overdue", Level: true, Unit: "seconds"},
	{Name: "fabric.native_refused", Description: "native (NATS, MQTT, WebSocket) logins refused", Unit: "logins", Platform: true},
	{Name: "fabric.quota_refused", Description: "publishes refused by a tenant-environment's quota", Unit: "refusals"},
	{Name: "quota.storage", Description: "share of fabric.max_storage an environment stores", Level: true, Unit: "percent"},
	{Name: "auth.login_failed", Description: "failed logins to the API", Unit: "logins", Platform: true},
	{Name: "apikey.expiring", Description: "days until an API key expires", Level: true, Below: true, Unit: "days"},
	{Name: "cert.expiring", Description: "days until the API's TLS certificate expires", Level: true, Below: true, Unit: "days", Platform: true},
	{Name: "backup.failed", Description: "backups that failed or were missed", Unit: "backups"},
	{Name: "audit.forward_failed", Description: "failures forwarding the audit log to a SIEM", Unit: "failures", Platform: true},
	{Name: "data.damaged", Description: "damaged streams found by the data-safety checks", Unit: "streams", Platform: true},
	{Name: "retention.warning", Description: "warnings that retention will delete an unused environment (30, 7 and 1 days before)", Unit: "warnings"},
	{Name: "notify.channel_failing", Description: "a channel whose deliveries keep failing", Unit: "attempts", Platform: true},
}

// KindOf finds a built-in event.
func KindOf(name string) (Kind, bool) {
	for _, k := range Kinds {
		if k.Name == name {
			return k, true
		}
	}
	return Kind{}, false
}

// Event is one occurrence or measurement. Tenant "" is the platform's.
type Event struct {
	Tenant, Environment, Application string
	Kind                             string
	// Resource names what it is about, within the tenant: "production/billing/orders" for a
	// queue, "user:alice" for a login. Never a payload or a value of a record.
	Resource string
	// Value is the measured level (level kinds) or the number of occurrences (at least 1).
	Value float64
	Time  time.Time
	// Detail is a line of text Penstock wrote about it ("deleted on 2027-03-06 unless it is
	// used"), shown in the notices: never a payload, a record value or an error of a remote
	// system.
	Detail string
}

// Step is one stage of escalation: after After unacknowledged, notify Channels.
type Step struct {
	After    string   `json:"after" doc:"how long after the alert opened, unacknowledged: 10m, 1h"`
	Channels []string `json:"channels"`
	after    time.Duration
}

// Rule says which events raise an alert, and whom it reaches.
type Rule struct {
	Name  string `json:"name,omitempty" doc:"taken from the path"`
	Event string `json:"event"`
	// Filters, each a glob (path.Match) or "" for any: the tenant (platform rules only: they
	// see every tenant's events), the environment, the application and the resource.
	Tenant      string `json:"tenant,omitempty"`
	Environment string `json:"environment,omitempty"`
	Application string `json:"application,omitempty"`
	Resource    string `json:"resource,omitempty"`
	// Threshold: the level (level kinds) or the number of occurrences within Window (the
	// others); 0 means 1 occurrence, or any level above 0.
	Threshold float64 `json:"threshold,omitempty"`
	// Window counts occurrences (default 5m); an alert of occurrences resolves after a window
	// without any.
	Window string `json:"window,omitempty" doc:"default 5m"`
	// For is how long a level must hold before the alert opens (default 0).
	For      string `json:"for,omitempty" doc:"default 0: at once"`
	Severity string `json:"severity,omitempty" enum:"info,warning,critical,"`
	// Channels are told when the alert opens and when it resolves.
	Channels []string `json:"channels"`
	// Escalate tells more channels while the alert stays open and unacknowledged.
	Escalate []Step `json:"escalate,omitempty"`
	// NoResolve leaves out the resolve notice.
	NoResolve bool `json:"no_resolve,omitempty"`

	window, hold time.Duration
}

// MaxRules and MaxChannels bound what one tenant (or the platform) keeps.
const (
	MaxRules    = 200
	MaxChannels = 50
	maxSteps    = 10
)

// ErrInvalid is wrapped by every refusal of bad input; the message names the field.
var ErrInvalid = errors.New("invalid")

func invalid(field, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrInvalid, field, fmt.Sprintf(format, args...))
}

func validName(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for i, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' && i > 0) {
			return false
		}
	}
	return true
}

// Normalize fills defaults and checks the rule; platform says whether it is a platform rule.
func (r *Rule) Normalize(platform bool) error {
	if !validName(r.Name) {
		return invalid("name", "%q: 1-63 of a-z, 0-9 and -, starting with a letter or digit", r.Name)
	}
	k, ok := KindOf(r.Event)
	if !ok {
		return invalid("event", "%q is not a built-in event (GET /v1/notify/events lists them)", r.Event)
	}
	if k.Platform && !platform {
		return invalid("event", "%q happens outside tenants: only platform rules take it", r.Event)
	}
	if r.Tenant != "" && !platform {
		return invalid("tenant", "only platform rules filter by tenant")
	}
	for f, g := range map[string]string{"tenant": r.Tenant, "environment": r.Environment, "application": r.Application, "resource": r.Resource} {
		if len(g) > 200 {
			return invalid(f, "at most 200 characters")
		}
		if _, err := path.Match(g, ""); err != nil {
			return invalid(f, "%q is not a valid glob", g)
		}
	}
	if r.Threshold < 0 || r.Threshold > 1e12 {
		return invalid("threshold", "between 0 and 1e12")
	}
	if r.Window == "" {
		r.Window = "5m"
	}
	var err error
	if r.window, err = parseDuration("window", r.Window, time.Second); err != nil {
		return err
	}
	if r.For == "" {
		r.For = "0s"
	}
	if r.hold, err = parseDuration("for", r.For, 0); err != nil {
		return err
	}
	if r.Severity == "" {
		r.Severity = "warning"
	}
	if !slices.Contains([]string{"info", "warning", "critical"}, r.Severity) {
		return invalid("severity", "%q: info, warning or critical", r.Severity)
	}
	if len(r.Channels) == 0 {
		return invalid("channels", "at least one channel")
	}
	if err := checkChannelNames("channels", r.Channels); err != nil {
		return err
	}
	if len(r.Escalate) > maxSteps {
		return invalid("escalate", "at most %d steps", maxSteps)
	}
	prev := time.Duration(0)
	for i := range r.Escalate {
		s := &r.Escalate[i]
		f := fmt.Sprintf("escalate[%d]", i)
		if s.after, err = parseDuration(f+".after", s.After, time.Second); err != nil {
			return err
		}
		if s.after <= prev {
			return invalid(f+".after", "later than the step before")
		}
		prev = s.after
		if len(s.Channels) == 0 {
			return invalid(f+".channels", "at least one channel")
		}
		if err := checkChannelNames(f+".channels", s.Channels); err != nil {
			return err
		}
	}
	return nil
}

func checkChannelNames(field string, names []string) error {
	if len(names) > MaxChannels {
		return invalid(field, "at most %d", MaxChannels)
	}
	for i, n := range names {
		if !validName(n) {
			return invalid(fmt.Sprintf("%s[%d]", field, i), "%q is not a channel name", n)
		}
	}
	return nil
}

// matches says whether e is one the rule looks at.
func (r *Rule) matches(e Event) bool {
	if e.Kind != r.Event {
		return false
	}
	for _, f := range [][2]string{{r.Environment, e.Environment}, {r.Application, e.Application}, {r.Resource, e.Resource}} {
		if f[0] == "" {
			continue
		}
		if ok, _ := path.Match(f[0], f[1]); !ok {
			return false
		}
	}
	return true
}

// over says whether a level crosses the rule's threshold.
func (r *Rule) over(k Kind, v float64) bool {
	if k.Below {
		return v <= r.Threshold
	}
	if r.Threshold == 0 {
		return v > 0
	}
	return v >= r.Threshold
}

// parseDuration reads a rule's duration, between min and 31 days.
func parseDuration(field, s string, min time.Duration) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, invalid(field, "%q: a duration such as 30s, 5m, 2h", s)
	}
	if d < min || d > 31*24*time.Hour {
		return 0, invalid(field, "between %s and 744h", min)
	}
	return d, nil
}
