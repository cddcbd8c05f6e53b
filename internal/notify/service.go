package notify

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/penstock/penstock/internal/audit"
	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/egress"
	"github.com/penstock/penstock/internal/keyring"
)

// Auditor takes the service's own events: alerts opened and resolved, notices abandoned.
type Auditor interface {
	Append(ctx context.Context, e audit.Event) (audit.Event, error)
}

// Options are what the service needs.
type Options struct {
	Keyring *keyring.Keyring
	Config  config.Notify
	// Egress is a tenant's egress policy ("" for the platform's channels).
	Egress   func(tenant string) egress.Policy
	Audit    Auditor
	Logger   *slog.Logger
	Registry prometheus.Registerer
	// Tenants lists the tenants, for the scan of stored alerts.
	Tenants func() []string
	// Levels, if set, is asked every tick for the measured levels (queues, pipelines) of the
	// tenants that have rules on them.
	Levels func(ctx context.Context, tenants map[string][]string) []Event
}

// Service is the notification subsystem.
type Service struct {
	o                       Options
	log                     *slog.Logger
	channels, rules, alerts *keyring.Sealed
	events                  chan Event
	m                       metrics
	ctx                     context.Context
	cancel                  context.CancelFunc
	mu                      sync.Mutex
	ruleCache               map[string]cachedRules  // by tenant ("" platform)
	channelNames            map[string]cachedNames  // by tenant, for the built-in rule
	windows                 map[string]*window      // recent occurrences, by owner|slot
	since                   map[string]pendingLevel // levels over their threshold, not yet for long enough
	seen                    map[string]time.Time    // a level alert's last measurement, by alert
	levelOpen               map[string]string       // the open level alert of owner|slot ("" none), until the next scan
	ruleOwners              map[string]bool         // tenants ("" the platform) with rules, as of the last scan
	busy                    map[string]bool         // owners whose alerts a delivery goroutine is attending
	ticking                 bool                    // this node runs Ticks (delivers, measures levels)
	opens                   map[string]openCount    // alerts opened in the hour, by owner
	lastPrune               time.Time
	work                    sync.WaitGroup // those goroutines
	limiters                map[string]*rate.Limiter
	failures                map[string]int // consecutive failed attempts, by tenant/channel
	active                  map[string]string
	lastScan                time.Time
}

type cachedRules struct {
	rules []Rule
	at    time.Time
}

type occurrence struct {
	at time.Time
	n  float64
}

type metrics struct {
	raised, sent, failed *prometheus.CounterVec
	dropped, capped      prometheus.Counter
}

// eventBuffer bounds events waiting for evaluation; a raise past it is dropped and counted,
// never blocks the path that raised it.
const eventBuffer = 4096

// Open opens the stores; Run evaluates and delivers.
func Open(ctx context.Context, o Options) (*Service, error) {
	s := &Service{o: o, log: o.Logger, events: make(chan Event, eventBuffer), ruleCache: map[string]cachedRules{}, channelNames: map[string]cachedNames{},
		windows: map[string]*window{}, since: map[string]pendingLevel{}, seen: map[string]time.Time{}, levelOpen: map[string]string{},
		busy: map[string]bool{}, opens: map[string]openCount{},
		limiters: map[string]*rate.Limiter{}, failures: map[string]int{}, active: map[string]string{}}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	var err error
	if s.channels, err = o.Keyring.Sealed(ctx, channelsBucket, "notify-channel"); err != nil {
		return nil, err
	}
	if s.rules, err = o.Keyring.Sealed(ctx, rulesBucket, "notify-rule"); err != nil {
		return nil, err
	}
	if s.alerts, err = o.Keyring.Sealed(ctx, alertsBucket, "notify-alert"); err != nil {
		return nil, err
	}
	s.m = metrics{
		raised: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "penstock_alerts_raised_total",
			Help: "Alerts opened, by event."}, []string{"event"}),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "penstock_alert_notices_sent_total",
			Help: "Notices a channel accepted, by channel type."}, []string{"type"}),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "penstock_alert_notices_failed_total",
			Help: "Failed attempts to deliver a notice (each is retried), by channel type."}, []string{"type"}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "penstock_notify_events_dropped_total",
			Help: "Events not evaluated because the evaluation queue was full."}),
		capped: prometheus.NewCounter(prometheus.CounterOpts{Name: "penstock_alerts_capped_total",
			Help: "Alerts not opened because their owner's rules opened 500 in the hour on this node."}),
	}
	if o.Registry != nil {
		o.Registry.MustRegister(s.m.raised, s.m.sent, s.m.failed, s.m.dropped, s.m.capped)
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s, nil
}

// Close stops Events and Ticks (their caller waits for them).
func (s *Service) Close() { s.cancel() }

// Raise hands an event to evaluation and reports whether it was queued. It never blocks: a
// full queue drops it (counted).
func (s *Service) Raise(e Event) bool {
	if s == nil {
		return false
	}
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	if e.Value == 0 {
		if k, ok := KindOf(e.Kind); ok && !k.Level {
			e.Value = 1
		}
	}
	select {
	case s.events <- e:
		return true
	default:
		s.m.dropped.Inc()
		return false
	}
}

// PutChannel creates or replaces a channel; credentials left out keep their stored values.
func (s *Service) PutChannel(ctx context.Context, tenant string, c Channel) (View, error) {
	var old stored
	rev, err := getJSON(ctx, s.channels, tenant, c.Name, &old)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return View{}, err
	}
	if rev != 0 {
		c.keep(old.channel())
	} else if n, err := ids(ctx, s.channels, tenant, ""); err != nil {
		return View{}, err
	} else if len(n) >= MaxChannels {
		return View{}, invalid("name", "at most %d channels", MaxChannels)
	}
	if err := c.Normalize(); err != nil {
		return View{}, err
	}
	if _, err := putJSON(ctx, s.channels, tenant, c.Name, c.stored(), rev); err != nil {
		return View{}, err
	}
	s.forgetChannels(tenant)
	return c.View(), nil
}

// Channel reads one channel.
func (s *Service) Channel(ctx context.Context, tenant, name string) (Channel, error) {
	if !validName(name) {
		return Channel{}, ErrNotFound
	}
	var st stored
	if _, err := getJSON(ctx, s.channels, tenant, name, &st); err != nil {
		return Channel{}, err
	}
	return st.channel(), nil
}

// Channels lists a tenant's channels, without credentials.
func (s *Service) Channels(ctx context.Context, tenant string) ([]View, error) {
	names, err := ids(ctx, s.channels, tenant, "")
	if err != nil {
		return nil, err
	}
	out := []View{}
	for _, n := range names {
		c, err := s.Channel(ctx, tenant, n)
		if err != nil {
			return nil, err
		}
		out = append(out, c.View())
	}
	return out, nil
}

// forgetChannels drops the cached names of a tenant's channels (the built-in rule's).
func (s *Service) forgetChannels(tenant string) {
	s.mu.Lock()
	delete(s.channelNames, tenant)
	s.mu.Unlock()
}

// DeleteChannel removes a channel. Notices still pending for it are abandoned when their
// turn comes (the channel is gone).
func (s *Service) DeleteChannel(ctx context.Context, tenant, name string) error {
	if !validName(name) {
		return ErrNotFound
	}
	err := s.channels.Delete(ctx, scopeOf(tenant), name)
	s.forgetChannels(tenant)
	if errors.Is(err, keyring.ErrNotFound) {
		return ErrNotFound
	}
	return err
}

// PutRule creates or replaces a rule; its channels must exist.
func (s *Service) PutRule(ctx context.Context, tenant string, r Rule) (Rule, error) {
	if err := r.Normalize(tenant == ""); err != nil {
		return Rule{}, err
	}
	for i, ch := range append(slices.Clone(r.Channels), stepChannels(r)...) {
		if _, err := s.Channel(ctx, tenant, ch); errors.Is(err, ErrNotFound) {
			field := "channels"
			if i >= len(r.Channels) {
				field = "escalate"
			}
			return Rule{}, invalid(field, "channel %q does not exist", ch)
		} else if err != nil {
			return Rule{}, err
		}
	}
	var old Rule
	rev, err := getJSON(ctx, s.rules, tenant, r.Name, &old)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return Rule{}, err
	}
	if rev == 0 {
		if n, err := ids(ctx, s.rules, tenant, ""); err != nil {
			return Rule{}, err
		} else if len(n) >= MaxRules {
			return Rule{}, invalid("name", "at most %d rules", MaxRules)
		}
	}
	if _, err := putJSON(ctx, s.rules, tenant, r.Name, r, rev); err != nil {
		return Rule{}, err
	}
	s.forgetRules(tenant)
	return r, nil
}

func stepChannels(r Rule) []string {
	var out []string
	for _, st := range r.Escalate {
		out = append(out, st.Channels...)
	}
	return out
}

// Rules lists a tenant's rules.
func (s *Service) Rules(ctx context.Context, tenant string) ([]Rule, error) {
	names, err := ids(ctx, s.rules, tenant, "")
	if err != nil {
		return nil, err
	}
	out := []Rule{}
	for _, n := range names {
		var r Rule
		if _, err := getJSON(ctx, s.rules, tenant, n, &r); err != nil {
			if errors.Is(err, ErrNotFound) {
				continue
			}
			return nil, err
		}
		if err := r.Normalize(tenant == ""); err != nil {
			s.log.Warn("stored rule does not validate; skipped", "tenant", tenant, "rule", n, "error", err)
			continue
		}
		out = append(out, r)
	}
	return out, nil
}

// DeleteRule removes a rule; its open alerts resolve at the next tick.
func (s *Service) DeleteRule(ctx context.Context, tenant, name string) error {
	if !validName(name) {
		return ErrNotFound
	}
	err := s.rules.Delete(ctx, scopeOf(tenant), name)
	if errors.Is(err, keyring.ErrNotFound) {
		return ErrNotFound
	}
	s.forgetRules(tenant)
	return err
}

func (s *Service) forgetRules(tenant string) {
	s.mu.Lock()
	delete(s.ruleCache, tenant)
	if s.ruleOwners != nil {
		s.ruleOwners[tenant] = true // read again at the next use, until the next scan says
	}
	s.mu.Unlock()
}

// ruleCacheFor is how long rules read from the store are used before being read again (other
// nodes' changes reach this one within it).
const ruleCacheFor = 10 * time.Second

func (s *Service) rulesOf(ctx context.Context, tenant string) []Rule {
	s.mu.Lock()
	c, ok := s.ruleCache[tenant]
	none := s.ruleOwners != nil && !s.ruleOwners[tenant]
	s.mu.Unlock()
	if ok && time.Since(c.at) < ruleCacheFor {
		return c.rules
	}
	if none {
		return nil // no rules as of the last scan (a rule put on this node is added at once)
	}
	rules, err := s.Rules(ctx, tenant)
	if err != nil {
		if !errors.Is(err, keyring.ErrDestroyed) {
			s.log.Warn("read rules", "tenant", tenant, "error", err)
		}
		return c.rules
	}
	s.mu.Lock()
	s.ruleCache[tenant] = cachedRules{rules: rules, at: time.Now()}
	s.mu.Unlock()
	return rules
}

// watchRules keeps, on every node, which tenants have rules, and forgets a tenant's cached
// rules as soon as any node changes one of them. Until the first listing is read (or if the
// watch cannot start) every tenant's rules are read from the store.
func (s *Service) watchRules(ctx context.Context) {
	watched := map[string]bool{} // owners seen by the watch, under s.mu
	err := s.rules.Watch(ctx, s.log, func(sc keyring.Scope, _ string, _ bool) {
		owner := sc.Tenant
		if owner == PlatformTenant {
			owner = ""
		}
		s.mu.Lock()
		watched[owner] = true
		if s.ruleOwners != nil {
			s.ruleOwners[owner] = true
		}
		delete(s.ruleCache, owner)
		s.mu.Unlock()
	})
	if err != nil {
		s.log.Warn("watch rules; every tenant's rules are read from the store", "error", err)
		return
	}
	owners, err := s.rules.Tenants(ctx)
	if err != nil {
		s.log.Warn("list rules; every tenant's rules are read from the store", "error", err)
		return
	}
	if owners[PlatformTenant] {
		owners[""] = true
	}
	s.mu.Lock()
	for o := range watched { // written between the watch's start and the listing
		owners[o] = true
	}
	s.ruleOwners = owners
	s.mu.Unlock()
}

// Alert reads one alert.
func (s *Service) Alert(ctx context.Context, tenant, id string) (Alert, error) {
	if !ValidAlertID(id) {
		return Alert{}, ErrNotFound
	}
	var a Alert
	_, err := getJSON(ctx, s.alerts, tenant, id, &a)
	return a, err
}

// Alerts lists a tenant's alerts, newest first; with state, only those in it.
func (s *Service) Alerts(ctx context.Context, tenant, state string) ([]Alert, error) {
	list, err := ids(ctx, s.alerts, tenant, "a-")
	if err != nil {
		return nil, err
	}
	out := []Alert{}
	for _, id := range list {
		a, err := s.Alert(ctx, tenant, id)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if state == "" || a.State == state || state == "unacknowledged" && a.State == Firing && a.Acked.IsZero() {
			out = append(out, a)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Opened.After(out[j].Opened) })
	return out, nil
}

// Ack acknowledges an alert: its escalation stops; its resolve notice still goes out.
func (s *Service) Ack(ctx context.Context, tenant, id, by string) (Alert, error) {
	if !ValidAlertID(id) {
		return Alert{}, ErrNotFound
	}
	a, err := s.update(ctx, tenant, id, func(a *Alert) error {
		if a.State != Firing {
			return fmt.Errorf("%w: alert %s is %s", ErrInvalid, id, a.State)
		}
		if !a.Acked.IsZero() {
			return errNoChange // the first acknowledgement stands; nothing is written
		}
		a.Acked, a.AckedBy = time.Now().UTC(), by
		return nil
	})
	if errors.Is(err, errNoChange) {
		return a, nil
	}
	return a, err
}

// AckWithKey acknowledges an alert through its link: key is the link's secret. A wrong key
// is ErrNotFound, as for an alert that does not exist.
func (s *Service) AckWithKey(ctx context.Context, tenant, id, key string) (Alert, error) {
	a, err := s.Alert(ctx, tenant, id)
	if err != nil {
		return Alert{}, err
	}
	if a.AckKey == "" || subtle.ConstantTimeCompare([]byte(a.AckKey), []byte(key)) != 1 {
		return Alert{}, ErrNotFound
	}
	return s.Ack(ctx, tenant, id, "ack-link")
}

// update applies change to the stored alert, reading it again after a concurrent write.
func (s *Service) update(ctx context.Context, tenant, id string, change func(*Alert) error) (Alert, error) {
	for range 50 {
		var a Alert
		rev, err := getJSON(ctx, s.alerts, tenant, id, &a)
		if err != nil {
			return Alert{}, err
		}
		if err := change(&a); err != nil {
			return a, err
		}
		if _, err := putJSON(ctx, s.alerts, tenant, id, a, rev); errors.Is(err, ErrConflict) {
			continue
		} else if err != nil {
			return Alert{}, err
		}
		s.track(tenant, a)
		return a, nil
	}
	return Alert{}, ErrConflict
}

// track keeps the alerts that need the loop's attention (firing, or with notices pending).
func (s *Service) track(tenant string, a Alert) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.ticking { // another node delivers: its scan finds the alert
		return
	}
	if a.State == Firing || a.pending() {
		s.active[a.ID] = tenant
	} else {
		delete(s.active, a.ID)
	}
}

// TestChannel sends a test notice through a channel now and says whether it was accepted.
func (s *Service) TestChannel(ctx context.Context, tenant, name string) error {
	c, err := s.Channel(ctx, tenant, name)
	if err != nil {
		return err
	}
	now := time.Now().UTC()
	a := &Alert{ID: "a-0000000000000000", Tenant: tenant, Rule: "test", Event: "notify.test", Resource: "channel:" + name,
		Severity: "info", State: Firing, Opened: now, Last: now, Unit: "notices", Value: 1, Count: 1}
	err = send(ctx, s.dialer(tenant), c, message{alert: a, kind: Test, seq: 0})
	s.count(c.Type, err)
	return err
}

func (s *Service) count(typ string, err error) {
	if err != nil {
		s.m.failed.WithLabelValues(typ).Inc()
	} else {
		s.m.sent.WithLabelValues(typ).Inc()
	}
}

// dialer dials for a tenant's channels (the platform's with tenant "").
func (s *Service) dialer(tenant string) *egress.Dialer {
	return &egress.Dialer{Current: func() egress.Policy { return s.o.Egress(tenant) }}
}
