package backup

import (
	"context"
	"crypto/ed25519"
	"os"
	"path/filepath"
	"testing"
	"time"

	"gocloud.dev/blob/fileblob"

	"github.com/penstock/penstock/internal/audit"
	"github.com/penstock/penstock/internal/engine"
	"github.com/penstock/penstock/internal/keyring"
	"github.com/penstock/penstock/internal/keyring/keyringtest"
)

// A checkpoint written between the cut of the audit anchors' bucket and the cut of the audit
// stream (the bucket is cut first) leaves the restored stream with a checkpoint no restored
// anchor vouches for: verify reported the restored log as tampered with. Reanchor sets the
// anchors from the restored stream's own checkpoints, and replaces an external anchor file
// that the rolled-back log is now behind, keeping the old one aside.
func TestRestoredAuditLogVerifiesOnceReanchored(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	st, err := keyringtest.Open(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	bucket, err := fileblob.OpenBucket(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer bucket.Close()
	plat := st.Platform
	anchorFile := filepath.Join(t.TempDir(), "anchor.json")
	fa, err := audit.OpenFileAnchor(anchorFile, dir)
	if err != nil {
		t.Fatal(err)
	}
	open := func() *audit.Log {
		t.Helper()
		l, err := audit.Open(ctx, audit.Options{Platform: plat, Keyring: st.Keyring, CheckpointDelay: time.Hour, Anchor: fa})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	l := open()
	appendEv := func(l *audit.Log, tenant string) {
		t.Helper()
		if _, err := l.Append(ctx, audit.Event{Actor: "alice", Tenant: tenant, Action: "queue.create", Result: audit.ResultOK}); err != nil {
			t.Fatal(err)
		}
	}
	appendEv(l, "")
	if err := l.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	appendEv(l, "acme") // acme's first event: no checkpoint of it yet

	_, priv, _ := ed25519.GenerateKey(nil)
	o := Options{Engine: st.Engine, Keyring: st.Keyring, Bucket: bucket}
	cut := false
	m, err := create(ctx, o, "20261205T1600Z", "", []Source{{Account: engine.PlatformAccount, Scope: keyring.Scope{Tenant: "platform"},
		Skip: map[string]bool{"KV_penstock_keys": true}}}, priv, nil, func(p Part) {
		if p.Stream == "KV_penstock_audit" {
			// Between the two cuts: acme's first checkpoint, and its anchor, are written.
			if err := l.Checkpoint(ctx); err != nil {
				t.Error(err)
			}
			cut = true
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if !cut {
		t.Fatalf("the backup has no part of the anchors' bucket: %+v", m.Parts)
	}
	// After the backup the log goes on, and the external anchor with it.
	appendEv(l, "acme")
	appendEv(l, "")
	if err := l.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	var audited []Part
	for _, p := range m.Parts {
		if p.Stream == "KV_penstock_audit" || p.Stream == audit.Stream {
			audited = append(audited, p)
		}
	}
	if len(audited) != 2 {
		t.Fatalf("audit parts: %+v", audited)
	}
	if err := RestoreParts(ctx, o, m, audited); err != nil {
		t.Fatal(err)
	}
	restored := open()
	rep, err := restored.VerifyAll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK || rep.Break.Kind != audit.Unanchored {
		t.Fatalf("the restored log before it is re-anchored: %+v (want unanchored: the anchors were cut before the stream)", rep)
	}
	chains, aside, err := restored.Reanchor(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(chains) != 2 || chains[0] != "acme" || chains[1] != audit.PlatformChain {
		t.Fatalf("re-anchored chains %v", chains)
	}
	if rep, err = restored.VerifyAll(ctx); err != nil || !rep.OK {
		t.Fatalf("the restored log after it is re-anchored: %+v %v", rep, err)
	}
	// The file the log was ahead of is kept aside, as it was.
	if aside == "" || filepath.Dir(aside) != filepath.Dir(anchorFile) {
		t.Fatalf("external anchor set aside as %q", aside)
	}
	old, err := audit.OpenFileAnchor(aside, dir)
	if err != nil {
		t.Fatal(err)
	}
	before, err := old.Read()
	if err != nil {
		t.Fatal(err)
	}
	if before["acme"] == nil || before["acme"].Heads["acme"].Index != 2 {
		t.Fatalf("the set-aside anchor file: %+v", before)
	}
	if _, err := os.Stat(anchorFile); err != nil {
		t.Fatal(err)
	}
	// The re-anchored log goes on: new events are checkpointed and verify.
	appendEv(restored, "acme")
	if err := restored.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if rep, err = restored.VerifyAll(ctx); err != nil || !rep.OK {
		t.Fatalf("the restored log, written to after the restore: %+v %v", rep, err)
	}
}
