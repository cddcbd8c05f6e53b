package audit

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

const anchorFileFormat = "penstock-audit-anchor-v1"

// FileAnchor keeps each chain's latest signed checkpoint in a file outside the data
// directory, so that the stream and its kept checkpoints rolled back together (a restored
// copy of the data directory) are found behind it. It only moves forward.
type FileAnchor struct {
	Path string

	mu sync.Mutex
}

// OpenFileAnchor checks that path can be an external anchor for the log of dataDir: its
// directory exists and, with symbolic links resolved, lies outside dataDir.
func OpenFileAnchor(path, dataDir string) (*FileAnchor, error) {
	dir, err := filepath.EvalSymlinks(filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("audit.anchor.file: its directory: %w", err)
	}
	data, err := filepath.EvalSymlinks(dataDir)
	if err != nil {
		return nil, fmt.Errorf("audit.anchor.file: data_dir: %w", err)
	}
	if rel, err := filepath.Rel(data, dir); err == nil && (rel == "." || rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))) {
		return nil, fmt.Errorf("audit.anchor.file: %s is inside data_dir %s (symbolic links resolved): a copy there is rolled back with the data", path, dataDir)
	}
	a := &FileAnchor{Path: filepath.Join(dir, filepath.Base(path))}
	if fi, err := os.Lstat(a.Path); err == nil && !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("audit.anchor.file: %s is not a regular file (a symbolic link could point back into data_dir)", path)
	}
	if _, err := a.Read(); err != nil {
		return nil, err
	}
	return a, nil
}

type anchorFile struct {
	Format      string                 `json:"format"`
	Checkpoints map[string]*Checkpoint `json:"checkpoints"` // by chain
}

// Read returns the checkpoints the file holds, by chain; none if it does not exist yet.
func (a *FileAnchor) Read() (Anchors, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.readLocked()
}

func (a *FileAnchor) readLocked() (Anchors, error) {
	b, err := os.ReadFile(a.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return Anchors{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("audit anchor %s: %w", a.Path, err)
	}
	var f anchorFile
	if err := json.Unmarshal(b, &f); err != nil || f.Format != anchorFileFormat {
		return nil, fmt.Errorf("audit anchor %s: not a penstock audit anchor", a.Path)
	}
	out := Anchors{}
	for chain, c := range f.Checkpoints {
		if c == nil || len(c.Heads) != 1 || c.Heads[chain] == (Head{}) {
			return nil, fmt.Errorf("audit anchor %s: the entry of chain %q is not one of its checkpoints", a.Path, chain)
		}
		out[chain] = c
	}
	return out, nil
}

// Advance records checkpoints (by chain) where they are later than the file's, and
// replaces the file atomically (written aside, synced, renamed, directory synced).
func (a *FileAnchor) Advance(cs map[string]*Checkpoint) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	cur, err := a.readLocked()
	if err != nil {
		return err // never overwrite what cannot be read: it may be the evidence
	}
	for chain, c := range cs {
		if prev := cur[chain]; prev == nil || c.after(*prev, chain) {
			cur[chain] = c
		}
	}
	return a.writeLocked(cur)
}

// Replace makes the file hold cs (by chain) only, whatever it held: for a log restored from a
// backup, which the file is ahead of. The file it held is first renamed aside, beside it, as
// "<name>.replaced-<UTC time>", and that name returned ("" if there was no file).
func (a *FileAnchor) Replace(cs map[string]*Checkpoint) (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	aside := ""
	if _, err := os.Lstat(a.Path); err == nil {
		aside = a.Path + ".replaced-" + time.Now().UTC().Format("20060102T150405.000000000Z")
		if err := os.Rename(a.Path, aside); err != nil {
			return "", err
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	return aside, a.writeLocked(cs)
}

// writeLocked replaces the file atomically (written aside, synced, renamed, directory synced).
func (a *FileAnchor) writeLocked(cur map[string]*Checkpoint) error {
	b, _ := json.MarshalIndent(anchorFile{Format: anchorFileFormat, Checkpoints: cur}, "", " ")
	dir := filepath.Dir(a.Path)
	tmp, err := os.CreateTemp(dir, ".penstock-audit-anchor-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), a.Path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
