package audit

import (
	"bytes"
	"crypto/ed25519"
	"fmt"
	"sort"
	"time"
)

// Break kinds, the first of which Verify reports.
const (
	Modified  = "modified"  // an event's content does not match its hash, or a checkpoint's
	Deleted   = "deleted"   // an event is missing from its chain
	Inserted  = "inserted"  // an event does not continue its chain where it stands
	Reordered = "reordered" // an event comes before one that precedes it in its chain
	Truncated = "truncated" // a chain ends before the head a signed checkpoint recorded
	Forged    = "forged"    // a checkpoint's signature does not hold
	// The log holds checkpoints of a chain that no kept checkpoint vouches for, or later ones
	// than the kept one: the anchor was removed or rolled back, maybe with the log cut.
	Unanchored = "unanchored"
)

// Report is the outcome of Verify.
type Report struct {
	OK          bool   `json:"ok"`
	Events      int    `json:"events"`
	Checkpoints int    `json:"checkpoints"`
	Chains      int    `json:"chains"`
	Break       *Break `json:"break,omitempty"`
	// Unsealed marks an export made before exports were signed over their extent: its events
	// and checkpoints verify, but where it starts and ends is not proven.
	Unsealed bool `json:"unsealed,omitempty"`
}

// Break is the first place the log is not what was written.
type Break struct {
	Kind   string `json:"kind"`
	Seq    uint64 `json:"seq"`
	Chain  string `json:"chain,omitempty"`
	Index  uint64 `json:"index,omitempty"`
	Detail string `json:"detail"`
}

// Verify walks records in stream order and reports the first break, checking every event's
// hash and its link to the previous event of its chain, and every checkpoint's signature and
// heads. It is a pure function, so an export verifies on its own with the public key.
//
// anchors, if given, are the latest checkpoints as kept outside the stream: a log whose chains
// end before them, or whose last checkpoint of a chain is not the kept one, was cut back (its
// tail, checkpoints included, removed).
func Verify(records []Record, pub ed25519.PublicKey, anchors Anchors) Report {
	return verify(records, pub, anchors, nil, nil, false)
}

// VerifyExpired is Verify for a log whose oldest records have expired (the stream no longer
// starts at sequence 1). Expiry removes a prefix of the log; the records before its first
// remaining checkpoint form a partial segment whose chains may begin mid-way. From that
// checkpoint on, every chain must be whole once its own first checkpoint has passed: an event
// missing after it is a deletion, not expiry. Penstock checkpoints every chain that changed at
// least hourly, so the partial segment spans at most an hour.
func VerifyExpired(records []Record, pub ed25519.PublicKey, anchors Anchors) Report {
	return verify(records, pub, anchors, nil, nil, true)
}

// VerifyExport verifies part of the log on its own: each chain may begin where the export's
// header says it does (the index and hash before its first exported event), and checkpoints
// are checked for the chains the export holds.
func VerifyExport(records []Record, pub ed25519.PublicKey, starts map[string]Head) Report {
	return verify(records, pub, nil, nil, starts, false)
}

// verify checks records against the kept checkpoints (anchors), the copies of them kept
// outside the data directory (external, which the log must reach), or, for an export, from
// the heads its chains start at (starts, non-nil).
func verify(records []Record, pub ed25519.PublicKey, anchors, external Anchors, starts map[string]Head, expired bool) Report {
	partial := expired // still in the partial segment expiry left, before the first checkpoint
	// Per chain, the last checkpoint that signed its head, and the furthest head any signed.
	lastOf := map[string]*Checkpoint{}
	furthest := map[string]uint64{}
	// Every checkpoint by its sequence, to find a kept one in the log.
	bySeq := map[uint64]*Checkpoint{}
	// The hash of every (chain, index) seen, so checkpoints are compared wherever they point.
	hashes := map[string]map[uint64]string{}
	seen := func(chain string, index uint64) (string, bool) {
		h, ok := hashes[chain][index]
		return h, ok
	}
	remember := func(chain string, index uint64, hash string) {
		if hashes[chain] == nil {
			hashes[chain] = map[uint64]string{}
		}
		hashes[chain][index] = hash
	}
	if expired {
		var first *Checkpoint
		var firstTime, lastPartial time.Time
		for _, r := range records {
			if r.Checkpoint != nil {
				first = r.Checkpoint
				break
			}
			if r.Event != nil {
				if firstTime.IsZero() {
					firstTime = r.Event.Time
				}
				lastPartial = r.Event.Time
			}
		}
		if first == nil {
			return Report{Break: &Break{Kind: Truncated, Detail: "the log expired in part and holds no checkpoint to resume from"}}
		}
		if !firstTime.IsZero() && (first.Time.Sub(firstTime) > 2*CheckpointInterval || lastPartial.After(first.Time)) {
			return Report{Break: &Break{Kind: Deleted, Detail: "the records before the first checkpoint span more than a segment: not an expired prefix"}}
		}
	}
	var logStart time.Time
	for _, r := range records {
		if r.Event != nil {
			logStart = r.Event.Time
			break
		}
		if r.Checkpoint != nil {
			logStart = r.Checkpoint.Time
			break
		}
	}
	rep := Report{}
	type state = chainState
	chains := map[string]*state{}
	for chain, h := range starts {
		chains[chain] = &state{index: h.Index, hash: h.Hash}
		remember(chain, h.Index, h.Hash)
	}
	// Every (chain, index) present, to tell a reordering from a deletion.
	present := map[string]map[uint64]bool{}
	for _, r := range records {
		if e := r.Event; e != nil {
			if present[e.Chain] == nil {
				present[e.Chain] = map[uint64]bool{}
			}
			present[e.Chain][e.Index] = true
		}
	}
	fail := func(kind string, seq uint64, chain string, index uint64, format string, args ...any) Report {
		rep.Break = &Break{Kind: kind, Seq: seq, Chain: chain, Index: index, Detail: fmt.Sprintf(format, args...)}
		rep.Chains = len(chains)
		return rep
	}
	for _, r := range records {
		if r.Malformed != 0 {
			return fail(Modified, r.Malformed, "", 0, "stored record is not as written (bad or extra fields, or the wrong chain)")
		}
		if c := r.Checkpoint; c != nil {
			if !ed25519.Verify(pub, c.signed(), c.Signature) {
				return fail(Forged, c.Seq, "", 0, "checkpoint signature does not verify")
			}
			for chain, h := range c.Heads {
				st := chains[chain]
				if starts != nil && st == nil {
					continue // a chain this export does not hold
				}
				// Expiry may have left this chain begun mid-way until its first checkpoint, which
				// every chain gets at least hourly: one later than two intervals after the log's
				// start means the chain's beginning was cut, not expired.
				resumes := expired && lastOf[chain] == nil
				if resumes && (st == nil || !st.whole) && c.Time.Sub(logStart) > 2*CheckpointInterval {
					return fail(Deleted, c.Seq, chain, h.Index, "chain %s begins mid-way and is first checkpointed %s after the log's start: not an expired prefix", chain, c.Time.Sub(logStart).Round(time.Second))
				}
				if resumes && st == nil {
					// Every event of this chain before the checkpoint expired: it resumes here.
					st = &state{index: h.Index, hash: h.Hash}
					chains[chain] = st
					remember(chain, h.Index, h.Hash)
				}
				if st == nil || st.index < h.Index {
					// The checkpoint names events not seen before it: they were removed.
					return fail(Deleted, c.Seq, chain, h.Index, "checkpoint records %s at %d, the log has it at %d", chain, h.Index, indexOf(st))
				}
				if got, ok := seen(chain, h.Index); ok && got != h.Hash || !ok && !resumes {
					return fail(Modified, c.Seq, chain, h.Index, "the event the checkpoint signed at %s/%d is not the log's", chain, h.Index)
				}
				lastOf[chain] = c
				furthest[chain] = max(furthest[chain], h.Index)
			}
			bySeq[c.Seq] = c
			rep.Checkpoints++
			partial = false
			continue
		}
		e := r.Event
		if e == nil {
			continue
		}
		if e.computeHash() != e.Hash {
			return fail(Modified, e.Seq, e.Chain, e.Index, "content does not match its hash")
		}
		st := chains[e.Chain]
		if st == nil {
			st = &state{}
			if partial || expired && lastOf[e.Chain] == nil {
				// The chain's earlier events expired: it begins where its first remaining event says.
				st = &state{index: e.Index - 1, hash: e.Prev}
				if e.Index == 1 {
					st.whole = true
				}
			} else {
				st.whole = true
			}
			chains[e.Chain] = st
		}
		switch want := st.index + 1; {
		case e.Index == want && e.Prev == st.hash:
			st.index, st.hash = e.Index, e.Hash
			remember(e.Chain, e.Index, e.Hash)
			rep.Events++
		case e.Index > want:
			if present[e.Chain][want] {
				return fail(Reordered, e.Seq, e.Chain, e.Index, "event %d comes before event %d of its chain", e.Index, want)
			}
			return fail(Deleted, e.Seq, e.Chain, want, "event %d of chain %s is missing", want, e.Chain)
		default:
			return fail(Inserted, e.Seq, e.Chain, e.Index, "event does not continue chain %s after index %d", e.Chain, st.index)
		}
	}
	// reach checks a checkpoint kept apart from the log: its signature, and that the log
	// reaches each head it signs, with that hash (strict: the event must be in the log).
	reach := func(c *Checkpoint, what string, strict bool) *Report {
		var r Report
		if !ed25519.Verify(pub, c.signed(), c.Signature) {
			r = fail(Forged, 0, "", 0, "%s: the signature does not verify", what)
			return &r
		}
		for chain, h := range c.Heads {
			st := chains[chain]
			if st == nil || st.index < h.Index {
				r = fail(Truncated, 0, chain, h.Index, "chain %s ends at %d, before the head %d of %s", chain, indexOf(st), h.Index, what)
				return &r
			}
			if got, ok := seen(chain, h.Index); ok && got != h.Hash || !ok && strict {
				r = fail(Modified, 0, chain, h.Index, "the event %s signed at %s/%d is not the log's", what, chain, h.Index)
				return &r
			}
		}
		return nil
	}
	for _, k := range sortedKeys(anchors) {
		c := anchors[k]
		if r := reach(c, "the kept checkpoint (key "+k+")", true); r != nil {
			return *r
		}
		for chain, h := range c.Heads {
			last := lastOf[chain]
			switch {
			case c.Seq == 0:
				// Kept just before its checkpoint was appended, which a stop may have prevented.
				if furthest[chain] > h.Index {
					return fail(Unanchored, 0, chain, h.Index, "the log checkpoints chain %s at %d, beyond its kept checkpoint at %d", chain, furthest[chain], h.Index)
				}
			case k == anchorKey:
				if last == nil || last.Seq < c.Seq {
					return fail(Truncated, 0, chain, h.Index, "the log's last checkpoint of chain %s is not the kept one (sequence %d)", chain, c.Seq)
				}
			case bySeq[c.Seq] == nil || !bytes.Equal(bySeq[c.Seq].signed(), c.signed()):
				return fail(Truncated, 0, chain, h.Index, "the log does not hold chain %s's kept checkpoint (sequence %d)", chain, c.Seq)
			case furthest[chain] > h.Index:
				// A chain's kept checkpoint is its furthest: one beyond it in the log was never
				// kept, or the kept one was rolled back.
				return fail(Unanchored, 0, chain, h.Index, "the log checkpoints chain %s at %d, beyond its kept checkpoint at %d", chain, furthest[chain], h.Index)
			}
		}
	}
	if starts == nil {
		// Every chain the log checkpoints must have its checkpoint kept apart: a log cut back
		// together with the loss of its anchors is otherwise consistent.
		for _, chain := range sortedKeys(lastOf) {
			if anchors[anchorKey+"."+chain] != nil {
				continue
			}
			if legacy := anchors[anchorKey]; legacy != nil && legacy.Seq == lastOf[chain].Seq {
				continue
			}
			return fail(Unanchored, lastOf[chain].Seq, chain, lastOf[chain].Heads[chain].Index, "the log holds checkpoints of chain %s but no kept checkpoint (anchor) of it: the anchor was removed", chain)
		}
	}
	for _, k := range sortedKeys(external) {
		// The log may have gone further, or expired past it, but never be behind it.
		if r := reach(external[k], "the external anchor of chain "+k, false); r != nil {
			return *r
		}
	}
	if starts != nil {
		// An export proves itself only through signed checkpoints: every chain it holds must
		// end at or before a checkpointed head the export carries.
		for chain, st := range chains {
			if st.index == starts[chain].Index {
				continue // no events of this chain in the export
			}
			covered := false
			if last := lastOf[chain]; last != nil && last.Heads[chain].Index >= st.index {
				covered = true
			}
			if !covered {
				return fail(Truncated, 0, chain, st.index, "no signed checkpoint in the export covers chain %s up to %d", chain, st.index)
			}
		}
	}
	rep.OK = true
	rep.Chains = len(chains)
	return rep
}

type chainState struct {
	index uint64
	hash  string
	whole bool // seen from its first event
}

func indexOf(st *chainState) uint64 {
	if st == nil {
		return 0
	}
	return st.index
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
