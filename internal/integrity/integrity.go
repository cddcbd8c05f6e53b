// Package integrity keeps, per stream of the embedded engine, what Penstock last knew durably
// (first and last sequence, message count), sealed in a file of the data directory that no
// stream's damage can reach, and names every stream that comes back with less: at start, in a
// running server, and for `penstock doctor`. Findings stay until an operator accepts them. It
// never repairs, deletes or rewrites a stream.
package integrity

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/penstock/penstock/internal/datadir"
	"github.com/penstock/penstock/internal/engine"
)

// File holds the sealed record, in the data directory.
const File = "integrity.sealed"

// Engine is what the checker reads: the embedded engine's streams.
type Engine interface {
	Streams() ([]engine.StreamState, error)
	Scan(ctx context.Context, account, stream string) (engine.ScanResult, error)
}

// Sealer seals the record with this data directory's keys.
type Sealer interface {
	SealFile(name string, b []byte) ([]byte, error)
	OpenFile(name string, ct []byte) ([]byte, error)
}

// Problems a finding names.
const (
	ProblemMissing    = "missing"    // a stream recorded at a clean stop is gone
	ProblemFewer      = "fewer"      // fewer messages than recorded at a clean stop
	ProblemBehind     = "behind"     // the last sequence went back
	ProblemLost       = "lost"       // the engine dropped damaged records while recovering or reading
	ProblemUnreadable = "unreadable" // counted messages that do not read back
)

// Finding is one damaged stream, with the numbers.
type Finding struct {
	Account  string    `json:"account"`
	Stream   string    `json:"stream"`
	Problem  string    `json:"problem"`
	Expected uint64    `json:"expected,omitempty"`
	Found    uint64    `json:"found"`
	Missing  string    `json:"missing,omitempty"` // sequences, e.g. "3007-5000", when known
	Detected time.Time `json:"detected"`
	Detail   string    `json:"detail"`
}

// Name is "account > stream", as the engine's own messages name streams.
func (f Finding) Name() string { return f.Account + " > " + f.Stream }

type mark struct {
	First     uint64        `json:"first"`
	Last      uint64        `json:"last"`
	Msgs      uint64        `json:"msgs"`
	Created   time.Time     `json:"created,omitzero"`
	FirstTime time.Time     `json:"first_time,omitzero"`
	MaxAge    time.Duration `json:"max_age,omitempty"`
}

type record struct {
	Written  time.Time       `json:"written"`
	Clean    bool            `json:"clean"` // written by a clean stop: counts are exact
	Streams  map[string]mark `json:"streams"`
	Findings []Finding       `json:"findings,omitempty"`
}

// Checker holds the record of one data directory.
type Checker struct {
	dir  string
	eng  Engine
	seal Sealer
	log  *slog.Logger

	mu       sync.Mutex
	rec      record // what is on disk
	findings []Finding
	notify   func([]Finding) // new findings, for the audit log and alerts
}

// Open reads the record of dataDir; it runs before the engine opens, so a damaged record is a
// refusal that has changed nothing. A missing record is normal on a first start and for a
// directory from before it. Attach gives it the engine to check.
func Open(dataDir string, seal Sealer, log *slog.Logger) (*Checker, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Checker{dir: dataDir, seal: seal, log: log}
	rec, err := c.read()
	if err != nil {
		return nil, err
	}
	c.rec = rec
	c.findings = append(c.findings, rec.Findings...)
	return c, nil
}

func (c *Checker) path() string { return filepath.Join(c.dir, File) }

func (c *Checker) read() (record, error) {
	b, err := os.ReadFile(c.path())
	if errors.Is(err, os.ErrNotExist) {
		return record{}, nil
	}
	if err != nil {
		return record{}, fmt.Errorf("read %s: %w", c.path(), err)
	}
	pt, err := c.seal.OpenFile(File, b)
	if err != nil {
		return record{}, fmt.Errorf("%s does not open with this directory's keys (damaged or from another directory): "+
			"restore it from a copy, or remove it to stop comparing streams with what was recorded before: %w", c.path(), err)
	}
	var rec record
	if err := json.Unmarshal(pt, &rec); err != nil {
		return record{}, fmt.Errorf("%s: %w", c.path(), err)
	}
	return rec, nil
}

// Attach gives the checker the opened engine.
func (c *Checker) Attach(eng Engine) { c.eng = eng }

// OnFindings sets what to call with findings as they are made (not those from before).
func (c *Checker) OnFindings(f func([]Finding)) {
	c.mu.Lock()
	c.notify = f
	c.mu.Unlock()
}

// Findings are the open findings: from earlier runs until accepted, and this run's.
func (c *Checker) Findings() []Finding {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Finding(nil), c.findings...)
}

// Recorded reports whether a record exists, and whether a clean stop wrote it.
func (c *Checker) Recorded() (exists, clean bool, written time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rec.Streams != nil, c.rec.Clean, c.rec.Written
}

// Compare checks the streams as the engine now reports them against the record, and returns
// new findings (it does not keep or write them: Check does).
func (c *Checker) Compare(now []engine.StreamState) []Finding {
	c.mu.Lock()
	rec := c.rec
	c.mu.Unlock()
	return compare(rec, now, time.Now().UTC())
}

// expired is how many of the recorded messages may have left by age since the record: those
// before the new first sequence, when the oldest recorded message has outlived the stream's
// max age by now. Expiry only ever takes messages from the front.
func expired(want mark, got engine.StreamState, at time.Time) uint64 {
	if want.MaxAge <= 0 || got.First <= want.First || at.Sub(want.FirstTime) < want.MaxAge {
		return 0
	}
	return min(want.Msgs, got.First-want.First)
}

func compare(rec record, now []engine.StreamState, at time.Time) []Finding {
	var out []Finding
	found := map[string]engine.StreamState{}
	for _, s := range now {
		found[key(s.Account, s.Stream)] = s
		if len(s.Lost) > 0 {
			out = append(out, Finding{Account: s.Account, Stream: s.Stream, Problem: ProblemLost, Found: s.Msgs,
				Missing: ranges(s.Lost), Detected: at,
				Detail: fmt.Sprintf("the engine dropped %d damaged record(s) while reading the stream", len(s.Lost))})
		}
	}
	names := make([]string, 0, len(rec.Streams))
	for k := range rec.Streams {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		want := rec.Streams[k]
		acc, stream := split(k)
		got, ok := found[k]
		if ok && !want.Created.IsZero() && !got.Created.Equal(want.Created) {
			continue // deleted and made again since: a new stream
		}
		switch {
		case !ok && rec.Clean:
			out = append(out, Finding{Account: acc, Stream: stream, Problem: ProblemMissing, Expected: want.Msgs, Detected: at,
				Missing: span(want.First, want.Last), Detail: fmt.Sprintf("recorded with %d message(s) at the last clean stop; the engine no longer has it", want.Msgs)})
		case !ok:
		case got.Last < want.Last:
			out = append(out, Finding{Account: acc, Stream: stream, Problem: ProblemBehind, Expected: want.Last, Found: got.Last, Detected: at,
				Missing: span(got.Last+1, want.Last), Detail: fmt.Sprintf("last sequence %d, recorded %d: the newest %d message(s) are gone", got.Last, want.Last, want.Last-got.Last)})
		case rec.Clean && got.Msgs+expired(want, got, at) < want.Msgs:
			out = append(out, Finding{Account: acc, Stream: stream, Problem: ProblemFewer, Expected: want.Msgs, Found: got.Msgs, Detected: at,
				Detail: fmt.Sprintf("%d message(s), recorded %d at the last clean stop: %d missing", got.Msgs, want.Msgs, want.Msgs-got.Msgs)})
		}
	}
	return out
}

// Check compares the engine's streams with the record, keeps and reports what it finds, and
// records the streams as they are now (not clean: the server runs from here).
func (c *Checker) Check(ctx context.Context) ([]Finding, error) {
	now, err := c.eng.Streams()
	if err != nil {
		return nil, err
	}
	found := c.Compare(now)
	c.add(found)
	return found, c.write(now, false)
}

// Mark records the streams as they are now; clean means writers have stopped, so the next
// start may expect exactly these counts.
func (c *Checker) Mark(ctx context.Context, clean bool) error {
	now, err := c.eng.Streams()
	if err != nil {
		return err
	}
	if clean {
		// Acknowledgements the engine received may still be applied: wait (briefly) until
		// two readings agree, so a clean record holds counts that stay.
		for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); {
			time.Sleep(100 * time.Millisecond)
			again, err := c.eng.Streams()
			if err != nil {
				return err
			}
			if same(now, again) {
				break
			}
			now = again
		}
	}
	c.mu.Lock()
	live := c.findingsFromLiveLocked(now)
	c.mu.Unlock()
	c.add(live)
	c.mu.Lock()
	// A running server's mark that would say what the last one says (the same streams, the
	// same findings) is not written again: at 10,000 idle streams, sealing and syncing the same
	// record every interval was a visible part of the node's idle CPU.
	again := !clean && !c.rec.Clean && sameFindings(c.findings, c.rec.Findings) && c.rec.holds(now)
	c.mu.Unlock()
	if again {
		return nil
	}
	return c.write(now, clean)
}

// sameFindings tells whether two lists hold the same findings, in the same order.
func sameFindings(a, b []Finding) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Account != b[i].Account || a[i].Stream != b[i].Stream || a[i].Problem != b[i].Problem || !a[i].Detected.Equal(b[i].Detected) {
			return false
		}
	}
	return true
}

// holds tells whether the record marks exactly these streams, as they are now.
func (r record) holds(now []engine.StreamState) bool {
	if r.Streams == nil || len(r.Streams) != len(now) {
		return false
	}
	for _, s := range now {
		m, ok := r.Streams[key(s.Account, s.Stream)]
		if !ok || m.First != s.First || m.Last != s.Last || m.Msgs != s.Msgs || m.MaxAge != s.MaxAge ||
			!m.Created.Equal(s.Created) || !m.FirstTime.Equal(s.FirstTime) {
			return false
		}
	}
	return true
}

// findingsFromLiveLocked compares a running server's streams with its own previous mark: a
// last sequence never goes back, and lost records are damage.
func (c *Checker) findingsFromLiveLocked(now []engine.StreamState) []Finding {
	prev := c.rec
	prev.Clean = false
	return compare(prev, now, time.Now().UTC())
}

// Scan reads every message of every stream (see engine.Scan) and reports streams whose
// counted messages do not all read back. It is slow on large stores: doctor runs it, and a
// server runs it once in the background after it starts.
func (c *Checker) Scan(ctx context.Context) ([]Finding, error) {
	now, err := c.eng.Streams()
	if err != nil {
		return nil, err
	}
	var out []Finding
	for _, s := range now {
		if s.Msgs == 0 {
			// Nothing counted, nothing to read back: no connection to its account is opened
			// for it (a node of 10,000 idle tenant-environments opened one to each at start).
			continue
		}
		res, err := c.eng.Scan(ctx, s.Account, s.Stream)
		if err != nil {
			if ctx.Err() != nil {
				return out, ctx.Err()
			}
			c.log.Warn("integrity scan", "stream", key(s.Account, s.Stream), "error", err)
			continue
		}
		if res.Busy {
			c.log.Debug("integrity scan: stream changed during every read", "stream", key(s.Account, s.Stream))
		}
		if res.Unreadable > 0 {
			out = append(out, Finding{Account: s.Account, Stream: s.Stream, Problem: ProblemUnreadable, Expected: s.Msgs, Found: res.Read,
				Detected: time.Now().UTC(), Detail: fmt.Sprintf("%d of %d counted message(s) do not read back", res.Unreadable, s.Msgs)})
		}
	}
	c.add(out)
	return out, nil
}

// add keeps new findings (one per stream and problem) and reports them.
func (c *Checker) add(found []Finding) {
	if len(found) == 0 {
		return
	}
	c.mu.Lock()
	var fresh []Finding
	for _, f := range found {
		dup := false
		for _, o := range c.findings {
			if o.Account == f.Account && o.Stream == f.Stream && o.Problem == f.Problem {
				dup = true
				break
			}
		}
		if !dup {
			c.findings = append(c.findings, f)
			fresh = append(fresh, f)
		}
	}
	notify := c.notify
	c.mu.Unlock()
	for _, f := range fresh {
		c.log.Error("stream damaged", "stream", f.Name(), "problem", f.Problem, "expected", f.Expected, "found", f.Found,
			"missing", f.Missing, "detail", f.Detail)
	}
	if notify != nil && len(fresh) > 0 {
		notify(fresh)
	}
}

// Accept clears the findings: the operator restored the streams or accepts the loss.
func (c *Checker) Accept(ctx context.Context) (int, error) {
	c.mu.Lock()
	n := len(c.findings)
	c.findings = nil
	c.mu.Unlock()
	now, err := c.eng.Streams()
	if err != nil {
		return 0, err
	}
	return n, c.write(now, false)
}

func (c *Checker) write(now []engine.StreamState, clean bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	rec := record{Written: time.Now().UTC(), Clean: clean, Streams: map[string]mark{}, Findings: c.findings}
	for _, s := range now {
		rec.Streams[key(s.Account, s.Stream)] = mark{First: s.First, Last: s.Last, Msgs: s.Msgs,
			Created: s.Created, FirstTime: s.FirstTime, MaxAge: s.MaxAge}
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	ct, err := c.seal.SealFile(File, b)
	if err != nil {
		return err
	}
	if err := datadir.WriteFile(c.path(), ct, 0o600, true); err != nil {
		return err
	}
	c.rec = rec
	return nil
}

// Run marks the streams every interval and checks a running server's streams against its
// previous mark, and scans every stream once, until ctx ends.
func (c *Checker) Run(ctx context.Context, interval time.Duration) {
	if found, err := c.Scan(ctx); err != nil && ctx.Err() == nil {
		c.log.Warn("integrity scan", "error", err)
	} else if len(found) > 0 {
		// Kept at once, so doctor on the running directory shows them.
		if err := c.Mark(ctx, false); err != nil && ctx.Err() == nil {
			c.log.Warn("integrity record", "error", err)
		}
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := c.Mark(ctx, false); err != nil && ctx.Err() == nil {
				c.log.Warn("integrity record", "error", err)
			}
		}
	}
}

func same(a, b []engine.StreamState) bool {
	if len(a) != len(b) {
		return false
	}
	m := map[string]engine.StreamState{}
	for _, s := range a {
		m[key(s.Account, s.Stream)] = s
	}
	for _, s := range b {
		o, ok := m[key(s.Account, s.Stream)]
		if !ok || o.First != s.First || o.Last != s.Last || o.Msgs != s.Msgs {
			return false
		}
	}
	return true
}

func key(account, stream string) string { return account + "/" + stream }

func split(k string) (string, string) {
	for i := range len(k) {
		if k[i] == '/' {
			return k[:i], k[i+1:]
		}
	}
	return "", k
}

func span(first, last uint64) string {
	switch {
	case first > last:
		return ""
	case first == last:
		return fmt.Sprint(first)
	}
	return fmt.Sprintf("%d-%d", first, last)
}

// ranges writes sorted sequences as "1-3,7".
func ranges(seqs []uint64) string {
	s := append([]uint64(nil), seqs...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	out := ""
	for i := 0; i < len(s); {
		j := i
		for j+1 < len(s) && s[j+1] == s[j]+1 {
			j++
		}
		if out != "" {
			out += ","
		}
		out += span(s[i], s[j])
		i = j + 1
	}
	return out
}
