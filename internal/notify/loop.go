package notify

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	"golang.org/x/time/rate"

	"github.com/penstock/penstock/internal/audit"
	"github.com/penstock/penstock/internal/keyring"
)

// Events evaluates raised events until ctx ends or the service closes. Every node runs it:
// an alert is opened once whichever node sees the burst (the slot is created by compare and
// set).
func (s *Service) Events(ctx context.Context) {
	s.watchRules(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.ctx.Done():
			return
		case e := <-s.events:
			// A burst is evaluated together: the events waiting now, summed per rule and
			// resource, are one update each.
			batch := []Event{e}
			for more := true; more && len(batch) < eventBuffer; {
				select {
				case e := <-s.events:
					batch = append(batch, e)
				default:
					more = false
				}
			}
			s.evaluate(ctx, batch)
			s.mu.Lock()
			due := time.Since(s.lastPrune) >= scanEvery
			s.mu.Unlock()
			if due {
				s.prune(time.Now())
			}
		}
	}
}

// Ticks measures levels, resolves, escalates and delivers every notify.tick until ctx ends or
// the service closes. One node runs it (in a cluster, the holder of its lease).
//
// Delivery never waits for the rest: each tick hands every tenant's due alerts to a goroutine
// of their own, and the scan of stored alerts and the measurement of levels run in one
// goroutine beside it, a round at a time.
func (s *Service) Ticks(ctx context.Context) {
	s.mu.Lock()
	s.ticking = true
	s.mu.Unlock()
	defer func() {
		s.work.Wait()
		s.mu.Lock()
		s.ticking, s.active, s.levelOpen = false, map[string]string{}, map[string]string{}
		s.mu.Unlock()
	}()
	s.lastScan = time.Time{} // read every stored alert at once: this node may have just taken over
	// Alerts other nodes open (or change) are taken up as they are written, not at the next scan.
	if err := s.alerts.Watch(ctx, s.log, func(sc keyring.Scope, id string, deleted bool) {
		if deleted || !ValidAlertID(id) {
			return
		}
		owner := sc.Tenant
		if owner == PlatformTenant {
			owner = ""
		}
		s.mu.Lock()
		if s.ticking {
			s.active[id] = owner
		}
		s.mu.Unlock()
	}); err != nil {
		s.log.Warn("watch alerts; other nodes' alerts are taken up by the scan", "error", err)
	}
	s.measure(ctx)
	t := time.NewTicker(s.o.Config.Tick)
	defer t.Stop()
	measuring := make(chan struct{}, 1)
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		s.dispatch(ctx)
		select {
		case measuring <- struct{}{}:
			s.work.Add(1)
			go func() {
				defer s.work.Done()
				defer func() { <-measuring }()
				s.measure(ctx)
			}()
		default: // the last round is still measuring
		}
	}
}

// scanEvery is how often the loop reads every stored alert: those other nodes opened, and
// resolved ones past notify.keep_resolved to delete.
const scanEvery = 30 * time.Second

// levelStale is how long a level alert may go without a measurement (its queue deleted, its
// rule's filter changed) before it resolves.
const levelStale = 5 * time.Minute

// measure scans the stored alerts when due, then measures the levels rules watch.
func (s *Service) measure(ctx context.Context) {
	if now := time.Now(); now.Sub(s.lastScan) >= scanEvery {
		s.scan(ctx, now)
		s.lastScan = now
	}
	if s.o.Levels != nil {
		if want := s.levelRules(ctx); len(want) > 0 {
			s.evaluate(ctx, s.o.Levels(ctx, want))
		}
	}
}

// dispatch hands each owner's alerts to a goroutine that resolves, escalates and delivers
// them, unless one is still at it.
func (s *Service) dispatch(ctx context.Context) {
	byOwner := map[string][]string{}
	s.mu.Lock()
	for id, owner := range s.active {
		byOwner[owner] = append(byOwner[owner], id)
	}
	s.mu.Unlock()
	// Each owner's alerts are attended by a goroutine of their own: a channel that answers
	// slowly (up to 30 s an attempt) holds back its owner's notices, nobody else's.
	for owner, ids := range byOwner {
		s.mu.Lock()
		if s.busy[owner] || len(s.busy) >= maxAttending {
			s.mu.Unlock()
			continue
		}
		s.busy[owner] = true
		s.mu.Unlock()
		s.work.Add(1)
		go func() {
			defer s.work.Done()
			defer func() { s.mu.Lock(); delete(s.busy, owner); s.mu.Unlock() }()
			for _, id := range ids {
				if ctx.Err() != nil {
					return
				}
				if err := s.attend(ctx, owner, id, time.Now()); err != nil && ctx.Err() == nil {
					if errors.Is(err, ErrNotFound) || errors.Is(err, keyring.ErrDestroyed) {
						s.mu.Lock()
						delete(s.active, id)
						s.mu.Unlock()
						continue
					}
					s.log.Warn("alert", "tenant", owner, "alert", id, "error", err)
				}
			}
		}()
	}
}

// maxAttending bounds the owners attended at once.
const maxAttending = 32

// levelRules lists, by tenant, the level events rules look at ("" for platform rules: any
// tenant).
func (s *Service) levelRules(ctx context.Context) map[string][]string {
	out := map[string][]string{}
	s.mu.Lock()
	owners := make([]string, 0, len(s.ruleOwners))
	for o := range s.ruleOwners {
		if o != PlatformTenant {
			owners = append(owners, o)
		}
	}
	s.mu.Unlock()
	for _, t := range owners {
		for _, r := range s.rulesOf(ctx, t) {
			if k, _ := KindOf(r.Event); k.Level {
				out[t] = append(out[t], r.Event)
			}
		}
	}
	return out
}

// scan reads every stored alert: it takes up those that need attention and deletes resolved
// ones kept long enough. It also forgets what memory holds of quiet rules and resources.
func (s *Service) scan(ctx context.Context, now time.Time) {
	owners, err := s.alerts.Tenants(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("scan alerts", "error", err)
		}
		return
	}
	s.mu.Lock()
	s.levelOpen = map[string]string{}
	s.mu.Unlock()
	s.prune(now)
	for o := range owners {
		owner := o
		if o == PlatformTenant {
			owner = ""
		}
		list, err := ids(ctx, s.alerts, owner, "a-")
		if err != nil {
			if !errors.Is(err, keyring.ErrDestroyed) && ctx.Err() == nil {
				s.log.Warn("scan alerts", "tenant", owner, "error", err)
			}
			continue
		}
		for _, id := range list {
			a, err := s.Alert(ctx, owner, id)
			if err != nil {
				continue
			}
			if a.State == Resolved && !a.pending() && now.Sub(a.Resolved) > s.o.Config.KeepResolved {
				_ = s.alerts.Delete(ctx, scopeOf(owner), id)
				continue
			}
			s.track(owner, a)
		}
	}
}

// prune forgets what memory holds of quiet rules and resources: occurrence windows past their
// span, levels no longer over their threshold, measurements of alerts long gone.
func (s *Service) prune(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastPrune = now
	for k, w := range s.windows {
		if len(w.occ) == 0 || now.Sub(w.occ[len(w.occ)-1].at) >= w.span {
			delete(s.windows, k)
		}
	}
	for k, p := range s.since {
		if now.Sub(p.last) >= levelStale {
			delete(s.since, k)
		}
	}
	for id, t := range s.seen {
		if now.Sub(t) >= 2*levelStale {
			delete(s.seen, id)
		}
	}
}

// attend resolves, escalates and delivers one alert.
func (s *Service) attend(ctx context.Context, owner, id string, now time.Time) error {
	a, err := s.Alert(ctx, owner, id)
	if err != nil {
		return err
	}
	if a.State != Firing && !a.pending() {
		s.track(owner, a) // nothing left to do: no longer attended
		return nil
	}
	if a.Opening {
		if now.Sub(a.Opened) < openingGrace {
			return nil
		}
		return s.finishOpening(ctx, owner, a)
	}
	if a.State == Firing {
		r := s.rule(ctx, owner, a.Rule)
		k, _ := KindOf(a.Event)
		s.mu.Lock()
		seen, ok := s.seen[id]
		if !ok { // not measured by this node yet (opened elsewhere, or before a restart): from its last update
			seen = a.Last
			s.seen[id] = seen
		}
		s.mu.Unlock()
		switch {
		case r == nil || r.Event != a.Event:
			return s.resolve(ctx, owner, id, nil) // the rule is gone: nobody is told
		case !k.Level && now.Sub(a.Last) >= r.window:
			return s.resolve(ctx, owner, id, r)
		case k.Level && !k.PerRun && now.Sub(later(seen, a.Last)) >= levelStale:
			return s.resolve(ctx, owner, id, r)
		case a.Acked.IsZero() && a.Step < len(r.Escalate) && now.Sub(a.Opened) >= r.Escalate[a.Step].after:
			step := r.Escalate[a.Step]
			if a, err = s.update(ctx, owner, id, func(a *Alert) error {
				if !a.Acked.IsZero() || a.State != Firing || a.Step >= len(r.Escalate) {
					return errNoChange
				}
				a.Step++
				a.addNotices(Escalated, step.Channels, now.UTC())
				return nil
			}); err != nil && !errors.Is(err, errNoChange) {
				return err
			}
		}
	}
	for _, n := range a.Notices {
		if n.State == Pending && !n.NextAt.After(now) {
			if err := s.deliver(ctx, owner, &a, n); err != nil {
				return err
			}
		}
	}
	return nil
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func (s *Service) rule(ctx context.Context, owner, name string) *Rule {
	rules := s.rulesOf(ctx, owner)
	for _, r := range rules {
		if r.Name == name {
			return &r
		}
	}
	if name == BuiltinRetentionRule {
		if r, ok := s.builtin(ctx, owner, RetentionWarning, rules); ok {
			return &r
		}
	}
	return nil
}

// RetentionWarning is the event of an environment retention will delete; BuiltinRetentionRule
// is the rule it takes in a tenant none of whose rules is for it: every channel of the
// tenant, without a resolve notice. A tenant that wants its warnings elsewhere (or nowhere)
// makes a rule for the event.
const (
	RetentionWarning     = "retention.warning"
	BuiltinRetentionRule = "builtin.retention"
)

// builtin is the built-in rule of a tenant for an event of kind, if it takes one.
func (s *Service) builtin(ctx context.Context, owner, kind string, rules []Rule) (Rule, bool) {
	if kind != RetentionWarning || owner == "" || owner == PlatformTenant {
		return Rule{}, false
	}
	for _, r := range rules {
		if r.Event == RetentionWarning {
			return Rule{}, false
		}
	}
	s.mu.Lock()
	c, ok := s.channelNames[owner]
	s.mu.Unlock()
	if !ok || time.Since(c.at) >= ruleCacheFor {
		names, err := ids(ctx, s.channels, owner, "")
		if err != nil {
			return Rule{}, false
		}
		c = cachedNames{names: names, at: time.Now()}
		s.mu.Lock()
		s.channelNames[owner] = c
		s.mu.Unlock()
	}
	if len(c.names) == 0 {
		return Rule{}, false
	}
	// Open for a day: a warning sent again within it (a retried run) is counted, not resent.
	return Rule{Name: BuiltinRetentionRule, Event: RetentionWarning, Severity: "warning", Channels: c.names, NoResolve: true,
		window: 24 * time.Hour}, true
}

type cachedNames struct {
	names []string
	at    time.Time
}

// deliver sends one notice and records the outcome: sent, or the next attempt's time.
func (s *Service) deliver(ctx context.Context, owner string, a *Alert, n Notice) error {
	now := time.Now()
	c, err := s.Channel(ctx, owner, n.Channel)
	if errors.Is(err, ErrNotFound) {
		s.audit(ctx, owner, "alert.notice_abandoned", *a, map[string]string{"channel": n.Channel, "seq": strconv.Itoa(n.Seq),
			"reason": "the channel was deleted"})
		return s.settle(ctx, owner, a.ID, n.Seq, func(n *Notice) {
			n.State, n.LastError = Abandoned, "the channel was deleted"
		})
	}
	if err != nil {
		return err
	}
	lk := owner + "/" + c.Name
	s.mu.Lock()
	lim, ok := s.limiters[lk]
	if !ok || lim.Limit() != rate.Limit(float64(c.PerHour)/3600) {
		lim = rate.NewLimiter(rate.Limit(float64(c.PerHour)/3600), max(1, c.PerHour/6))
		s.limiters[lk] = lim
	}
	s.mu.Unlock()
	if !lim.Allow() {
		if now.Sub(n.Created) >= s.o.Config.GiveUpAfter {
			s.audit(ctx, owner, "alert.notice_abandoned", *a, map[string]string{"channel": c.Name, "seq": strconv.Itoa(n.Seq),
				"reason": "over the channel's per_hour for notify.give_up_after"})
			return s.settle(ctx, owner, a.ID, n.Seq, func(n *Notice) {
				n.State, n.LastError = Abandoned, "over the channel's per_hour for notify.give_up_after"
			})
		}
		return nil // over the channel's rate: it waits for a later tick
	}
	sendErr := send(ctx, s.dialer(owner), c, message{alert: a, kind: n.Kind, seq: n.Seq, links: s.links(owner, a)})
	s.count(c.Type, sendErr)
	abandoned := false
	err = s.settle(ctx, owner, a.ID, n.Seq, func(n *Notice) {
		n.Attempts++
		if sendErr == nil {
			n.State, n.SentAt, n.LastError = Sent, now.UTC(), ""
			return
		}
		n.LastError = clip(sendErr.Error())
		if now.Sub(n.Created) >= s.o.Config.GiveUpAfter {
			n.State, abandoned = Abandoned, true
			return
		}
		n.NextAt = now.Add(s.backoff(n.Attempts)).UTC()
	})
	s.mu.Lock()
	if sendErr == nil {
		s.failures[lk] = 0
	} else {
		s.failures[lk]++
	}
	failing := s.failures[lk]
	s.mu.Unlock()
	if sendErr != nil {
		s.log.Warn("notice not delivered", "tenant", owner, "alert", a.ID, "channel", c.Name, "type", c.Type, "attempt", n.Attempts+1,
			"error", clip(sendErr.Error()))
		if failing >= s.o.Config.FailingAfter && c.Name != "" {
			s.Raise(Event{Kind: "notify.channel_failing", Resource: "channel:" + owner + "/" + c.Name, Value: 1})
		}
	}
	if abandoned {
		s.audit(ctx, owner, "alert.notice_abandoned", *a, map[string]string{"channel": c.Name, "seq": strconv.Itoa(n.Seq)})
	}
	return err
}

// links are the alert's page and acknowledgement link, when notify.public_url is set.
func (s *Service) links(owner string, a *Alert) links {
	base := strings.TrimSuffix(s.o.Config.PublicURL, "/")
	if base == "" {
		return links{}
	}
	l := links{details: base + "/v1/alerts/" + a.ID}
	scope := PlatformTenant
	if owner != "" {
		l.details += "?tenant=" + owner
		scope = owner
	}
	if a.AckKey != "" && a.State == Firing && a.Acked.IsZero() {
		l.ack = base + "/v1/ack/" + scope + "/" + a.ID + "/" + a.AckKey
	}
	return l
}

// settle records a notice's outcome on the stored alert, unless another node settled it. It
// does not stop with ctx (a shutdown, a lost lease): a confirmation the channel gave is
// recorded if the store takes it within settleTimeout, a few attempts.
func (s *Service) settle(ctx context.Context, owner, id string, seq int, f func(*Notice)) error {
	var err error
	for attempt := range 3 {
		if attempt > 0 {
			time.Sleep(time.Duration(attempt) * 100 * time.Millisecond)
		}
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
		err = s.settleOnce(sctx, owner, id, seq, f)
		cancel()
		if err == nil || errors.Is(err, ErrNotFound) || errors.Is(err, keyring.ErrDestroyed) {
			return err
		}
	}
	return err
}

const settleTimeout = 5 * time.Second

func (s *Service) settleOnce(ctx context.Context, owner, id string, seq int, f func(*Notice)) error {
	_, err := s.update(ctx, owner, id, func(a *Alert) error {
		for i := range a.Notices {
			if a.Notices[i].Seq == seq {
				if a.Notices[i].State != Pending {
					return errNoChange
				}
				f(&a.Notices[i])
				return nil
			}
		}
		return errNoChange
	})
	if errors.Is(err, errNoChange) {
		return nil
	}
	return err
}

func (s *Service) backoff(attempts int) time.Duration {
	d := s.o.Config.RetryBase
	for i := 1; i < attempts && d < s.o.Config.RetryMax; i++ {
		d *= 2
	}
	return min(d, s.o.Config.RetryMax)
}

func clip(s string) string {
	if len(s) > 300 {
		return s[:300] + "..."
	}
	return s
}

func (s *Service) audit(ctx context.Context, owner, action string, a Alert, extra map[string]string) {
	if s.o.Audit == nil {
		return
	}
	d := map[string]string{"alert": a.ID, "rule": a.Rule, "event": a.Event, "resource": a.Resource, "value": num(a.Value),
		"count": strconv.FormatInt(a.Count, 10)}
	for k, v := range extra {
		d[k] = v
	}
	tenant := owner
	if tenant == PlatformTenant {
		tenant = ""
	}
	if _, err := s.o.Audit.Append(ctx, audit.Event{Actor: "system", Action: action, Tenant: tenant, Target: "alert/" + a.ID,
		Result: audit.ResultOK, Details: d}); err != nil {
		s.log.Warn("audit alert", "action", action, "error", err)
	}
}
