package audit

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/engine"
	"github.com/penstock/penstock/internal/keyring"
)

// natsOnDisk runs a NATS server with an unencrypted store in dir, so a test can edit the
// stream's files the way someone with the disk could, and returns Penstock's engine on it.
func natsOnDisk(t *testing.T, dir string) (*server.Server, *engine.Engine) {
	t.Helper()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true, StoreDir: dir, NoSigs: true, NoLog: true})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	cfg := config.Default().Engine
	cfg.NATSURL = ns.ClientURL()
	eng, err := engine.Open(context.Background(), engine.Options{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	return ns, eng
}

// Editing the stream's files on disk, with the server stopped, is found: an event changed in
// place, and the file cut short.
func TestVerifyFindsEditsOnDisk(t *testing.T) {
	edits := map[string]func(b []byte) ([]byte, bool){
		"event changed in place": func(b []byte) ([]byte, bool) {
			i := bytes.Index(b, []byte(`"target":"secret/7"`))
			if i < 0 {
				return b, false
			}
			copy(b[i:], []byte(`"target":"secret/9"`))
			return b, true
		},
		"file cut short": func(b []byte) ([]byte, bool) { return b[:len(b)/2], len(b) > 0 },
	}
	for name, edit := range edits {
		t.Run(name, func(t *testing.T) { verifyAfterDiskEdit(t, edit) })
	}
}

func verifyAfterDiskEdit(t *testing.T, edit func([]byte) ([]byte, bool)) {
	ctx := context.Background()
	storeDir, keyDir := t.TempDir(), t.TempDir()
	master, err := keyring.LoadMaster(ctx, keyDir, config.Keyring{})
	if err != nil {
		t.Fatal(err)
	}
	defer master.Close()
	open := func() (*server.Server, *engine.Engine, *keyring.Keyring, *Log) {
		return openOnDisk(t, storeDir, master)
	}
	ns, eng, kr, l := open()
	appendN(t, l, 20)
	if err := l.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if rep, err := l.VerifyAll(ctx); err != nil || !rep.OK {
		t.Fatalf("before the edit: %+v %v", rep, err)
	}
	kr.Close()
	eng.Close()
	ns.Shutdown()
	ns.WaitForShutdown()

	edited := 0
	filepath.WalkDir(filepath.Join(storeDir, "jetstream"), func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || filepath.Ext(p) != ".blk" || !bytes.Contains([]byte(p), []byte(Stream)) {
			return nil
		}
		b, _ := os.ReadFile(p)
		if nb, ok := edit(b); ok {
			os.WriteFile(p, nb, 0o600)
			edited++
		}
		return nil
	})
	if edited == 0 {
		t.Fatal("the event to edit was not found on disk")
	}

	ns, eng, kr, l = open()
	defer func() { kr.Close(); eng.Close(); ns.Shutdown() }()
	rep, err := l.VerifyAll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK || rep.Break == nil {
		t.Fatalf("an event edited on disk: %+v %+v", rep, rep.Break)
	}
	t.Logf("edit on disk found: %s at sequence %d (%s)", rep.Break.Kind, rep.Break.Seq, rep.Break.Detail)
}

// openOnDisk opens an engine on storeDir, a keyring under master and the audit log on them.
func openOnDisk(t *testing.T, storeDir string, master *keyring.Master) (*server.Server, *engine.Engine, *keyring.Keyring, *Log) {
	t.Helper()
	ctx := context.Background()
	ns, eng := natsOnDisk(t, storeDir)
	plat, _ := eng.Account(ctx, engine.PlatformAccount)
	kr, err := keyring.New(ctx, keyring.Options{Master: master, Platform: plat})
	if err != nil {
		t.Fatal(err)
	}
	l, err := Open(ctx, Options{Platform: plat, Keyring: kr})
	if err != nil {
		t.Fatal(err)
	}
	return ns, eng, kr, l
}
