package backup

import (
	"fmt"
	"time"
)

// Retention says which backups pruning keeps: the newest of each of the last KeepDaily days,
// KeepWeekly ISO weeks and KeepMonthly months that have a backup (a backup can count for all
// three), and always the newest. Zero of each keeps only the newest.
type Retention struct {
	KeepDaily   int
	KeepWeekly  int
	KeepMonthly int
}

// Keep returns the ids of backups (newest first) that the policy keeps. Backups from the
// future (a clock set back) are kept.
func (r Retention) Keep(backups []BackupSummary, now time.Time) map[string]bool {
	keep := map[string]bool{}
	if len(backups) == 0 {
		return keep
	}
	keep[backups[0].ID] = true
	periods := []struct {
		n   int
		key func(time.Time) string
	}{
		{r.KeepDaily, func(t time.Time) string { return t.Format("2006-01-02") }},
		{r.KeepWeekly, func(t time.Time) string { y, w := t.ISOWeek(); return fmt.Sprintf("%d-W%02d", y, w) }},
		{r.KeepMonthly, func(t time.Time) string { return t.Format("2006-01") }},
	}
	for _, p := range periods {
		seen := map[string]bool{}
		for _, b := range backups { // newest first: the first of each period is its newest
			if len(seen) == p.n {
				break
			}
			k := p.key(b.Created.UTC())
			if !seen[k] {
				seen[k] = true
				keep[b.ID] = true
			}
		}
	}
	for _, b := range backups {
		if b.Created.After(now) {
			keep[b.ID] = true
		}
	}
	return keep
}
