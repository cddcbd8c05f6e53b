package retention

import (
	"testing"
	"time"
)

func TestPlanWarnsOnEachDateThenDeletes(t *testing.T) {
	t0 := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	r := Record{Since: t0}
	after, grace := 90*day, day
	due := t0.Add(after)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	steps := []struct {
		now    time.Time
		warn   int
		delete bool
	}{
		{at(59 * day), 0, false},
		{at(60 * day), 30, false},
		{at(70 * day), 0, false},
		{at(83 * day), 7, false},
		{at(89*day - time.Minute), 0, false},
		{at(89 * day), 1, false},
		{due.Add(-time.Minute), 0, false},
		{due, 0, false},
		{due.Add(Settle), 0, true},
	}
	for i, s := range steps {
		p := plan(r, after, grace, s.now)
		if p.Warn != s.warn || p.Delete != s.delete {
			t.Fatalf("step %d at %s: warn %d delete %v, want %d %v", i, s.now, p.Warn, p.Delete, s.warn, s.delete)
		}
		if !p.DeleteAt.Equal(due) {
			t.Fatalf("step %d: deletion on %s, want %s", i, p.DeleteAt, due)
		}
		if p.Warn != 0 {
			r.Warnings = append(r.Warnings, Warning{Days: p.Warn, At: s.now, DeleteAt: p.DeleteAt})
			r.Basis = t0
		}
	}
}

// A scheduler that was stopped (or a policy shortened) sends the most urgent warning only,
// and the deletion waits the grace after it.
func TestPlanLateWarningPostponesTheDeletion(t *testing.T) {
	t0 := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	r := Record{Since: t0}
	now := t0.Add(200 * day)
	p := plan(r, 90*day, day, now)
	if p.Warn != 1 || p.Delete || !p.DeleteAt.Equal(now.Add(day)) {
		t.Fatalf("overdue, never warned: %+v", p)
	}
	r.Warnings = []Warning{{Days: 1, At: now, DeleteAt: p.DeleteAt}}
	if p := plan(r, 90*day, day, now.Add(day-time.Second)); p.Delete || p.Warn != 0 {
		t.Fatalf("within the grace: %+v", p)
	}
	if p := plan(r, 90*day, day, now.Add(day+Settle)); !p.Delete {
		t.Fatalf("after the grace: %+v", p)
	}
	// The 7-day warning sent, the 30-day one never: it is not sent after it.
	r.Warnings = []Warning{{Days: 7, At: t0.Add(84 * day)}}
	if p := plan(r, 90*day, day, t0.Add(85*day)); p.Warn != 0 {
		t.Fatalf("a less urgent warning after a more urgent one: %+v", p)
	}
}

func TestUseVoidsWarnings(t *testing.T) {
	t0 := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	r := Record{Since: t0, Basis: t0, Warnings: []Warning{{Days: 30, At: t0.Add(60 * day), DeleteAt: t0.Add(90 * day)}}}
	if r.current(90 * day) {
		t.Fatal("voided without use")
	}
	r.merge([5]int64{0, t0.Add(61 * day).Unix()})
	if !r.current(90*day) || len(r.Warnings) != 0 {
		t.Fatalf("a consume after the warning left it: %+v", r)
	}
	if last, kind := r.Last(); kind != "consume" || !last.Equal(t0.Add(61*day)) {
		t.Fatalf("last use: %s %s", last, kind)
	}
}

// No warning before half of the policy: 45 days warn 7 and 1 days before; 12 hours, once, 6
// hours before.
func TestShortPoliciesSkipWarningsBeforeTheLastUse(t *testing.T) {
	t0 := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	r := Record{Since: t0}
	if p := plan(r, 45*day, day, t0.Add(20*day)); p.Warn != 0 || len(p.WarnAt) != 2 {
		t.Fatalf("45-day policy before half way: %+v", p)
	}
	if p := plan(r, 30*day, day, t0.Add(time.Hour)); p.Warn != 0 || len(p.WarnAt) != 2 {
		t.Fatalf("30-day policy just after use: %+v", p)
	}
	if p := plan(r, 25*time.Hour, day, t0.Add(2*time.Hour)); p.Warn != 0 {
		t.Fatalf("25-hour policy two hours after use: %+v", p)
	}
	if p := plan(r, 30*day, day, t0.Add(23*day)); p.Warn != 7 {
		t.Fatalf("30-day policy 7 days before: %+v", p)
	}
	if p := plan(r, 12*time.Hour, time.Hour, t0.Add(time.Minute)); p.Warn != 0 {
		t.Fatalf("12-hour policy just after use: %+v", p)
	}
	if p := plan(r, 12*time.Hour, time.Hour, t0.Add(6*time.Hour)); p.Warn != 1 || !p.DeleteAt.Equal(t0.Add(12*time.Hour)) {
		t.Fatalf("12-hour policy half way: %+v", p)
	}
}

// Warnings name a date; a longer policy voids them (the ladder starts again for the new date),
// a shorter one keeps them.
func TestLengthenedPolicyVoidsWarnings(t *testing.T) {
	t0 := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	r := Record{Since: t0, Basis: t0, Warnings: []Warning{{Days: 1, At: t0.Add(44 * day), DeleteAt: t0.Add(45 * day)}}}
	if r.current(45 * day) {
		t.Fatal("voided under the same policy")
	}
	if r.current(30 * day) {
		t.Fatal("voided under a shorter policy")
	}
	if !r.current(90*day) || len(r.Warnings) != 0 {
		t.Fatalf("kept under a longer policy: %+v", r)
	}
	if p := plan(r, 90*day, day, t0.Add(46*day)); p.Warn != 0 || p.Delete {
		t.Fatalf("after the lengthening: %+v", p)
	}
}
