package notify

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"path"
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
		}
	}
}

// Ticks measures levels, resolves, escalates and delivers every notify.tick until ctx ends or
// the service closes. One node runs it (in a cluster, the holder of its lease).
func (s *Service) Ticks(ctx context.Context) {
	t := time.NewTicker(s.o.Config.Tick)
	defer t.Stop()
	s.lastScan = time.Time{} // read every stored alert at once: this node may have just taken over
	for {
		s.tick(ctx)
		select {
		case <-ctx.Done():
			return
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
	}
}

type hit struct {
	owner string // "" for a platform rule
	rule  Rule
	kind  Kind
	ev    Event
	key   string // the slot of the alert
}

// hits pairs events with the rules that look at them, summing occurrences of one rule on
// one resource.
func (s *Service) hits(ctx context.Context, batch []Event) []*hit {
	var out []*hit
	byKey := map[string]*hit{}
	for _, e := range batch {
		k, ok := KindOf(e.Kind)
		if !ok {
			continue
		}
		owners := []string{""}
		if e.Tenant != "" {
			owners = append(owners, e.Tenant)
		}
		for _, owner := range owners {
			for _, r := range s.rulesOf(ctx, owner) {
				if !r.matches(e) || owner == "" && r.Tenant != "" && !globMatch(r.Tenant, e.Tenant) {
					continue
				}
				key := slotID(r.Name, e.Tenant+"/"+e.Resource)
				if h, ok := byKey[owner+key]; ok && !k.Level {
					h.ev.Value += e.Value
					h.ev.Time = e.Time
					continue
				}
				h := &hit{owner: owner, rule: r, kind: k, ev: e, key: key}
				byKey[owner+key] = h
				out = append(out, h)
			}
		}
	}
	return out
}

func globMatch(pattern, s string) bool {
	ok, _ := path.Match(pattern, s)
	return ok
}

func (s *Service) evaluate(ctx context.Context, batch []Event) {
	for _, h := range s.hits(ctx, batch) {
		var err error
		if h.kind.Level {
			err = s.level(ctx, h)
		} else {
			err = s.occur(ctx, h)
		}
		if err != nil && ctx.Err() == nil {
			s.log.Warn("evaluate event", "tenant", h.ev.Tenant, "event", h.ev.Kind, "rule", h.rule.Name, "error", err)
		}
	}
}

// occur counts occurrences in the rule's window: an open alert takes them into its count; if
// none is open, enough of them within the window open one.
func (s *Service) occur(ctx context.Context, h *hit) error {
	now := h.ev.Time
	mk := h.owner + "|" + h.key
	s.mu.Lock()
	w := s.windows[mk][:0:0]
	sum := h.ev.Value
	for _, o := range s.windows[mk] {
		if now.Sub(o.at) < h.rule.window {
			w = append(w, o)
			sum += o.n
		}
	}
	s.windows[mk] = append(w, occurrence{at: now, n: h.ev.Value})
	s.mu.Unlock()
	id, err := s.openAlert(ctx, h.owner, h.key)
	if err != nil {
		return err
	}
	if id != "" {
		_, err := s.update(ctx, h.owner, id, func(a *Alert) error {
			a.Count += int64(h.ev.Value)
			a.Value = max(a.Value, sum)
			a.Last = now.UTC()
			return nil
		})
		return err
	}
	if sum < max(h.rule.Threshold, 1) {
		return nil
	}
	return s.open(ctx, h, sum)
}

// level compares a measurement with the rule's threshold: over it for the rule's "for" opens
// an alert (or updates the open one); under it resolves the open one.
func (s *Service) level(ctx context.Context, h *hit) error {
	mk := h.owner + "|" + h.key
	now := h.ev.Time
	id, err := s.openAlert(ctx, h.owner, h.key)
	if err != nil {
		return err
	}
	if id != "" {
		s.mu.Lock()
		s.seen[id] = now
		s.mu.Unlock()
	}
	if !h.rule.over(h.kind, h.ev.Value) {
		s.mu.Lock()
		delete(s.since, mk)
		s.mu.Unlock()
		if id == "" {
			return nil
		}
		return s.resolve(ctx, h.owner, id, &h.rule)
	}
	if id != "" {
		_, err := s.update(ctx, h.owner, id, func(a *Alert) error {
			a.Value, a.Last = h.ev.Value, now.UTC()
			a.Count++
			return nil
		})
		return err
	}
	s.mu.Lock()
	since, ok := s.since[mk]
	if !ok {
		since = now
		s.since[mk] = now
	}
	s.mu.Unlock()
	if now.Sub(since) < h.rule.hold {
		return nil
	}
	return s.open(ctx, h, h.ev.Value)
}

// openAlert finds the open alert of a slot, or "". A slot whose alert is missing (a crash
// between the two writes) is removed.
func (s *Service) openAlert(ctx context.Context, owner, key string) (string, error) {
	var sl slot
	if _, err := getJSON(ctx, s.alerts, owner, key, &sl); errors.Is(err, ErrNotFound) {
		return "", nil
	} else if err != nil {
		return "", err
	}
	a, err := s.Alert(ctx, owner, sl.Alert)
	if errors.Is(err, ErrNotFound) || err == nil && a.State != Firing {
		_ = s.alerts.Delete(ctx, scopeOf(owner), key)
		return "", nil
	}
	return sl.Alert, err
}

// open makes a new alert with notices to the rule's first channels.
func (s *Service) open(ctx context.Context, h *hit, value float64) error {
	now := h.ev.Time.UTC()
	id := newAlertID()
	if _, err := putJSON(ctx, s.alerts, h.owner, h.key, slot{Alert: id}, 0); errors.Is(err, ErrConflict) {
		return nil // another node (or an earlier batch) opened it: the next occurrence counts there
	} else if err != nil {
		return err
	}
	a := Alert{ID: id, Tenant: h.owner, Rule: h.rule.Name, Event: h.ev.Kind, Environment: h.ev.Environment,
		Application: h.ev.Application, Resource: h.ev.Resource, Severity: h.rule.Severity, State: Firing,
		Value: value, Threshold: h.rule.Threshold, Unit: h.kind.Unit, Count: 1, Opened: now, Last: now, Slot: h.key}
	if h.owner == "" && h.ev.Tenant != "" {
		a.Resource = h.ev.Tenant + "/" + h.ev.Resource // a platform rule on a tenant's resource
	}
	if !h.kind.Level {
		a.Count, a.Threshold = int64(value), max(h.rule.Threshold, 1)
	}
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	a.AckKey = hex.EncodeToString(key)
	a.addNotices(Raised, h.rule.Channels, now)
	if _, err := putJSON(ctx, s.alerts, h.owner, id, a, 0); err != nil {
		_ = s.alerts.Delete(ctx, scopeOf(h.owner), h.key)
		return err
	}
	s.track(h.owner, a)
	s.m.raised.WithLabelValues(a.Event).Inc()
	s.audit(ctx, h.owner, "alert.opened", a, nil)
	return nil
}

// resolve closes an alert and queues its resolve notice to every channel told of it.
func (s *Service) resolve(ctx context.Context, owner, id string, r *Rule) error {
	a, err := s.update(ctx, owner, id, func(a *Alert) error {
		if a.State != Firing {
			return errNoChange
		}
		now := time.Now().UTC()
		a.State, a.Resolved = Resolved, now
		if r != nil && !r.NoResolve {
			a.addNotices(Cleared, a.notified(), now)
		}
		return nil
	})
	if errors.Is(err, errNoChange) {
		return nil
	}
	if err != nil {
		return err
	}
	var sl slot
	if _, err := getJSON(ctx, s.alerts, owner, a.Slot, &sl); err == nil && sl.Alert == id {
		_ = s.alerts.Delete(ctx, scopeOf(owner), a.Slot)
	}
	s.mu.Lock()
	delete(s.seen, id)
	s.mu.Unlock()
	s.audit(ctx, owner, "alert.resolved", a, nil)
	return nil
}

var errNoChange = errors.New("no change")

// scanEvery is how often the loop reads every stored alert: those other nodes opened, and
// resolved ones past notify.keep_resolved to delete.
const scanEvery = 30 * time.Second

// levelStale is how long a level alert may go without a measurement (its queue deleted, its
// rule's filter changed) before it resolves.
const levelStale = 5 * time.Minute

func (s *Service) tick(ctx context.Context) {
	now := time.Now()
	if now.Sub(s.lastScan) >= scanEvery {
		s.scan(ctx, now)
		s.lastScan = now
	}
	if s.o.Levels != nil {
		if want := s.levelRules(ctx); len(want) > 0 {
			s.evaluate(ctx, s.o.Levels(ctx, want))
		}
	}
	s.mu.Lock()
	work := make(map[string]string, len(s.active))
	for id, owner := range s.active {
		work[id] = owner
	}
	s.mu.Unlock()
	for id, owner := range work {
		if ctx.Err() != nil {
			return
		}
		if err := s.attend(ctx, owner, id, now); err != nil && ctx.Err() == nil {
			if errors.Is(err, ErrNotFound) || errors.Is(err, keyring.ErrDestroyed) {
				s.mu.Lock()
				delete(s.active, id)
				s.mu.Unlock()
				continue
			}
			s.log.Warn("alert", "tenant", owner, "alert", id, "error", err)
		}
	}
}

// levelRules lists, by tenant, the level events rules look at ("" for platform rules: any
// tenant).
func (s *Service) levelRules(ctx context.Context) map[string][]string {
	out := map[string][]string{}
	owners := append([]string{""}, s.o.Tenants()...)
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
// ones kept long enough.
func (s *Service) scan(ctx context.Context, now time.Time) {
	for _, owner := range append([]string{""}, s.o.Tenants()...) {
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
			s.mu.Lock()
			if _, ok := s.seen[id]; !ok && a.State == Firing {
				s.seen[id] = now // a level alert gets levelStale from now to be measured again
			}
			s.mu.Unlock()
			s.track(owner, a)
		}
	}
}

// attend resolves, escalates and delivers one alert.
func (s *Service) attend(ctx context.Context, owner, id string, now time.Time) error {
	a, err := s.Alert(ctx, owner, id)
	if err != nil {
		return err
	}
	if a.State == Firing {
		r := s.rule(ctx, owner, a.Rule)
		k, _ := KindOf(a.Event)
		s.mu.Lock()
		seen, ok := s.seen[id]
		if !ok { // not measured by this node yet (opened just now, or elsewhere): from its last update
			seen = a.Last
			s.seen[id] = seen
		}
		s.mu.Unlock()
		switch {
		case r == nil || r.Event != a.Event:
			return s.resolve(ctx, owner, id, nil) // the rule is gone: nobody is told
		case !k.Level && now.Sub(a.Last) >= r.window:
			return s.resolve(ctx, owner, id, r)
		case k.Level && now.Sub(seen) >= levelStale:
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

func (s *Service) rule(ctx context.Context, owner, name string) *Rule {
	for _, r := range s.rulesOf(ctx, owner) {
		if r.Name == name {
			return &r
		}
	}
	return nil
}

// deliver sends one notice and records the outcome: sent, or the next attempt's time.
func (s *Service) deliver(ctx context.Context, owner string, a *Alert, n Notice) error {
	now := time.Now()
	c, err := s.Channel(ctx, owner, n.Channel)
	if errors.Is(err, ErrNotFound) {
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

// settle records a notice's outcome on the stored alert, unless another node settled it.
func (s *Service) settle(ctx context.Context, owner, id string, seq int, f func(*Notice)) error {
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
