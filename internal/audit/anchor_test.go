package audit

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/engine"
	"github.com/penstock/penstock/internal/keyring"
	"github.com/penstock/penstock/internal/redact"
)

// A wholesale rollback (the stream and its kept checkpoints restored together from an older
// copy of the store) verifies on its own, and is found behind the external anchor.
func TestExternalAnchorFindsRollback(t *testing.T) {
	storeDir, keyDir, outside := t.TempDir(), t.TempDir(), t.TempDir()
	master, err := keyring.LoadMaster(ctx, keyDir, config.Keyring{})
	if err != nil {
		t.Fatal(err)
	}
	defer master.Close()
	anchor, err := OpenFileAnchor(filepath.Join(outside, "audit-anchor.json"), storeDir)
	if err != nil {
		t.Fatal(err)
	}
	var ns *server.Server
	var eng *engine.Engine
	var kr *keyring.Keyring
	open := func(a *FileAnchor) *Log {
		ns, eng = natsOnDisk(t, storeDir)
		plat, _ := eng.Account(ctx, engine.PlatformAccount)
		if kr, err = keyring.New(ctx, keyring.Options{Master: master, Platform: plat}); err != nil {
			t.Fatal(err)
		}
		l, err := Open(ctx, Options{Platform: plat, Keyring: kr, Anchor: a})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	stop := func() { kr.Close(); eng.Close(); ns.Shutdown(); ns.WaitForShutdown() }

	l := open(anchor)
	appendN(t, l, 30)
	if err := l.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	stop()
	saved := t.TempDir()
	if err := os.CopyFS(saved, os.DirFS(storeDir)); err != nil {
		t.Fatal(err)
	}
	l = open(anchor)
	appendN(t, l, 30)
	if err := l.Close(ctx); err != nil {
		t.Fatal(err)
	}
	stop()
	if err := os.RemoveAll(storeDir); err != nil {
		t.Fatal(err)
	}
	if err := os.CopyFS(storeDir, os.DirFS(saved)); err != nil {
		t.Fatal(err)
	}

	l = open(nil)
	if rep, err := l.VerifyAll(ctx); err != nil || !rep.OK {
		t.Fatalf("without the external anchor, a rollback is consistent: %+v %v", rep, err)
	}
	stop()
	l = open(anchor)
	defer stop()
	rep, err := l.VerifyAll(ctx)
	if err != nil || rep.OK || rep.Break.Kind != Truncated {
		t.Fatalf("rolled back behind the external anchor: %+v %v", rep, err)
	}
	t.Logf("found: %s (%s)", rep.Break.Kind, rep.Break.Detail)
	// The checkpointer does not move the external anchor back onto the rolled-back log.
	before, _ := os.ReadFile(anchor.Path)
	appendN(t, l, 3)
	l.Checkpoint(ctx)
	a, err := anchor.Read()
	if err != nil {
		t.Fatal(err)
	}
	if rep, _ := l.VerifyAll(ctx); rep.OK {
		t.Fatalf("the rollback verifies after a checkpoint; anchor %s then %v", before, a)
	}
}

func TestAnchorFileMustBeOutsideTheDataDirectory(t *testing.T) {
	data, other := t.TempDir(), t.TempDir()
	link := filepath.Join(other, "into-data")
	if err := os.Symlink(data, link); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{filepath.Join(data, "anchor.json"), filepath.Join(link, "anchor.json")} {
		if _, err := OpenFileAnchor(p, data); err == nil || !strings.Contains(err.Error(), "inside data_dir") {
			t.Fatalf("%s: %v", p, err)
		}
	}
	// A file named outside that is a link into the data directory.
	fileLink := filepath.Join(other, "linked.json")
	if err := os.Symlink(filepath.Join(data, "anchor.json"), fileLink); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenFileAnchor(fileLink, data); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("a symbolic link as the anchor file: %v", err)
	}
	if _, err := OpenFileAnchor(filepath.Join(other, "missing", "anchor.json"), data); err == nil {
		t.Fatal("an anchor in a directory that does not exist")
	}
	if _, err := OpenFileAnchor(filepath.Join(other, "anchor.json"), data); err != nil {
		t.Fatal(err)
	}
}

// With checkpoints forwarded, the SIEM receives every signed head, in stream order with the
// events, and the checkpoint it holds verifies with the log's key.
func TestCheckpointsReachTheSIEM(t *testing.T) {
	st := openStack(t)
	l, err := Open(ctx, Options{Platform: st.Platform, Keyring: st.Keyring, ForwardCheckpoints: true})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var events int
	heads := map[string]Checkpoint{}
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var rec Record
		mu.Lock()
		defer mu.Unlock()
		if json.Unmarshal(body, &rec) == nil && rec.Checkpoint != nil {
			for chain := range rec.Checkpoint.Heads {
				heads[chain] = *rec.Checkpoint
			}
			return
		}
		events++
	}))
	defer srv.Close()
	hook := &Webhook{URL: srv.URL, Secret: redact.NewSecret("hook-secret-0123456789"), Client: srv.Client()}
	appendN(t, l, 9)
	if err := l.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	fctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { l.Forward(fctx, hook); close(done) }()
	defer func() { stop(); <-done }()
	waitFor(t, "9 events and 3 checkpoints", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return events == 9 && len(heads) == 3
	})
	mu.Lock()
	defer mu.Unlock()
	for chain, c := range heads {
		if !ed25519.Verify(l.PublicKey(), c.signed(), c.Signature) || c.Heads[chain].Index != 3 {
			t.Fatalf("the SIEM's checkpoint of %s: %+v", chain, c)
		}
	}
}
