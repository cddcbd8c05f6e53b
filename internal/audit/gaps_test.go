package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/engine"
	"github.com/penstock/penstock/internal/keyring"
	"github.com/penstock/penstock/internal/keyring/keyringtest"
)

// (a) With the server stopped, the stream's block file cut in half, and the bucket that keeps
// the anchors deleted or left: the log that comes back up, written to and checkpointed again,
// does not verify: the checkpointer does not move an anchor onto a log behind it.
func TestVerifyFailsWhenStreamCutAndAnchorsDeleted(t *testing.T) {
	for _, deleteBucket := range []bool{true, false} {
		t.Run(fmt.Sprintf("bucket deleted %v", deleteBucket), func(t *testing.T) { verifyAfterCut(t, deleteBucket) })
	}
}

func verifyAfterCut(t *testing.T, deleteBucket bool) {
	storeDir, keyDir := t.TempDir(), t.TempDir()
	master, err := keyring.LoadMaster(ctx, keyDir, config.Keyring{})
	if err != nil {
		t.Fatal(err)
	}
	defer master.Close()
	type stack struct {
		ns  *server.Server
		eng *engine.Engine
		kr  *keyring.Keyring
		l   *Log
	}
	open := func() stack {
		ns, eng, kr, l := openOnDisk(t, storeDir, master)
		return stack{ns, eng, kr, l}
	}
	stop := func(s stack) {
		s.kr.Close()
		s.eng.Close()
		s.ns.Shutdown()
		s.ns.WaitForShutdown()
	}
	s := open()
	appendN(t, s.l, 288)
	if err := s.l.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if rep, err := s.l.VerifyAll(ctx); err != nil || !rep.OK || rep.Events != 288 {
		t.Fatalf("before: %+v %v", rep, err)
	}
	stop(s)

	cut, removed := 0, 0
	filepath.WalkDir(filepath.Join(storeDir, "jetstream"), func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() && d.Name() == "KV_penstock_audit" && deleteBucket {
			if err := os.RemoveAll(p); err != nil {
				t.Fatal(err)
			}
			removed++
			return filepath.SkipDir
		}
		if !d.IsDir() && filepath.Ext(p) == ".blk" && strings.Contains(p, Stream) {
			b, _ := os.ReadFile(p)
			os.WriteFile(p, b[:len(b)/2], 0o600)
			cut++
		}
		return nil
	})
	if cut == 0 || deleteBucket && removed == 0 {
		t.Fatalf("cut %d block files, removed %d buckets", cut, removed)
	}

	s = open()
	defer stop(s)
	// The restarted server records its start and checkpoints, as penstock serve does.
	if _, err := s.l.Append(ctx, Event{Actor: "system", Action: "platform.start", Result: ResultOK}); err != nil {
		t.Fatal(err)
	}
	appendN(t, s.l, 160) // every chain past its anchored head again, with other events
	if err := s.l.Checkpoint(ctx); err != nil {
		t.Logf("checkpoint after the cut: %v", err)
	}
	rep, err := s.l.VerifyAll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK {
		t.Fatalf("a log cut in half with its anchors deleted verifies: %d events, %d checkpoints", rep.Events, rep.Checkpoints)
	}
	t.Logf("found: %s (%s), %d events read", rep.Break.Kind, rep.Break.Detail, rep.Events)
}

// (b) An export cut back to an earlier checkpoint line, or cut at its head with its header
// edited to match, does not verify.
func TestExportCutsDoNotVerify(t *testing.T) {
	l, _ := openLog(t)
	for range 3 {
		appendN(t, l, 30)
		if err := l.Checkpoint(ctx); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	if err := l.Export(ctx, &buf, "", time.Time{}, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if rep, err := VerifyExportFile(bytes.NewReader(buf.Bytes()), l.PublicKey()); err != nil || !rep.OK || rep.Events != 90 {
		t.Fatalf("untouched export: %+v %v", rep, err)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	var cps []int
	for i, line := range lines {
		if strings.HasPrefix(line, `{"checkpoint"`) {
			cps = append(cps, i)
		}
	}
	// Back to the checkpoint lines before the last round of three (one per chain).
	tail := strings.Join(lines[:cps[len(cps)-4]+1], "\n")
	if rep, err := VerifyExportFile(strings.NewReader(tail), l.PublicKey()); err == nil && rep.OK {
		t.Fatalf("an export cut back to an earlier checkpoint verifies: %d events", rep.Events)
	}
	// The head cut: the first 10 records dropped (chains' first events), starts edited to match.
	dropped := lines[1:11]
	starts := map[string]Head{}
	for _, line := range dropped {
		var r Record
		if err := json.Unmarshal([]byte(line), &r); err != nil || r.Event == nil {
			t.Fatalf("record %q", line)
		}
		starts[r.Event.Chain] = Head{Index: r.Event.Index, Hash: r.Event.Hash}
	}
	head := editHeader(t, lines[0], func(m map[string]any) {
		st := m["starts"].(map[string]any)
		for chain, h := range starts {
			st[chain] = map[string]any{"index": h.Index, "hash": h.Hash}
		}
	})
	cutHead := strings.Join(append([]string{head}, lines[11:]...), "\n")
	if rep, err := VerifyExportFile(strings.NewReader(cutHead), l.PublicKey()); err == nil && rep.OK {
		t.Fatalf("an export cut at its head, starts edited, verifies: %d events", rep.Events)
	}
	// Any header field edited, the last record dropped, a record added.
	rest := strings.Join(lines[1:], "\n")
	for name, edited := range map[string]string{
		"since edited":   editHeader(t, lines[0], func(m map[string]any) { m["since"] = "2020-01-01T00:00:00Z" }) + "\n" + rest,
		"tenant edited":  editHeader(t, lines[0], func(m map[string]any) { m["tenant"] = "acme" }) + "\n" + rest,
		"last line cut":  strings.Join(lines[:len(lines)-1], "\n"),
		"line repeated":  buf.String() + lines[len(lines)-1] + "\n",
		"signature gone": editHeader(t, lines[0], func(m map[string]any) { delete(m, "signature") }) + "\n" + rest,
	} {
		if rep, err := VerifyExportFile(strings.NewReader(edited), l.PublicKey()); err == nil && rep.OK {
			t.Fatalf("%s: verifies", name)
		}
	}
	// An export made before exports were signed still verifies, marked unsealed.
	v1 := editHeader(t, lines[0], func(m map[string]any) {
		m["format"] = "penstock-audit-export-v1"
		for _, k := range []string{"chains", "records", "time", "signature"} {
			delete(m, k)
		}
	}) + "\n" + rest
	if rep, err := VerifyExportFile(strings.NewReader(v1), l.PublicKey()); err != nil || !rep.OK || !rep.Unsealed {
		t.Fatalf("a v1 export: %+v %v", rep, err)
	}
}

// (c) Events never wait long unsigned: with nothing but the log's own background work (no
// clean stop, no 100 events, no hour), every chain's head is anchored within seconds, across
// processes killed without a stop.
func TestUnsignedTailIsBoundedInTime(t *testing.T) {
	st := openStack(t)
	total := 0
	var slowest time.Duration
	for cycle := range 10 {
		l, err := Open(ctx, Options{Platform: st.Platform, Keyring: st.Keyring, CheckpointDelay: 300 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); l.Checkpoints(cctx) }()
		appendN(t, l, 2+cycle%3)
		total += 2 + cycle%3
		appended := time.Now()
		waitFor(t, "every chain anchored at its head", func() bool { return anchoredAtHead(t, l) })
		slowest = max(slowest, time.Since(appended))
		cancel() // killed: no Close, no final checkpoint
		<-done
	}
	l, err := Open(ctx, Options{Platform: st.Platform, Keyring: st.Keyring})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := l.VerifyAll(ctx)
	if err != nil || !rep.OK || rep.Events != total {
		t.Fatalf("after ten kills: %+v %v", rep, err)
	}
	t.Logf("%d events over ten kills, all signed; slowest from last append to anchored: %s (delay 300ms)", total, slowest.Round(time.Millisecond))
}

func openStack(t *testing.T) *keyringtest.Stack {
	t.Helper()
	st, err := keyringtest.Open(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return st
}

// anchoredAtHead tells whether every chain's kept checkpoint signs the chain's last event.
func anchoredAtHead(t *testing.T, l *Log) bool {
	t.Helper()
	heads := map[string]Head{}
	for _, r := range records(t, l) {
		if e := r.Event; e != nil {
			heads[e.Chain] = Head{Index: e.Index, Hash: e.Hash}
		}
	}
	anchors, err := l.Anchor(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for chain, h := range heads {
		a := anchors[anchorKey+"."+chain]
		if a == nil || a.Heads[chain] != h {
			return false
		}
	}
	return true
}

// editHeader rewrites an export's header line through fn.
func editHeader(t *testing.T, line string, fn func(map[string]any)) string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(line), &m); err != nil {
		t.Fatal(err)
	}
	fn(m)
	b, _ := json.Marshal(m)
	return string(b)
}
