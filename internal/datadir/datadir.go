// Package datadir owns the data directory's files as files: the exclusive lock that keeps two
// processes off one directory, key files, and writes that a crash cannot leave half done. It
// never interprets what the files hold.
package datadir

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/penstock/penstock/internal/redact"
)

// LockFile is held exclusively by the process that uses the data directory.
const LockFile = "LOCK"

// Lock is an exclusive hold on a data directory.
type Lock struct{ f *os.File }

// Acquire creates dir (0700) if needed and takes its lock without waiting. A second process
// on the same directory gets an error naming the directory: two engines on one store would
// corrupt it.
func Acquire(dir string) (*Lock, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, LockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("data directory lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("data directory %s is in use by another penstock process", dir)
		}
		return nil, fmt.Errorf("data directory lock: %w", err)
	}
	return &Lock{f: f}, nil
}

// Release gives the lock up. The kernel also releases it when the process dies.
func (l *Lock) Release() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

// WriteFile writes data to path with perm through a temporary file, fsync and rename, then
// fsyncs the directory, so a crash leaves either the old file or the new one. With replace
// false an existing path is left alone and os.ErrExist is returned.
func WriteFile(path string, data []byte, perm os.FileMode, replace bool) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("sync %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if replace {
		err = os.Rename(tmp.Name(), path)
	} else {
		err = os.Link(tmp.Name(), path) // fails if path exists: never overwrite a key
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return SyncDir(filepath.Dir(path))
}

// SyncDir fsyncs a directory, making renames and creations in it durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// LoadOrCreateKey reads a key file (see ReadKey), creating it with 0600 permissions if it
// does not exist. Key files of a data directory go through LoadKey, which creates one only
// during a first start.
func LoadOrCreateKey(path string) (redact.Secret, error) {
	s, err := ReadKey(path)
	if errors.Is(err, os.ErrNotExist) {
		key, err := NewKey()
		if err != nil {
			return redact.Secret{}, err
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return redact.Secret{}, err
		}
		if err := WriteKey(path, key); err != nil && !errors.Is(err, os.ErrExist) {
			return redact.Secret{}, err
		}
		return ReadKey(path)
	}
	return s, err
}

// ReadKey reads a hex-encoded 256-bit secret. A file readable by group or others is refused,
// and so is one that does not hold exactly 64 hex characters; a missing one is an error that
// errors.Is(err, os.ErrNotExist).
func ReadKey(path string) (redact.Secret, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return redact.Secret{}, fmt.Errorf("read %s: %w", path, err)
	}
	st, err := os.Stat(path)
	if err != nil {
		return redact.Secret{}, err
	}
	if st.Mode().Perm()&0o077 != 0 {
		return redact.Secret{}, fmt.Errorf("%s is readable by group or others (mode %04o): run chmod 600 on it", path, st.Mode().Perm())
	}
	s := strings.TrimRight(string(b), "\r\n")
	if raw, err := hex.DecodeString(s); err != nil || len(raw) != 32 {
		return redact.Secret{}, fmt.Errorf("%s: must hold 64 hex characters (a 256-bit key)", path)
	}
	return redact.NewSecret(s), nil
}

// NewKey returns a random 256-bit key as 64 hex characters.
func NewKey() (redact.Secret, error) {
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return redact.Secret{}, fmt.Errorf("generate key: %w", err)
	}
	return redact.NewSecret(hex.EncodeToString(raw)), nil
}

// WriteKey writes a key file (0600) that does not exist yet; it never replaces one.
func WriteKey(path string, key redact.Secret) error {
	return WriteFile(path, []byte(key.Reveal()+"\n"), 0o600, false)
}
