// Package retention deletes environments nobody uses: it keeps when each was last used (from
// the activity tracker, written to the store within a minute, at most hourly when busy), warns the tenant 30, 7 and 1
// days before the deletion (notification channels, the audit log, the API's responses), and
// then deletes the environment through the lifecycle, which destroys its keys: what it held
// cannot be read again, from the store or from any backup. It never deletes an exempt
// environment, nor one less than retention.grace after its last warning.
package retention

import (
	"fmt"
	"time"

	"github.com/penstock/penstock/internal/activity"
)

// Stages are the warnings, in days before the deletion.
var Stages = []int{30, 7, 1}

const day = 24 * time.Hour

// Record is what the store keeps of one environment: when it was first seen, its last use
// of each kind, and the warnings sent for its current stretch of inactivity.
type Record struct {
	// Since is when retention first saw the environment (its creation, or the first run after
	// an upgrade): an environment never used counts as used then.
	Since    time.Time            `json:"since"`
	Activity map[string]time.Time `json:"activity,omitempty"`
	// Basis is the last use the warnings were sent for: a later use voids them.
	Basis    time.Time `json:"basis,omitzero"`
	Warnings []Warning `json:"warnings,omitempty"`
}

// Warning is one warning sent.
type Warning struct {
	Days     int       `json:"days"`
	At       time.Time `json:"at"`
	DeleteAt time.Time `json:"delete_at"`
}

// Last is the environment's last use and its kind ("created" for Since).
func (r *Record) Last() (time.Time, string) {
	last, kind := r.Since, "created"
	for i := activity.Kind(0); i < activity.NumKinds; i++ {
		if t := r.Activity[i.String()]; t.After(last) {
			last, kind = t, i.String()
		}
	}
	return last, kind
}

// merge takes in uses newer than those recorded; it reports whether anything changed.
func (r *Record) merge(t activity.Times) bool {
	changed := false
	for i, sec := range t {
		if sec == 0 {
			continue
		}
		at := time.Unix(sec, 0).UTC()
		k := activity.Kind(i).String()
		if at.After(r.Activity[k]) {
			if r.Activity == nil {
				r.Activity = map[string]time.Time{}
			}
			r.Activity[k] = at
			changed = true
		}
	}
	return changed
}

// current drops warnings that no longer hold: sent for an earlier stretch of inactivity (the
// environment was used since), or for a date earlier than the one inactiveAfter now gives (the
// policy was lengthened: the warnings start again for the new date, never a deletion on a
// date nobody was told). It reports whether it dropped any.
func (r *Record) current(inactiveAfter time.Duration) bool {
	if len(r.Warnings) == 0 {
		return false
	}
	last, _ := r.Last()
	told := r.Warnings[len(r.Warnings)-1].DeleteAt
	if last.After(r.Basis) || inactiveAfter > 0 && last.Add(inactiveAfter).After(told) {
		r.Warnings, r.Basis = nil, time.Time{}
		return true
	}
	return false
}

func (r *Record) sent(days int) (Warning, bool) {
	for _, w := range r.Warnings {
		if w.Days == days {
			return w, true
		}
	}
	return Warning{}, false
}

// Plan is what retention will do with one environment, as of now.
type Plan struct {
	// Due is when the environment has been unused for its inactive_after.
	Due time.Time
	// DeleteAt is when it will be deleted: at Due, but never before grace has passed since the
	// last (1-day) warning.
	DeleteAt time.Time
	// Warn is the warning to send now (days before the deletion), 0 for none.
	Warn int
	// Delete says it is to be deleted now.
	Delete bool
	// WarnAt are the warnings' dates (sent or planned), by stage.
	WarnAt map[int]time.Time
}

// plan decides, for a record whose warnings are current, with the environment's
// inactive_after (> 0) and the grace after the last warning.
func plan(r Record, inactiveAfter, grace time.Duration, now time.Time) Plan {
	last, _ := r.Last()
	p := Plan{Due: last.Add(inactiveAfter), WarnAt: map[int]time.Time{}}
	// The most urgent warning whose date has come is the one to send: after a long stop of
	// the scheduler (or a shortened policy) the 30-day warning is skipped for the 7-day one,
	// not sent after it.
	for _, d := range stages(inactiveAfter) {
		at := p.Due.Add(-lead(d, inactiveAfter))
		if w, ok := r.sent(d); ok {
			at = w.At
		}
		p.WarnAt[d] = at
		if !now.Before(at) {
			if _, ok := r.sent(d); !ok {
				p.Warn = d
			} else {
				p.Warn = 0 // a more urgent one went already
			}
		}
	}
	// The last warning is sent (or goes at its date, or now at the earliest); the deletion
	// follows it by grace at least.
	final := Stages[len(Stages)-1]
	w, warned := r.sent(final)
	if !warned {
		w.At = later(p.WarnAt[final], now)
	}
	p.DeleteAt = later(p.Due, w.At.Add(grace))
	p.Delete = warned && !now.Before(p.DeleteAt.Add(Settle))
	return p
}

// Settle is how long after its date an environment is deleted at the soonest: every node has
// written the use it noted before the date by then (each writes within activity's flush
// interval, 10 seconds; this is twice that), so a use just before the date is seen.
const Settle = 20 * time.Second

// No warning goes before half of the policy has passed without use: a busy environment's use
// is written to the store up to an hour late (per node), and a warning must never reach one
// in use. A 45-day policy warns 7 and 1 days before; a 12-hour one, once, 6 hours before.

// lead is how long before the deletion a warning of days goes.
func lead(days int, inactiveAfter time.Duration) time.Duration {
	return min(time.Duration(days)*day, inactiveAfter/2)
}

// stages are the warnings of an environment with this inactive_after: those that fall in the
// second half of the policy, and the last one always.
func stages(inactiveAfter time.Duration) []int {
	var out []int
	for i, d := range Stages {
		if time.Duration(d)*day <= inactiveAfter/2 || i == len(Stages)-1 {
			out = append(out, d)
		}
	}
	return out
}

// floor counts the environment as used at t (a restore of its tenant: what the backup said of
// its use is as old as the backup).
func (r *Record) floor(t time.Time) {
	if t.After(r.Since) {
		r.Since = t
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// Days formats a duration in days where it is whole days ("90d"), else as Go does.
func Days(d time.Duration) string {
	if d > 0 && d%day == 0 {
		return fmt.Sprintf("%dd", d/day)
	}
	return d.String()
}
