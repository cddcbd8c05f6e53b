package notify

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"path"
	"slices"
	"time"

	"github.com/penstock/penstock/internal/keyring"
)

type hit struct {
	owner string // "" for a platform rule
	rule  Rule
	kind  Kind
	ev    Event
	key   string // the slot of the alert
}

// mk is the in-memory key of a rule on a resource: its owner and slot.
func (h *hit) mk() string { return h.owner + "|" + h.key }

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
		if e.Tenant != "" && !k.Platform {
			owners = append(owners, e.Tenant)
		}
		for _, owner := range owners {
			rules := s.rulesOf(ctx, owner)
			if r, ok := s.builtin(ctx, owner, e.Kind, rules); ok {
				rules = append(slices.Clip(rules), r)
			}
			for _, r := range rules {
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

// window is the recent occurrences of one rule on one resource.
type window struct {
	span time.Duration
	occ  []occurrence
}

// occur counts occurrences in the rule's window: an open alert takes them into its count; if
// none is open, enough of them within the window open one.
func (s *Service) occur(ctx context.Context, h *hit) error {
	now := h.ev.Time
	s.mu.Lock()
	w := s.windows[h.mk()]
	if w == nil {
		w = &window{}
		s.windows[h.mk()] = w
	}
	w.span = h.rule.window
	kept := w.occ[:0]
	sum := h.ev.Value
	for _, o := range w.occ {
		if now.Sub(o.at) < w.span {
			kept = append(kept, o)
			sum += o.n
		}
	}
	w.occ = append(kept, occurrence{at: now, n: h.ev.Value})
	s.mu.Unlock()
	// A node that lost the race to open the alert counts these occurrences in the one that
	// won (a read of the slot may lag a write made on another node: a few rounds).
	for range 5 {
		id, err := s.openAlert(ctx, h.owner, h.key)
		if err != nil {
			return err
		}
		if id != "" {
			_, err := s.update(ctx, h.owner, id, func(a *Alert) error {
				if a.State != Firing {
					return errNoChange // resolved meanwhile: these occurrences open the next one
				}
				a.Count += int64(h.ev.Value)
				a.Value = max(a.Value, sum)
				a.Last = now.UTC()
				return nil
			})
			if !errors.Is(err, errNoChange) {
				return err
			}
		}
		if sum < max(h.rule.Threshold, 1) {
			return nil
		}
		if err := s.open(ctx, h, sum); !errors.Is(err, errSlotTaken) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
	return ErrConflict
}

// pendingLevel is a level over its threshold, not long enough yet for the rule's "for".
type pendingLevel struct{ first, last time.Time }

// level compares a measurement with the rule's threshold: over it for the rule's "for" opens
// an alert (or updates the open one); under it resolves the open one. Levels are measured
// by the node that runs the ticks, which keeps which of them are open in memory between scans.
func (s *Service) level(ctx context.Context, h *hit) error {
	now := h.ev.Time
	s.mu.Lock()
	id, cached := s.levelOpen[h.mk()]
	cached = cached && !h.kind.PerRun // per-run levels come to any node: read the store
	s.mu.Unlock()
	if !cached {
		var err error
		if id, err = s.openAlert(ctx, h.owner, h.key); err != nil {
			return err
		}
		if !h.kind.PerRun {
			s.mu.Lock()
			s.levelOpen[h.mk()] = id
			s.mu.Unlock()
		}
	}
	if id != "" {
		s.mu.Lock()
		s.seen[id] = now
		s.mu.Unlock()
	}
	if !h.rule.over(h.kind, h.ev.Value) {
		s.mu.Lock()
		delete(s.since, h.mk())
		s.mu.Unlock()
		if id == "" {
			return nil
		}
		return s.resolve(ctx, h.owner, id, &h.rule)
	}
	if id != "" {
		// Measured every tick: written when the value changed, else once a minute.
		_, err := s.update(ctx, h.owner, id, func(a *Alert) error {
			if a.State != Firing {
				return errNoChange
			}
			if a.Value == h.ev.Value && now.Sub(a.Last) < time.Minute {
				return errSame
			}
			a.Value, a.Last = h.ev.Value, now.UTC()
			a.Count++
			return nil
		})
		if errors.Is(err, errSame) {
			return nil
		}
		if !errors.Is(err, errNoChange) {
			return err
		}
		s.mu.Lock()
		delete(s.levelOpen, h.mk())
		s.mu.Unlock()
		return nil // resolved by someone else: the next measurement decides anew
	}
	s.mu.Lock()
	p, ok := s.since[h.mk()]
	if !ok {
		p.first = now
	}
	p.last = now
	s.since[h.mk()] = p
	s.mu.Unlock()
	if now.Sub(p.first) < h.rule.hold {
		return nil
	}
	if err := s.open(ctx, h, h.ev.Value); !errors.Is(err, errSlotTaken) {
		return err
	}
	return nil // levels are measured on one node: the next measurement finds the alert
}

// openAlert finds the open alert of a slot, or "". A slot whose alert is resolved or gone (a
// crash between the resolve and the slot's removal) is removed, if nobody changed it since.
func (s *Service) openAlert(ctx context.Context, owner, key string) (string, error) {
	var sl slot
	rev, err := getJSON(ctx, s.alerts, owner, key, &sl)
	if errors.Is(err, ErrNotFound) {
		return "", nil
	} else if err != nil {
		return "", err
	}
	a, err := s.Alert(ctx, owner, sl.Alert)
	if errors.Is(err, ErrNotFound) || err == nil && a.State != Firing {
		if err := s.alerts.DeleteAt(ctx, scopeOf(owner), key, rev); err != nil && !errors.Is(err, keyring.ErrConflict) &&
			!errors.Is(err, keyring.ErrNotFound) {
			return "", err
		}
		return "", nil
	}
	return sl.Alert, err
}

// openingGrace is how long an alert may stay "opening" (written, its slot not yet taken)
// before the loop decides whether it is an orphan of a crash or of a lost race.
const openingGrace = time.Minute

// open makes a new alert with notices to the rule's first channels. The alert is written
// first, marked opening, then the slot is taken by compare and set: a slot always names a
// stored alert, and the loser of a race between nodes deletes its own.
func (s *Service) open(ctx context.Context, h *hit, value float64) error {
	now := h.ev.Time.UTC()
	if !s.mayOpen(h.owner, now) {
		s.m.capped.Inc()
		return nil
	}
	id := newAlertID()
	a := Alert{ID: id, Tenant: h.owner, Rule: h.rule.Name, Event: h.ev.Kind, Environment: h.ev.Environment,
		Application: h.ev.Application, Resource: h.ev.Resource, Detail: h.ev.Detail, Severity: h.rule.Severity, State: Firing,
		Value: value, Threshold: h.rule.Threshold, Unit: h.kind.Unit, Count: 1, Opened: now, Last: now, Slot: h.key, Opening: true}
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
		return err
	}
	if _, err := putJSON(ctx, s.alerts, h.owner, h.key, slot{Alert: id}, 0); err != nil {
		_ = s.alerts.Delete(ctx, scopeOf(h.owner), id)
		if errors.Is(err, ErrConflict) {
			return errSlotTaken // another node opened it meanwhile: the caller counts there
		}
		return err
	}
	a, err := s.update(ctx, h.owner, id, func(a *Alert) error { a.Opening = false; return nil })
	if err != nil {
		return err // the loop finishes the opening after openingGrace
	}
	s.mu.Lock()
	delete(s.since, h.mk())
	if h.kind.Level {
		s.levelOpen[h.mk()] = id
		s.seen[id] = now
	}
	s.mu.Unlock()
	s.m.raised.WithLabelValues(a.Event).Inc()
	s.audit(ctx, h.owner, "alert.opened", a, nil)
	return nil
}

// maxOpensPerHour bounds the alerts one owner's rules open in an hour on one node: rules that
// match a resource per name a caller chooses cannot flood the store and the channels.
const maxOpensPerHour = 500

type openCount struct {
	from time.Time
	n    int
}

func (s *Service) mayOpen(owner string, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.opens[owner]
	if now.Sub(c.from) >= time.Hour {
		c = openCount{from: now}
	}
	if c.n >= maxOpensPerHour {
		return false
	}
	c.n++
	s.opens[owner] = c
	return true
}

// finishOpening decides the fate of an alert left opening past openingGrace: open if its slot
// names it, else deleted (the loser of a race, or a crash before the slot was taken).
func (s *Service) finishOpening(ctx context.Context, owner string, a Alert) error {
	var sl slot
	if _, err := getJSON(ctx, s.alerts, owner, a.Slot, &sl); err != nil && !errors.Is(err, ErrNotFound) {
		return err
	} else if sl.Alert != a.ID {
		return s.alerts.Delete(ctx, scopeOf(owner), a.ID)
	}
	opened, err := s.update(ctx, owner, a.ID, func(a *Alert) error { a.Opening = false; return nil })
	if err != nil {
		return err
	}
	s.m.raised.WithLabelValues(opened.Event).Inc()
	s.audit(ctx, owner, "alert.opened", opened, nil)
	return nil
}

// resolve closes an alert and queues its resolve notice to every channel told of it.
func (s *Service) resolve(ctx context.Context, owner, id string, r *Rule) error {
	a, err := s.update(ctx, owner, id, func(a *Alert) error {
		if a.State != Firing {
			return errNoChange
		}
		now := time.Now().UTC()
		a.State, a.Resolved, a.Opening = Resolved, now, false
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
	if rev, err := getJSON(ctx, s.alerts, owner, a.Slot, &sl); err == nil && sl.Alert == id {
		_ = s.alerts.DeleteAt(ctx, scopeOf(owner), a.Slot, rev)
	}
	s.mu.Lock()
	delete(s.seen, id)
	delete(s.levelOpen, owner+"|"+a.Slot)
	s.mu.Unlock()
	s.audit(ctx, owner, "alert.resolved", a, nil)
	return nil
}

var (
	errNoChange  = errors.New("no change")
	errSame      = errors.New("same value")
	errSlotTaken = errors.New("opened by another node")
)

func newAlertID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return "a-" + hex.EncodeToString(b)
}
