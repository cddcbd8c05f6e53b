package keyring

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/engine"
	"github.com/penstock/penstock/internal/testenv"
)

// natsStoreDir is where the machine's NATS server keeps its (unencrypted) JetStream files;
// .ci/services starts it with -sd /var/lib/nats-server.
const natsStoreDir = "/var/lib/nats-server/jetstream"

// Erasure is checked where it can be seen: on the machine's NATS server, whose files are not
// encrypted, a replaced or destroyed wrapped keyset must be gone from the bytes on disk, not
// just from the API. (Penstock's embedded store is encrypted, so its files show nothing.)
func TestWrappedKeysetsAreErasedOnDisk(t *testing.T) {
	testenv.RequireNATS(t)
	if _, err := os.Stat(natsStoreDir); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("NATS store directory: %v", err)
		}
		t.Skipf("NATS store directory %s not readable (%v): the machine's nats-server keeps it there", natsStoreDir, err)
	}
	dir := t.TempDir()
	m, err := LoadMaster(ctx, dir, config.Keyring{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	cfg := config.Default().Engine
	cfg.NATSURL = testenv.NATSURL
	eng, err := engine.Open(ctx, engine.Options{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	plat, _ := eng.Account(ctx, engine.PlatformAccount)
	// A name of its own: a run stopped before its cleanup leaves its bucket behind in the
	// machine's server (t.TempDir names repeat across runs).
	bucket := fmt.Sprintf("test_keyring_%d", time.Now().UnixNano())
	kr, err := New(ctx, Options{Master: m, Platform: plat, Bucket: bucket})
	if err != nil {
		t.Fatal(err)
	}
	defer kr.Close()
	defer plat.JetStream().DeleteStream(context.Background(), "KV_"+bucket)

	wrapped := func(s Scope) []byte {
		e, err := kr.kv.Get(ctx, recordKey(s))
		if err != nil {
			t.Fatal(err)
		}
		var rec scopeRecord
		json.Unmarshal(e.Value(), &rec)
		b, _ := json.Marshal(rec.Keyset) // as it appears in the stored JSON
		return bytes.Trim(b, `"`)[:48]
	}
	onDisk := func(needle []byte) bool {
		found := false
		filepath.WalkDir(filepath.Join(natsStoreDir, "$G", "streams", "KV_"+bucket), func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, needle) {
					found = true
				}
			}
			return nil
		})
		return found
	}
	eventually := func(what string, want bool, needle []byte) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); onDisk(needle) != want; {
			if time.Now().After(deadline) {
				t.Fatalf("%s: on disk = %v, want %v", what, !want, want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	if _, err := kr.Seal(ctx, acmeApp, "secret", "x", []byte("v")); err != nil {
		t.Fatal(err)
	}
	v1 := wrapped(acmeApp)
	eventually("version 1 written", true, v1) // the scan sees what is there
	if _, err := kr.Rotate(ctx, acmeApp); err != nil {
		t.Fatal(err)
	}
	kr.jobs.Wait()
	v2 := wrapped(acmeApp)
	eventually("version 2 written", true, v2)
	eventually("replaced keyset erased", false, v1)
	if err := kr.Destroy(ctx, acme); err != nil {
		t.Fatal(err)
	}
	eventually("destroyed keyset erased", false, v2)
}
