package backup

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"gocloud.dev/blob/fileblob"

	"github.com/penstock/penstock/internal/keyring/keyringtest"
)

// R5. Whoever can write to the target can make every List (run at each start by
// openBackups, and by every GET /v1/backups, a tenant owner's included) read an object of any
// size into memory before any signature is checked: a "manifest" of N bytes costs several times N (128 MiB: ~600 MiB allocated).
func TestReviewHugeManifestIsReadWhole(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	st, err := keyringtest.Open(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	dir := t.TempDir()
	bucket, err := fileblob.OpenBucket(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer bucket.Close()
	svc := NewService(ServiceOptions{Engine: st.Engine, Keyring: st.Keyring, Bucket: bucket, Tenants: func() []Tenant { return nil }})
	if _, err := svc.Backup(ctx, "", nil); err != nil {
		t.Fatal(err)
	}
	// A planted manifest: sparse, so it costs the disk nothing.
	evil := filepath.Join(dir, "20991231T235959Z-abcdef", "manifest")
	if err := os.MkdirAll(filepath.Dir(evil), 0o700); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(evil)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(128 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	if _, err := svc.List(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	if got := after.TotalAlloc - before.TotalAlloc; got > 32<<20 {
		t.Errorf("List allocated %d MiB for a planted manifest before checking its signature", got>>20)
	}
}
