package datadir_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/penstock/penstock/internal/datadir"
)

func TestKeyFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "k")
	k1, err := datadir.LoadOrCreateKey(p)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(p)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %o, want 600", st.Mode().Perm())
	}
	k2, err := datadir.LoadOrCreateKey(p)
	if err != nil || !k1.Equal(k2) {
		t.Fatalf("second load: %v, equal=%v", err, k1.Equal(k2))
	}
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := datadir.LoadOrCreateKey(p); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("world-readable key file: %v", err)
	}
	bad := filepath.Join(dir, "bad")
	os.WriteFile(bad, []byte("short\n"), 0o600)
	if _, err := datadir.LoadOrCreateKey(bad); err == nil || !strings.Contains(err.Error(), "64 hex") {
		t.Fatalf("garbage key file: %v", err)
	}
}

func TestLockIsExclusive(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	l, err := datadir.Acquire(dir)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("data directory: %v, mode %v", err, st.Mode())
	}
	if _, err := datadir.Acquire(dir); err == nil || !strings.Contains(err.Error(), "in use by another penstock process") {
		t.Fatalf("second lock: %v", err)
	}
	if err := l.Release(); err != nil {
		t.Fatal(err)
	}
	l2, err := datadir.Acquire(dir)
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	l2.Release()
}

func TestWriteFileNeverOverwritesWithoutReplace(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := datadir.WriteFile(p, []byte("one"), 0o600, false); err != nil {
		t.Fatal(err)
	}
	if err := datadir.WriteFile(p, []byte("two"), 0o600, false); !os.IsExist(err) && !strings.Contains(err.Error(), "file exists") {
		t.Fatalf("second write without replace: %v", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "one" {
		t.Fatalf("content %q, want one", b)
	}
	if err := datadir.WriteFile(p, []byte("three"), 0o640, true); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(p)
	if b, _ := os.ReadFile(p); string(b) != "three" || st.Mode().Perm() != 0o640 {
		t.Fatalf("after replace: %q mode %o", b, st.Mode().Perm())
	}
	entries, _ := os.ReadDir(filepath.Dir(p))
	if len(entries) != 1 {
		t.Fatalf("temporary files left behind: %v", entries)
	}
}
