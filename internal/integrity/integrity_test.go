package integrity

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/penstock/penstock/internal/engine"
	"github.com/penstock/penstock/internal/keyring/keyringtest"
)

func TestCompare(t *testing.T) {
	at := time.Now()
	rec := func(clean bool) record {
		return record{Clean: clean, Streams: map[string]mark{
			"acme_production/Q_shop_orders": {First: 1, Last: 5000, Msgs: 5000},
			"platform/PENSTOCK_AUDIT":       {First: 1, Last: 288, Msgs: 288},
		}}
	}
	st := func(acc, s string, first, last, msgs uint64, lost ...uint64) engine.StreamState {
		return engine.StreamState{Account: acc, Stream: s, First: first, Last: last, Msgs: msgs, Lost: lost}
	}
	healthy := []engine.StreamState{st("acme_production", "Q_shop_orders", 1, 5000, 5000), st("platform", "PENSTOCK_AUDIT", 1, 288, 288)}
	for _, c := range []struct {
		name  string
		rec   record
		now   []engine.StreamState
		want  []string // "stream problem missing"
		notIn string
	}{
		{"clean and equal", rec(true), healthy, nil, ""},
		{"no record", record{}, healthy, nil, ""},
		{"clean, fewer", rec(true), []engine.StreamState{st("acme_production", "Q_shop_orders", 1, 5000, 3006), healthy[1]},
			[]string{"Q_shop_orders fewer "}, ""},
		{"clean, behind", rec(true), []engine.StreamState{healthy[0], st("platform", "PENSTOCK_AUDIT", 1, 140, 140)},
			[]string{"PENSTOCK_AUDIT behind 141-288"}, ""},
		{"clean, gone", rec(true), healthy[1:], []string{"Q_shop_orders missing 1-5000"}, ""},
		{"crash, fewer is consumption", rec(false), []engine.StreamState{st("acme_production", "Q_shop_orders", 4000, 5100, 1100), healthy[1]}, nil, ""},
		{"crash, gone may be a deletion", rec(false), healthy[1:], nil, ""},
		{"crash, behind", rec(false), []engine.StreamState{st("acme_production", "Q_shop_orders", 1, 4999, 10), healthy[1]},
			[]string{"Q_shop_orders behind 5000"}, ""},
		{"engine lost records", record{}, []engine.StreamState{st("platform", "KV_x", 1, 9, 5, 3, 4, 5, 9)},
			[]string{"KV_x lost 3-5,9"}, ""},
		{"clean, expired by age", record{Clean: true, Streams: map[string]mark{"a/Q": {First: 1, Last: 5000, Msgs: 5000, MaxAge: time.Hour, FirstTime: at.Add(-2 * time.Hour)}}},
			[]engine.StreamState{st("a", "Q", 3001, 5000, 2000)}, nil, ""},
		{"clean, all expired", record{Clean: true, Streams: map[string]mark{"a/Q": {First: 1, Last: 5000, Msgs: 5000, MaxAge: time.Hour, FirstTime: at.Add(-2 * time.Hour)}}},
			[]engine.StreamState{st("a", "Q", 5001, 5000, 0)}, nil, ""},
		{"clean, fewer before anything could expire", record{Clean: true, Streams: map[string]mark{"a/Q": {First: 1, Last: 5000, Msgs: 5000, MaxAge: time.Hour, FirstTime: at.Add(-time.Minute)}}},
			[]engine.StreamState{st("a", "Q", 3001, 5000, 2000)}, []string{"Q fewer"}, ""},
		{"clean, expired front but a hole behind it", record{Clean: true, Streams: map[string]mark{"a/Q": {First: 1, Last: 5000, Msgs: 5000, MaxAge: time.Hour, FirstTime: at.Add(-2 * time.Hour)}}},
			[]engine.StreamState{st("a", "Q", 11, 5000, 3000)}, []string{"Q fewer"}, ""},
		{"recreated under the same name", record{Clean: true, Streams: map[string]mark{"a/Q": {First: 1, Last: 3, Msgs: 3, Created: at.Add(-time.Hour)}}},
			[]engine.StreamState{{Account: "a", Stream: "Q", First: 0, Last: 0, Msgs: 0, Created: at}}, nil, ""},
		{"grown is fine", rec(true), []engine.StreamState{st("acme_production", "Q_shop_orders", 1, 6000, 6000), healthy[1]}, nil, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := compare(c.rec, c.now, at)
			var lines []string
			for _, f := range got {
				lines = append(lines, strings.TrimSpace(f.Stream+" "+f.Problem+" "+f.Missing))
				if f.Detail == "" {
					t.Errorf("finding %+v has no detail", f)
				}
			}
			if len(lines) != len(c.want) {
				t.Fatalf("findings %q, want %q", lines, c.want)
			}
			for i := range lines {
				if !strings.HasPrefix(lines[i]+" ", c.want[i]) && lines[i] != strings.TrimSpace(c.want[i]) {
					t.Fatalf("finding %q, want %q", lines[i], c.want[i])
				}
			}
		})
	}
}

// Findings survive a restart until accepted; a clean mark is what the next start compares
// with; a damaged record file is refused by name.
func TestFindingsPersistUntilAccepted(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	st, err := keyringtest.Open(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	acc, err := st.Engine.Account(ctx, "acme_production")
	if err != nil {
		t.Fatal(err)
	}
	s, err := acc.JetStream().CreateStream(ctx, jetstream.StreamConfig{Name: "Q", Subjects: []string{"q"}})
	if err != nil {
		t.Fatal(err)
	}
	for range 10 {
		if _, err := acc.JetStream().Publish(ctx, "q", []byte("m")); err != nil {
			t.Fatal(err)
		}
	}
	c, err := openAttached(t, dir, st)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Mark(ctx, true); err != nil {
		t.Fatal(err)
	}
	// Four messages gone behind the record's back.
	for seq := uint64(3); seq <= 6; seq++ {
		if err := s.DeleteMsg(ctx, seq); err != nil {
			t.Fatal(err)
		}
	}
	c, err = openAttached(t, dir, st)
	if err != nil {
		t.Fatal(err)
	}
	var notified []Finding
	c.OnFindings(func(f []Finding) { notified = append(notified, f...) })
	found, err := c.Check(ctx)
	if err != nil || len(found) != 1 || found[0].Problem != ProblemFewer || found[0].Expected != 10 || found[0].Found != 6 || len(notified) != 1 {
		t.Fatalf("check: %v %+v notified %d", err, found, len(notified))
	}
	c, _ = openAttached(t, dir, st)
	if f := c.Findings(); len(f) != 1 || f[0].Name() != "acme_production > Q" {
		t.Fatalf("after a restart: %+v", f)
	}
	if n, err := c.Accept(ctx); n != 1 || err != nil {
		t.Fatalf("accept: %d %v", n, err)
	}
	c, _ = openAttached(t, dir, st)
	if f := c.Findings(); len(f) != 0 {
		t.Fatalf("after accept: %+v", f)
	}
	if found, err := c.Check(ctx); err != nil || len(found) != 0 {
		t.Fatalf("check after accept: %v %+v", err, found)
	}
	b, _ := os.ReadFile(filepath.Join(dir, File))
	b[len(b)/2] ^= 1
	os.WriteFile(filepath.Join(dir, File), b, 0o600)
	if _, err := openAttached(t, dir, st); err == nil || !strings.Contains(err.Error(), File) {
		t.Fatalf("damaged record: %v", err)
	}
}

func openAttached(t *testing.T, dir string, st *keyringtest.Stack) (*Checker, error) {
	t.Helper()
	c, err := Open(dir, st.Master, nil)
	if err != nil {
		return nil, err
	}
	c.Attach(st.Engine)
	return c, nil
}

// A running server's mark is written when the streams moved, not every interval: the record
// of an idle node stays the one written last.
func TestMarkWritesOnlyWhatChanged(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	st, err := keyringtest.Open(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	acc, err := st.Engine.Account(ctx, "acme_production")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := acc.JetStream().CreateStream(ctx, jetstream.StreamConfig{Name: "Q", Subjects: []string{"q"}}); err != nil {
		t.Fatal(err)
	}
	c, err := openAttached(t, dir, st)
	if err != nil {
		t.Fatal(err)
	}
	written := func() time.Time { _, _, w := c.Recorded(); return w }
	if err := c.Mark(ctx, true); err != nil {
		t.Fatal(err)
	}
	cleanAt := written()
	// The first mark of a running server replaces the clean one, whatever moved.
	if err := c.Mark(ctx, false); err != nil {
		t.Fatal(err)
	}
	if _, clean, w := c.Recorded(); clean || !w.After(cleanAt) {
		t.Fatalf("after the first running mark: clean %v, written %v (clean one %v)", clean, w, cleanAt)
	}
	first := written()
	if err := c.Mark(ctx, false); err != nil {
		t.Fatal(err)
	}
	if w := written(); !w.Equal(first) {
		t.Fatalf("nothing moved and the record was written again (%v, then %v)", first, w)
	}
	// A finding kept since (the start-up scan's) is written, though no stream moved.
	c.add([]Finding{{Account: "acme_production", Stream: "Q", Problem: ProblemUnreadable, Detected: time.Now().UTC()}})
	if err := c.Mark(ctx, false); err != nil {
		t.Fatal(err)
	}
	if w := written(); !w.After(first) {
		t.Fatalf("a new finding did not move the record (%v, then %v)", first, w)
	}
	first = written()
	if _, err := acc.JetStream().Publish(ctx, "q", []byte("m")); err != nil {
		t.Fatal(err)
	}
	if err := c.Mark(ctx, false); err != nil {
		t.Fatal(err)
	}
	if w := written(); !w.After(first) {
		t.Fatalf("a publish did not move the record (%v, then %v)", first, w)
	}
	// And a restart reads what was written last.
	c, err = openAttached(t, dir, st)
	if err != nil {
		t.Fatal(err)
	}
	if f := c.Findings(); len(f) != 1 || f[0].Problem != ProblemUnreadable {
		t.Fatalf("findings after a restart: %+v", f)
	}
}
