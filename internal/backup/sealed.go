package backup

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"strconv"

	"github.com/penstock/penstock/internal/keyring"
)

// A sealed part is a part of a backup (one stream's snapshot) as it is stored: a header line,
// then frames, each a flag byte, a 4-byte big-endian length and a chunk of the snapshot sealed
// by the keyring under the part's scope. A chunk's sealed identity is the part's id, the
// chunk's index and whether it is the last, so chunks cannot be reordered, moved to another
// part or backup, dropped from the end or repeated: any of these fails to open. The last
// frame (possibly empty) is always written, so a part cut short is noticed without the
// manifest. Sealing with the scope's data keys means that shredding the scope makes every
// backup of it unreadable.
const (
	partHeader = "penstock-backup-part/1\n"
	sealKind   = "backup"
	// chunkSize is how much of a snapshot one sealed chunk holds.
	chunkSize = 1 << 20
	// maxFrame bounds a frame's length when reading: a chunk and the keyring's overhead.
	maxFrame = chunkSize + 1024
)

// ErrUnreadable is returned when a part cannot be opened: damaged, cut short, from another
// part, or sealed with keys that are gone (a shredded scope).
var ErrUnreadable = errors.New("backup part cannot be opened")

// SealedWriter seals what is written to it, chunk by chunk, into w.
type SealedWriter struct {
	ctx    context.Context
	keys   *keyring.Keyring
	scope  keyring.Scope
	partID string
	w      io.Writer
	sum    hash.Hash
	buf    []byte
	index  int
	n      int64 // bytes written to w
	err    error
	closed bool
}

// NewSealedWriter starts a sealed part with the given id (unique across backups) in w.
func NewSealedWriter(ctx context.Context, keys *keyring.Keyring, scope keyring.Scope, partID string, w io.Writer) (*SealedWriter, error) {
	s := &SealedWriter{ctx: ctx, keys: keys, scope: scope, partID: partID, sum: sha256.New(), buf: make([]byte, 0, chunkSize)}
	s.w = io.MultiWriter(w, s.sum)
	if err := s.write([]byte(partHeader)); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *SealedWriter) write(p []byte) error {
	n, err := s.w.Write(p)
	s.n += int64(n)
	return err
}

// Write takes plaintext.
func (s *SealedWriter) Write(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	written := 0
	for len(p) > 0 {
		k := min(len(p), chunkSize-len(s.buf))
		s.buf = append(s.buf, p[:k]...)
		p, written = p[k:], written+k
		if len(s.buf) == chunkSize {
			if s.err = s.frame(false); s.err != nil {
				return written, s.err
			}
		}
	}
	return written, nil
}

// Close seals what is left as the last chunk. It does not close the underlying writer.
func (s *SealedWriter) Close() error {
	if s.closed {
		return s.err
	}
	s.closed = true
	if s.err == nil {
		s.err = s.frame(true)
	}
	return s.err
}

// Size is the sealed part's length in bytes, and Sum its SHA-256, once closed.
func (s *SealedWriter) Size() int64   { return s.n }
func (s *SealedWriter) Sum() [32]byte { return [32]byte(s.sum.Sum(nil)) }

func (s *SealedWriter) frame(last bool) error {
	sealed, err := s.keys.Seal(s.ctx, s.scope, sealKind, chunkID(s.partID, s.index, last), s.buf)
	if err != nil {
		return fmt.Errorf("seal backup part %s: %w", s.partID, err)
	}
	flag := byte(0)
	if last {
		flag = 1
	}
	head := binary.BigEndian.AppendUint32([]byte{flag}, uint32(len(sealed)))
	if err := s.write(head); err != nil {
		return err
	}
	if err := s.write(sealed); err != nil {
		return err
	}
	s.index++
	s.buf = s.buf[:0]
	return nil
}

func chunkID(partID string, index int, last bool) string {
	id := partID + "/" + strconv.Itoa(index)
	if last {
		id += "/last"
	}
	return id
}

// SealedReader opens a sealed part, giving back the plaintext; any damage is an error that
// wraps ErrUnreadable and says where.
type SealedReader struct {
	ctx    context.Context
	keys   *keyring.Keyring
	scope  keyring.Scope
	partID string
	r      *bufio.Reader
	plain  []byte
	index  int
	done   bool
	err    error
}

// NewSealedReader reads the sealed part partID from r.
func NewSealedReader(ctx context.Context, keys *keyring.Keyring, scope keyring.Scope, partID string, r io.Reader) (*SealedReader, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	head := make([]byte, len(partHeader))
	if _, err := io.ReadFull(br, head); err != nil || string(head) != partHeader {
		return nil, fmt.Errorf("%w: %s is not a Penstock backup part (its first line)", ErrUnreadable, partID)
	}
	return &SealedReader{ctx: ctx, keys: keys, scope: scope, partID: partID, r: br}, nil
}

// Read gives the part's plaintext; io.EOF after the last chunk.
func (s *SealedReader) Read(p []byte) (int, error) {
	for len(s.plain) == 0 {
		if s.err != nil {
			return 0, s.err
		}
		if s.done {
			return 0, io.EOF
		}
		s.err = s.next()
	}
	n := copy(p, s.plain)
	s.plain = s.plain[n:]
	return n, nil
}

func (s *SealedReader) next() error {
	var head [5]byte
	if _, err := io.ReadFull(s.r, head[:]); err != nil {
		return fmt.Errorf("%w: %s is cut short before its last chunk (after chunk %d)", ErrUnreadable, s.partID, s.index)
	}
	last := head[0] == 1
	n := binary.BigEndian.Uint32(head[1:])
	if head[0] > 1 || n > maxFrame {
		return fmt.Errorf("%w: %s chunk %d: damaged frame", ErrUnreadable, s.partID, s.index)
	}
	sealed := make([]byte, n)
	if _, err := io.ReadFull(s.r, sealed); err != nil {
		return fmt.Errorf("%w: %s is cut short in chunk %d", ErrUnreadable, s.partID, s.index)
	}
	plain, err := s.keys.Unseal(s.ctx, s.scope, sealKind, chunkID(s.partID, s.index, last), sealed)
	if err != nil {
		return fmt.Errorf("%w: %s chunk %d does not open under %s's keys (damaged, from elsewhere, or the keys were destroyed): %v",
			ErrUnreadable, s.partID, s.index, s.scope, err)
	}
	s.plain, s.index, s.done = plain, s.index+1, last
	if last {
		if _, err := s.r.ReadByte(); err != io.EOF {
			return fmt.Errorf("%w: %s has data after its last chunk", ErrUnreadable, s.partID)
		}
	}
	return nil
}
