package audit

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/penstock/penstock/internal/keyring/keyringtest"
)

var ctx = context.Background()

func openLog(t *testing.T) (*Log, *keyringtest.Stack) {
	t.Helper()
	st, err := keyringtest.Open(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	l, err := Open(ctx, Options{Platform: st.Platform, Keyring: st.Keyring})
	if err != nil {
		t.Fatal(err)
	}
	return l, st
}

func appendN(t *testing.T, l *Log, n int) {
	t.Helper()
	tenants := []string{"", "acme", "globex"}
	for i := range n {
		_, err := l.Append(ctx, Event{Actor: "user:alice", Tenant: tenants[i%3], Action: "secret.write",
			Target: fmt.Sprintf("secret/%d", i), Result: ResultOK, Source: "192.0.2.1"})
		if err != nil {
			t.Fatal(err)
		}
	}
}

func records(t *testing.T, l *Log) []Record {
	t.Helper()
	var recs []Record
	if err := l.Records(ctx, 1, func(r Record) bool { recs = append(recs, r); return true }); err != nil {
		t.Fatal(err)
	}
	return recs
}

func TestChainsVerifyAndSurviveRestarts(t *testing.T) {
	l, st := openLog(t)
	appendN(t, l, 20)
	if err := l.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	appendN(t, l, 10)
	rep, err := l.VerifyAll(ctx)
	if err != nil || !rep.OK || rep.Events != 30 || rep.Chains != 3 || rep.Checkpoints != 3 { // one checkpoint per chain
		t.Fatalf("report %+v, %v", rep, err)
	}
	// A second writer (another node) continues the same chains.
	l2, err := Open(ctx, Options{Platform: st.Platform, Keyring: st.Keyring})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for _, w := range []*Log{l, l2} {
		wg.Add(1)
		go func() { defer wg.Done(); appendN(t, w, 15) }()
	}
	wg.Wait()
	if err := l2.Close(ctx); err != nil {
		t.Fatal(err)
	}
	rep, err = l.VerifyAll(ctx)
	if err != nil || !rep.OK || rep.Events != 60 {
		t.Fatalf("after two writers: %+v, %v", rep, err)
	}
	// The stream refuses deletes and purges.
	s, _ := st.Platform.JetStream().Stream(ctx, Stream)
	if err := s.DeleteMsg(ctx, 3); err == nil {
		t.Fatal("an audit event was deleted")
	}
	if err := s.Purge(ctx); err == nil {
		t.Fatal("the audit stream was purged")
	}
	if err := s.Purge(ctx, jetstream.WithPurgeSubject("audit.chain.acme")); err == nil {
		t.Fatal("a tenant's chain was purged")
	}
}

// Every way of editing the log is found, and named.
func TestVerifyFindsEveryTampering(t *testing.T) {
	l, _ := openLog(t)
	appendN(t, l, 30)
	if err := l.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	appendN(t, l, 6)
	if err := l.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	recs := records(t, l)
	anchor, _ := l.Anchor(ctx)
	pub := l.PublicKey()
	if rep := Verify(recs, pub, anchor); !rep.OK {
		t.Fatalf("untouched log: %+v", rep.Break)
	}
	clone := func() []Record {
		b, _ := json.Marshal(recs)
		var out []Record
		json.Unmarshal(b, &out)
		return out
	}
	eventAt := func(rs []Record, chain string, index uint64) int {
		for i, r := range rs {
			if r.Event != nil && r.Event.Chain == chain && r.Event.Index == index {
				return i
			}
		}
		t.Fatalf("no event %s/%d", chain, index)
		return -1
	}
	cases := []struct {
		name   string
		edit   func([]Record) []Record
		anchor Anchors
		want   string
	}{
		{"field changed", func(rs []Record) []Record {
			rs[eventAt(rs, "acme", 3)].Event.Result = ResultDenied
			return rs
		}, anchor, Modified},
		{"details added", func(rs []Record) []Record {
			rs[eventAt(rs, "globex", 2)].Event.Details = map[string]string{"note": "x"}
			return rs
		}, anchor, Modified},
		{"event deleted", func(rs []Record) []Record {
			i := eventAt(rs, "acme", 4)
			return append(rs[:i], rs[i+1:]...)
		}, anchor, Deleted},
		{"last event before a checkpoint deleted", func(rs []Record) []Record {
			i := eventAt(rs, "globex", 10)
			return append(rs[:i], rs[i+1:]...)
		}, anchor, Deleted},
		{"event inserted", func(rs []Record) []Record {
			i := eventAt(rs, "acme", 5)
			forged := *rs[i].Event
			forged.Action, forged.Target = "tenant.delete", "acme"
			forged.Hash = forged.computeHash() // a well-formed event that repeats index 5
			return append(rs[:i+1], append([]Record{{Event: &forged}}, rs[i+1:]...)...)
		}, anchor, Inserted},
		{"events reordered", func(rs []Record) []Record {
			i, j := eventAt(rs, "platform", 2), eventAt(rs, "platform", 3)
			rs[i], rs[j] = rs[j], rs[i]
			return rs
		}, anchor, Reordered},
		{"tail cut, checkpoints included", func(rs []Record) []Record {
			return rs[:eventAt(rs, "acme", 8)]
		}, anchor, Truncated},
		{"checkpoint forged", func(rs []Record) []Record {
			for _, r := range rs {
				if r.Checkpoint != nil {
					r.Checkpoint.Heads["acme"] = Head{Index: 1, Hash: "00"}
					break
				}
			}
			return rs
		}, anchor, Forged},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rep := Verify(tc.edit(clone()), pub, tc.anchor)
			if rep.OK || rep.Break == nil || rep.Break.Kind != tc.want {
				t.Fatalf("report %+v break %+v, want %s", rep, rep.Break, tc.want)
			}
		})
	}
}

// An export of a time range verifies on its own, and an edited export does not.
func TestExportVerifiesOnItsOwn(t *testing.T) {
	l, _ := openLog(t)
	appendN(t, l, 12)
	l.Checkpoint(ctx)
	mid := time.Now()
	appendN(t, l, 12)
	l.Checkpoint(ctx)
	for _, tenant := range []string{"", "acme"} {
		var buf bytes.Buffer
		if err := l.Export(ctx, &buf, tenant, mid, time.Time{}); err != nil {
			t.Fatal(err)
		}
		rep, err := VerifyExportFile(bytes.NewReader(buf.Bytes()), l.PublicKey())
		if err != nil || !rep.OK || rep.Events == 0 {
			t.Fatalf("export of %q: %+v %v", tenant, rep, err)
		}
		lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
		edited := strings.Join(append(lines[:3], lines[4:]...), "\n") // one record dropped
		if rep, err := VerifyExportFile(strings.NewReader(edited), l.PublicKey()); err != nil || rep.OK {
			t.Fatalf("an export with a record dropped verifies: %+v %v", rep, err)
		}
		edited = strings.Replace(buf.String(), `"action":"secret.write"`, `"action":"secret.read"`, 1)
		if rep, err := VerifyExportFile(strings.NewReader(edited), l.PublicKey()); err != nil || rep.OK || rep.Break.Kind != Modified {
			t.Fatalf("an edited export: %+v %v", rep, err)
		}
	}
}

// Across the retention boundary: a log whose prefix expired verifies from its first remaining
// checkpoint; an event missing after that checkpoint is still a deletion.
func TestVerifyAcrossExpiry(t *testing.T) {
	l, _ := openLog(t)
	appendN(t, l, 30)
	l.Checkpoint(ctx)
	appendN(t, l, 30)
	l.Checkpoint(ctx)
	appendN(t, l, 9)
	l.Checkpoint(ctx)
	recs := records(t, l)
	anchor, _ := l.Anchor(ctx)
	first := -1
	for i, r := range recs {
		if r.Checkpoint != nil {
			first = i
			break
		}
	}
	// Expiry took the first 20 records, part of the segment before the first checkpoint.
	expired := recs[20:]
	if rep := Verify(expired, l.PublicKey(), anchor); rep.OK {
		t.Fatal("a log missing its start verifies as if nothing had expired")
	}
	if rep := VerifyExpired(expired, l.PublicKey(), anchor); !rep.OK {
		t.Fatalf("expired prefix: %+v", rep.Break)
	}
	// Expiry up to the first checkpoint exactly, and beyond it (the first checkpoint gone too).
	for _, cut := range []int{first, first + 1, first + 12} {
		if rep := VerifyExpired(recs[cut:], l.PublicKey(), anchor); !rep.OK {
			t.Fatalf("expired up to record %d: %+v", cut, rep.Break)
		}
	}
	// A deletion after the first remaining checkpoint is not expiry.
	tampered := append(append([]Record{}, expired[:first+5-20]...), expired[first+6-20:]...)
	if rep := VerifyExpired(tampered, l.PublicKey(), anchor); rep.OK || rep.Break.Kind != Deleted {
		t.Fatalf("deletion after the boundary: %+v", rep)
	}
}

// Forgeries that need no key: a chain rewritten end to end with its hashes recomputed, an
// export made up or signed by another key, and stored JSON with a duplicate field.
func TestVerifyRefusesForgeries(t *testing.T) {
	l, _ := openLog(t)
	appendN(t, l, 12)
	l.Checkpoint(ctx)
	appendN(t, l, 6)
	l.Checkpoint(ctx)
	recs := records(t, l)
	anchor, _ := l.Anchor(ctx)

	// Rewrite chain acme: every event's actor changed, hashes and links recomputed.
	b, _ := json.Marshal(recs)
	var forged []Record
	json.Unmarshal(b, &forged)
	prev := ""
	for _, r := range forged {
		if r.Event != nil && r.Event.Chain == "acme" {
			r.Event.Actor, r.Event.Prev = "user:mallory", prev
			r.Event.Hash = r.Event.computeHash()
			prev = r.Event.Hash
		}
	}
	if rep := Verify(forged, l.PublicKey(), anchor); rep.OK {
		t.Fatal("a rewritten chain verifies")
	}
	// The same with every checkpoint removed: the kept one still catches it.
	var noCheckpoints []Record
	for _, r := range forged {
		if r.Checkpoint == nil {
			noCheckpoints = append(noCheckpoints, r)
		}
	}
	if rep := Verify(noCheckpoints, l.PublicKey(), anchor); rep.OK {
		t.Fatal("a rewritten chain without checkpoints verifies")
	}

	// An export signed by another key, or claiming another key, is refused.
	var buf bytes.Buffer
	l.Export(ctx, &buf, "", time.Time{}, time.Time{})
	other, _ := openLog(t)
	if _, err := VerifyExportFile(bytes.NewReader(buf.Bytes()), other.PublicKey()); err == nil {
		t.Fatal("an export verified against another key")
	}
	// An export with its checkpoints removed proves nothing.
	var kept []string
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if !strings.HasPrefix(line, `{"checkpoint"`) {
			kept = append(kept, line)
		}
	}
	if rep, err := VerifyExportFile(strings.NewReader(strings.Join(kept, "\n")), l.PublicKey()); err != nil || rep.OK {
		t.Fatalf("an export without checkpoints verifies: %+v %v", rep, err)
	}

	// A stored event with a duplicate field decodes to one value and shows another.
	good, _ := json.Marshal(recs[0].Event.withSeq(0))
	dup := bytes.Replace(good, []byte(`"actor":"`), []byte(`"actor":"user:mallory","ACTOR":"`), 1)
	if r := decodeRecord(1, chainSubject+recs[0].Event.Chain, dup); r.Malformed == 0 {
		t.Fatal("a record with a duplicate field is accepted")
	}
	if r := decodeRecord(1, chainSubject+"globex", good); recs[0].Event.Chain != "globex" && r.Malformed == 0 {
		t.Fatal("an event on another chain's subject is accepted")
	}
	if r := decodeRecord(1, chainSubject+recs[0].Event.Chain, good); r.Event == nil {
		t.Fatal("a genuine record is refused")
	}
}

// An older checkpoint cannot replace the kept one.
func TestAnchorOnlyMovesForward(t *testing.T) {
	l, _ := openLog(t)
	appendN(t, l, 3)
	l.Checkpoint(ctx)
	first, _ := l.Anchor(ctx)
	appendN(t, l, 3)
	l.Checkpoint(ctx)
	second, _ := l.Anchor(ctx)
	if newest(second) <= newest(first) {
		t.Fatalf("anchor did not advance: %d then %d", newest(first), newest(second))
	}
	// Cut the log back to the first checkpoint, as if its tail were removed, with the anchor
	// left in place: verify says truncated.
	recs := records(t, l)
	var cut []Record
	for _, r := range recs {
		cut = append(cut, r)
		if r.Checkpoint != nil && r.Checkpoint.Seq == newest(first) {
			break
		}
	}
	if rep := Verify(cut, l.PublicKey(), second); rep.OK || rep.Break.Kind != Truncated {
		t.Fatalf("cut-back log: %+v", rep)
	}
}

// newest is the sequence of the newest kept checkpoint.
func newest(a Anchors) uint64 {
	var n uint64
	for _, c := range a {
		n = max(n, c.Seq)
	}
	return n
}

// Checkpoints stay small however many tenants there are: each signs one chain's head. A
// tenant's export holds nothing of another tenant, not even its name, and still verifies.
func TestCheckpointsPerChain(t *testing.T) {
	l, _ := openLog(t)
	for i := range 300 {
		if _, err := l.Append(ctx, Event{Actor: "user:a", Tenant: fmt.Sprintf("tenant-%03d", i), Action: "x.y", Result: ResultOK}); err != nil {
			t.Fatal(err)
		}
	}
	appendN(t, l, 12)
	if err := l.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range records(t, l) {
		if c := r.Checkpoint; c != nil {
			n++
			if b, _ := json.Marshal(c); len(c.Heads) != 1 || len(b) > 512 {
				t.Fatalf("checkpoint of %d heads, %d bytes", len(c.Heads), len(b))
			}
		}
	}
	if n < 300 {
		t.Fatalf("%d checkpoints for 300 tenants", n)
	}
	// Nothing changed: a second checkpoint writes nothing.
	before := len(records(t, l))
	if err := l.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if after := len(records(t, l)); after != before {
		t.Fatalf("a checkpoint with nothing new wrote %d records", after-before)
	}
	var buf bytes.Buffer
	if err := l.Export(ctx, &buf, "acme", time.Time{}, time.Time{}); err != nil {
		t.Fatal(err)
	}
	for _, other := range []string{"globex", "tenant-0", `"platform"`} {
		if strings.Contains(buf.String(), other) {
			t.Fatalf("acme's export names %s:\n%s", other, buf.String())
		}
	}
	if rep, err := VerifyExportFile(bytes.NewReader(buf.Bytes()), l.PublicKey()); err != nil || !rep.OK || rep.Chains != 1 {
		t.Fatalf("acme's export: %+v %v", rep, err)
	}
	if rep, err := l.VerifyAll(ctx); err != nil || !rep.OK {
		t.Fatalf("verify: %+v %v", rep, err)
	}
	// A chain is never named by an unchecked string.
	for _, bad := range []string{">", "*", "a.b", "a b", "A", strings.Repeat("x", 64)} {
		if _, err := l.Append(ctx, Event{Actor: "user:a", Tenant: bad, Action: "x.y", Result: ResultDenied}); err == nil {
			t.Fatalf("an event for tenant %q was appended", bad)
		}
	}
}

// After an upgrade, the single checkpoint of every head that older versions kept (even of one
// chain) still verifies next to per-chain ones; a platform export of a past range verifies
// with each chain covered by its own checkpoint; and in an expired log, a chain whose
// beginning was cut further than two checkpoint intervals is a deletion, not expiry.
func TestCheckpointUpgradeExportAndExpiry(t *testing.T) {
	l, st := openLog(t)
	appendN(t, l, 3)
	// What an older version kept: one checkpoint of every head, under the key "checkpoint".
	l.mu.Lock()
	old := Checkpoint{Time: l.now().UTC(), Heads: map[string]Head{}}
	for chain, h := range l.heads {
		old.Heads[chain] = h.Head
	}
	l.mu.Unlock()
	old.Signature = ed25519.Sign(l.key, old.signed())
	b, _ := json.Marshal(old)
	ack, err := l.js.Publish(ctx, checkpointSubject, b)
	if err != nil {
		t.Fatal(err)
	}
	old.Seq = ack.Sequence
	b, _ = json.Marshal(old)
	if _, err := l.state.Put(ctx, anchorKey, b); err != nil {
		t.Fatal(err)
	}
	appendN(t, l, 6)
	if err := l.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if rep, err := l.VerifyAll(ctx); err != nil || !rep.OK {
		t.Fatalf("after an upgrade: %+v %v", rep.Break, err)
	}
	until := time.Now()
	appendN(t, l, 6)
	if err := l.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := l.Export(ctx, &buf, "", time.Time{}, until); err != nil {
		t.Fatal(err)
	}
	if rep, err := VerifyExportFile(&buf, l.PublicKey()); err != nil || !rep.OK {
		t.Fatalf("platform export of a past range: %+v %v", rep.Break, err)
	}

	// Expiry, on a clock the test moves: events, then three hours later more, each hour's
	// roll call checkpointing every chain.
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	_ = st
	el, _ := openLog(t)
	el.now = func() time.Time { return now }
	for hour := range 4 {
		appendN(t, el, 9)
		el.mu.Lock()
		if err := el.checkpointLocked(ctx, true); err != nil {
			t.Fatal(err)
		}
		el.mu.Unlock()
		now = now.Add(time.Hour)
		_ = hour
	}
	recs := records(t, el)
	anchors, _ := el.Anchor(ctx)
	expiredLog := recs[2:]
	if rep := VerifyExpired(expiredLog, el.PublicKey(), anchors); !rep.OK {
		t.Fatalf("expired prefix: %+v", rep.Break)
	}
	// Cut acme's records up to its checkpoint three hours in.
	var cut []Record
	lastCut := -1
	for i, r := range expiredLog {
		if r.Checkpoint != nil && r.Checkpoint.Heads["acme"].Index > 0 && r.Checkpoint.Time.Sub(expiredLog[0].Event.Time) >= 3*time.Hour {
			lastCut = i
			break
		}
	}
	for i, r := range expiredLog {
		drop := i < lastCut && (r.Event != nil && r.Event.Chain == "acme" || r.Checkpoint != nil && r.Checkpoint.Heads["acme"].Index > 0)
		if !drop {
			cut = append(cut, r)
		}
	}
	if rep := VerifyExpired(cut, el.PublicKey(), anchors); rep.OK || rep.Break.Kind != Deleted {
		t.Fatalf("a chain cut three hours into an expired log: %+v", rep)
	}
}

// Two nodes write one chain while its old events expire: the chain's count is the same at two
// checkpoints, yet the node that did not write the new event signs the new head, not the one
// it had read before (a count proves nothing once events were removed).
func TestCheckpointSignsTheHeadAfterExpiryAndAnotherWriter(t *testing.T) {
	st, err := keyringtest.Open(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	o := Options{Platform: st.Platform, Keyring: st.Keyring, Retention: 2 * time.Second}
	l1, err := Open(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	l2, err := Open(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	ev := Event{Actor: "user:alice", Tenant: "acme", Action: "secret.write", Target: "secret/x", Result: ResultOK, Source: "192.0.2.1"}
	old, err := l1.Append(ctx, ev)
	if err != nil {
		t.Fatal(err)
	}
	if err := l1.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	s, err := st.Platform.JetStream().Stream(ctx, Stream)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the old event to expire", func() bool {
		info, err := s.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return info.State.FirstSeq > old.Seq
	})
	last, err := l2.Append(ctx, ev) // the other node starts the chain again: its count is 1 again
	if err != nil {
		t.Fatal(err)
	}
	l1.mu.Lock()
	err = l1.checkpointLocked(ctx, true) // the hourly roll call
	l1.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	var signed *Head
	for _, r := range records(t, l1) {
		if r.Checkpoint != nil {
			if h, ok := r.Checkpoint.Heads[old.Chain]; ok {
				signed = &h
			}
		}
	}
	if signed == nil || signed.Hash != last.Hash {
		t.Fatalf("the last checkpoint of chain %q signs %+v, want the other node's event %+v", old.Chain, signed, last)
	}
}
