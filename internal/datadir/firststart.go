package datadir

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/penstock/penstock/internal/redact"
)

// InitFile records the data directory's first start: "initializing" from the moment a first
// start begins on a directory that holds no store, "complete" once it finished (keys, CA,
// engine and first administrator all made). Only while it says "initializing" may a missing
// key file be created; next to existing data a missing key file is a refusal.
const InitFile = "penstock-init.json"

// storeFiles are what a data directory holds once anything has been stored in it: any of them
// present without InitFile is a directory from before the marker, never a first start.
var storeFiles = []string{
	"jetstream", "master.key", "master.key.next", "jetstream.keys", "jetstream.key", "engine.token",
	"tls/ca.key", "tls/ca.crt", "integrity.sealed",
}

// Init states.
const (
	StateInitializing = "initializing"
	StateComplete     = "complete"
)

type initRecord struct {
	State     string    `json:"state"`
	Started   time.Time `json:"started"`
	Completed time.Time `json:"completed,omitzero"`
}

// MissingError is a refusal to start: a file that protects existing data is missing. Its
// message is one line for people: the file, what it protects, how to get it back.
type MissingError struct {
	Dir, File, Protects string
}

func (e *MissingError) Error() string {
	return fmt.Sprintf("%s is missing from data directory %s, which holds data: it is %s; restore it from a copy "+
		"or a backup of this directory and start again (Penstock creates it only on a first start, never next to existing data)",
		e.File, e.Dir, e.Protects)
}

// FirstStart reports whether dir is in its first start, when missing key files may be made.
// On a directory that holds no store and no marker it begins one: the marker, written first,
// says "initializing" until Complete.
func FirstStart(dir string) (bool, error) {
	rec, err := readInit(dir)
	if err != nil {
		return false, err
	}
	if rec != nil {
		return rec.State == StateInitializing, nil
	}
	for _, f := range storeFiles {
		if _, err := os.Lstat(filepath.Join(dir, f)); err == nil {
			return false, nil // data from before the marker: nothing is made any more
		} else if !errors.Is(err, os.ErrNotExist) {
			return false, fmt.Errorf("data directory: %w", err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return false, fmt.Errorf("data directory: %w", err)
	}
	if err := writeInit(dir, initRecord{State: StateInitializing, Started: time.Now().UTC()}); err != nil {
		return false, err
	}
	return true, nil
}

// Complete marks the first start finished (or adopts a directory from before the marker):
// from now on no key file is ever created in dir.
func Complete(dir string) error {
	rec, err := readInit(dir)
	if err != nil {
		return err
	}
	if rec != nil && rec.State == StateComplete {
		return nil
	}
	if rec == nil {
		rec = &initRecord{}
	}
	rec.State, rec.Completed = StateComplete, time.Now().UTC()
	return writeInit(dir, *rec)
}

// State is what InitFile says: StateInitializing, StateComplete, or "" when there is none.
// It writes nothing.
func State(dir string) (string, error) {
	rec, err := readInit(dir)
	if rec == nil {
		return "", err
	}
	return rec.State, err
}

func readInit(dir string) (*initRecord, error) {
	p := filepath.Join(dir, InitFile)
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	var rec initRecord
	if err := json.Unmarshal(b, &rec); err != nil || (rec.State != StateInitializing && rec.State != StateComplete) {
		return nil, fmt.Errorf("%s is damaged: it must say whether the first start completed; restore it from a copy, "+
			`or write {"state":"complete"} into it if this directory has served before`, p)
	}
	return &rec, nil
}

func writeInit(dir string, rec initRecord) error {
	b, _ := json.Marshal(rec)
	return WriteFile(filepath.Join(dir, InitFile), append(b, '\n'), 0o600, true)
}

// MayCreate is nil when the file rel of dir may be created (a first start), else the refusal
// that names it and what it protects.
func MayCreate(dir, rel, protects string) error {
	first, err := FirstStart(dir)
	if err != nil {
		return err
	}
	if !first {
		return &MissingError{Dir: dir, File: rel, Protects: protects}
	}
	return nil
}

// LoadKey reads the key file rel of dir (see LoadOrCreateKey for what it must hold). A missing
// one is created during a first start and refused otherwise.
func LoadKey(dir, rel, protects string) (redact.Secret, error) {
	path := filepath.Join(dir, rel)
	if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
		if err := MayCreate(dir, rel, protects); err != nil {
			return redact.Secret{}, err
		}
	}
	return LoadOrCreateKey(path)
}

// FirstStartWith is FirstStart for a directory that may hold, besides nothing, only the files
// named in keep: the master key the operator put there (kept apart from a lost directory, to
// restore a backup with), or what SetAside left. Such a directory begins its first start too.
func FirstStartWith(dir string, keep ...string) (bool, error) {
	rec, err := readInit(dir)
	if err != nil {
		return false, err
	}
	if rec != nil {
		return rec.State == StateInitializing, nil
	}
	for _, f := range storeFiles {
		if slices.Contains(keep, f) {
			continue
		}
		if _, err := os.Lstat(filepath.Join(dir, f)); err == nil {
			return false, nil
		} else if !errors.Is(err, os.ErrNotExist) {
			return false, fmt.Errorf("data directory: %w", err)
		}
	}
	if err := writeInit(dir, initRecord{State: StateInitializing, Started: time.Now().UTC()}); err != nil {
		return false, err
	}
	return true, nil
}

// SetAside moves everything in dir but the lock and the files named in keep (paths relative to
// dir, a directory's files one by one) into a new directory dir/replaced-<time>, and returns
// its path: what a restore replaces is kept, never deleted.
func SetAside(dir string, keep ...string) (string, error) {
	aside := filepath.Join(dir, "replaced-"+time.Now().UTC().Format("20060102T150405.000Z"))
	if err := os.Mkdir(aside, 0o700); err != nil {
		return "", fmt.Errorf("data directory: %w", err)
	}
	var move func(rel string) error
	move = func(rel string) error {
		entries, err := os.ReadDir(filepath.Join(dir, rel))
		if err != nil {
			return err
		}
		for _, e := range entries {
			r := filepath.Join(rel, e.Name())
			switch {
			case r == LockFile || slices.Contains(keep, r) || strings.HasPrefix(r, "replaced-"):
				continue
			case e.IsDir() && slices.ContainsFunc(keep, func(k string) bool { return strings.HasPrefix(k, r+"/") }):
				if err := os.MkdirAll(filepath.Join(aside, r), 0o700); err != nil {
					return err
				}
				if err := move(r); err != nil {
					return err
				}
				continue
			}
			if err := os.MkdirAll(filepath.Dir(filepath.Join(aside, r)), 0o700); err != nil {
				return err
			}
			if err := os.Rename(filepath.Join(dir, r), filepath.Join(aside, r)); err != nil {
				return err
			}
		}
		return nil
	}
	if err := move("."); err != nil {
		return aside, fmt.Errorf("data directory: set aside into %s: %w", aside, err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return aside, nil
}

// RestoringFile marks a data directory into which a restore is being written: until the
// restore ends it holds part of a platform, and no start may serve it.
const RestoringFile = "restore-in-progress"

// MarkRestoring writes the marker, synced, before a restore writes anything.
func MarkRestoring(dir, what string) error {
	return WriteFile(filepath.Join(dir, RestoringFile), []byte(what+"\n"), 0o600, true)
}

// ClearRestoring removes the marker once the restore is complete.
func ClearRestoring(dir string) error {
	if err := os.Remove(filepath.Join(dir, RestoringFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}

// InterruptedRestore returns an error if a restore into dir began and did not end.
func InterruptedRestore(dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, RestoringFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return fmt.Errorf("data directory %s holds an unfinished restore (%s): it holds part of a platform and is not started; "+
		"move it aside and restore again into an empty directory", dir, strings.TrimSpace(string(b)))
}
