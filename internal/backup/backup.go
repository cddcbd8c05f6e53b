package backup

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"gocloud.dev/blob"
	"gocloud.dev/gcerrors"

	"github.com/penstock/penstock/internal/engine"
	"github.com/penstock/penstock/internal/keyring"
)

// Source is one engine account to back up, and the keyring scope its parts are sealed under.
type Source struct {
	Account string
	Scope   keyring.Scope
	// Skip names streams of the account the backup leaves out.
	Skip map[string]bool
	// ScopeOf, when set, gives the scope a stream is sealed under (an application's own
	// streams under the application's key, so that deleting it shreds them in every backup);
	// streams it returns the zero scope for are sealed under Scope.
	ScopeOf func(stream string) keyring.Scope
}

// scopeOf is the scope the source's stream is sealed under.
func (src Source) scopeOf(stream string) keyring.Scope {
	if src.ScopeOf != nil {
		if sc := src.ScopeOf(stream); sc.Tenant != "" {
			return sc
		}
	}
	return src.Scope
}

// Options are what taking, checking and restoring backups need.
type Options struct {
	Engine  *engine.Engine
	Keyring *keyring.Keyring
	Bucket  *blob.Bucket
}

// manifestObject is where a backup's manifest is stored; its parts are beside it.
func manifestObject(id string) string { return path.Join(id, "manifest") }

// Create backs up every stream of the sources' accounts into the bucket under id, each a
// sealed part, then writes the signed manifest: a backup without its manifest is not one.
func Create(ctx context.Context, o Options, id, tenant string, sources []Source, sign ed25519.PrivateKey) (*Manifest, error) {
	return create(ctx, o, id, tenant, sources, sign, nil, nil)
}

// create is Create with more parts added by extra after the streams', and report told of each
// part stored.
func create(ctx context.Context, o Options, id, tenant string, sources []Source, sign ed25519.PrivateKey,
	extra func(*Manifest) error, report func(Part)) (*Manifest, error) {
	m := &Manifest{ID: id, Created: time.Now().UTC(), Tenant: tenant}
	for _, src := range sources {
		parts, err := createAccount(ctx, o, id, src, report)
		if err != nil {
			return nil, err
		}
		m.Parts = append(m.Parts, parts...)
	}
	if extra != nil {
		if err := extra(m); err != nil {
			return nil, err
		}
	}
	b, err := m.Sign(sign)
	if err != nil {
		return nil, err
	}
	if err := o.Bucket.WriteAll(ctx, manifestObject(id), b, nil); err != nil {
		return nil, fmt.Errorf("write the manifest of backup %s: %w", id, err)
	}
	return m, nil
}

// createAccount backs up every stream of one account, in cutOrder. A queue's dead-letter
// queue is made with its first dead letter: one made while the account's streams were being
// cut is cut after them, so that a message moved into it after its queue's cut is in the
// backup.
func createAccount(ctx context.Context, o Options, id string, src Source, report func(Part)) ([]Part, error) {
	acc, release, err := o.Engine.HeldAccount(ctx, src.Account)
	if err != nil {
		return nil, err
	}
	defer release()
	cut := map[string]bool{}
	var parts []Part
	for round := 0; round < 2; round++ {
		var streams []string
		names := acc.JetStream().StreamNames(ctx)
		for n := range names.Name() {
			if !src.Skip[n] && !cut[n] && (round == 0 || strings.HasPrefix(n, "D_")) {
				streams = append(streams, n)
			}
		}
		if err := names.Err(); err != nil {
			return nil, fmt.Errorf("streams of account %s: %w", src.Account, err)
		}
		slices.SortFunc(streams, func(a, b string) int {
			if c := cutOrder(a) - cutOrder(b); c != 0 {
				return c
			}
			return strings.Compare(a, b)
		})
		for _, stream := range streams {
			p, err := createPart(ctx, o, acc, src, id, stream)
			if err != nil && strings.HasPrefix(stream, "D_") {
				// A dead-letter queue deleted meanwhile (with its queue, or made for a queue
				// deleted meanwhile) is not in the backup, as a queue deleted before it began.
				if _, serr := acc.JetStream().Stream(ctx, stream); errors.Is(serr, jetstream.ErrStreamNotFound) {
					continue
				}
			}
			if err != nil {
				return nil, err
			}
			cut[stream] = true
			parts = append(parts, p)
			if report != nil {
				report(p)
			}
		}
	}
	return parts, nil
}

func createPart(ctx context.Context, o Options, acc *engine.Account, src Source, id, stream string) (Part, error) {
	scope := src.scopeOf(stream)
	p := Part{Object: path.Join(id, src.Account, stream), Account: src.Account, Stream: stream, Scope: scope.String()}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel() // an unfinished object is discarded, not stored
	bw, err := o.Bucket.NewWriter(wctx, p.Object, nil)
	if err != nil {
		return Part{}, err
	}
	sw, err := NewSealedWriter(ctx, o.Keyring, scope, p.Object, bw)
	if err != nil {
		return Part{}, err
	}
	cfg, st, err := Snapshot(ctx, acc.Conn(), stream, sw)
	if err == nil {
		err = sw.Close()
	}
	if err != nil {
		return Part{}, fmt.Errorf("back up %s/%s: %w", src.Account, stream, err)
	}
	if err := bw.Close(); err != nil {
		return Part{}, fmt.Errorf("store %s: %w", p.Object, err)
	}
	sum := sw.Sum()
	p.Size, p.SHA256, p.State = sw.Size(), hex.EncodeToString(sum[:]), st
	if p.Config, err = json.Marshal(cfg); err != nil {
		return Part{}, err
	}
	return p, nil
}

// ErrNotFound is returned for a backup id the bucket does not hold.
var ErrNotFound = errors.New("no such backup")

// Open reads and checks a backup's manifest.
func Open(ctx context.Context, o Options, id string, pub ed25519.PublicKey) (*Manifest, error) {
	b, err := readSmall(ctx, o.Bucket, manifestObject(id), maxManifest)
	if gcerrors.Code(err) == gcerrors.NotFound {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		return nil, err
	}
	m, err := ReadManifest(b, pub)
	if err != nil {
		return nil, err
	}
	if m.ID != id {
		return nil, fmt.Errorf("%w: the manifest stored as %s is backup %s's", ErrManifest, id, m.ID)
	}
	return m, nil
}

// Verify checks, without restoring anything, that every part of the backup is as its
// manifest says and opens to its last chunk.
func Verify(ctx context.Context, o Options, m *Manifest) error {
	for _, p := range m.Parts {
		if err := readPart(ctx, o, p, io.Discard); err != nil {
			return err
		}
	}
	return nil
}

// readPart writes a part's plaintext (the engine's snapshot) to w, checking it against the
// manifest as it goes: a part that does not match fails before its last byte reaches w.
func readPart(ctx context.Context, o Options, p Part, w io.Writer) error {
	scope, err := keyring.ParseScope(p.Scope)
	if err != nil {
		return fmt.Errorf("%w: part %s: scope: %v", ErrManifest, p.Object, err)
	}
	br, err := o.Bucket.NewReader(ctx, p.Object, nil)
	if err != nil {
		return fmt.Errorf("%w: part %s: %v", ErrUnreadable, p.Object, err)
	}
	defer func() { _ = br.Close() }()
	hr := &hashingReader{r: br, h: sha256.New()}
	sr, err := NewSealedReader(ctx, o.Keyring, scope, p.Object, hr)
	if err != nil {
		return err
	}
	if _, err := io.Copy(w, sr); err != nil {
		return err
	}
	return p.Check(hr.n, hr.sum())
}

// RestoreParts restores the parts of a backup into their accounts, replacing streams of the
// same names. Each part is read and checked against the manifest in full before the stream it
// replaces is deleted, and again as it is restored.
func RestoreParts(ctx context.Context, o Options, m *Manifest, parts []Part) error {
	for _, p := range parts {
		var cfg server.StreamConfig
		if err := json.Unmarshal(p.Config, &cfg); err != nil {
			return fmt.Errorf("%w: part %s: configuration: %v", ErrManifest, p.Object, err)
		}
		if cfg.Name != p.Stream {
			return fmt.Errorf("%w: part %s holds stream %q", ErrManifest, p.Object, cfg.Name)
		}
		// The stream it replaces is deleted only once the whole part has opened and matched
		// the manifest: a damaged backup leaves the live stream as it is. Held meanwhile: the
		// read puts nothing on the account's connection, which must not close as idle.
		acc, release, err := o.Engine.HeldAccount(ctx, p.Account)
		if err != nil {
			return err
		}
		err = restoreOnePart(ctx, o, m, p, acc, &cfg)
		release()
		if err != nil {
			return err
		}
	}
	return nil
}

// restoreOnePart checks part p whole, then replaces its stream with it.
func restoreOnePart(ctx context.Context, o Options, m *Manifest, p Part, acc *engine.Account, cfg *server.StreamConfig) error {
	if err := readPart(ctx, o, p, io.Discard); err != nil {
		return err
	}
	if err := acc.JetStream().DeleteStream(ctx, p.Stream); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("replace stream %s/%s: %w", p.Account, p.Stream, err)
	}
	for attempt := 1; ; attempt++ {
		err := restorePart(ctx, o, p, acc.Conn(), cfg)
		if err == nil {
			break
		}
		// The part opened a moment ago, so a failure here is the engine's (it gives up a
		// restore that stalls) or the target's: the partial stream is gone, try again.
		if attempt == restoreAttempts || ctx.Err() != nil || errors.Is(err, ErrUnreadable) || errors.Is(err, ErrManifest) {
			return fmt.Errorf("restore %s/%s from backup %s: %w", p.Account, p.Stream, m.ID, err)
		}
	}
	// The engine writes a restored stream without syncing it: with its group sync, the
	// restore is on disk before it is reported done.
	if err := acc.Sync(ctx); err != nil {
		return fmt.Errorf("restore %s/%s from backup %s: %w", p.Account, p.Stream, m.ID, err)
	}
	return nil
}

// restoreAttempts is how many times a part that opened is given to the engine.
const restoreAttempts = 3

// restorePart reads part p from the backup into the engine as stream cfg.Name.
func restorePart(ctx context.Context, o Options, p Part, nc *nats.Conn, cfg *server.StreamConfig) error {
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(readPart(ctx, o, p, pw)) }()
	_, err := Restore(ctx, nc, cfg, pr)
	_ = pr.Close()
	return err
}

// hashingReader counts and hashes what is read through it.
type hashingReader struct {
	r io.Reader
	h hash.Hash
	n int64
}

func (h *hashingReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	h.n += int64(n)
	h.h.Write(p[:n])
	return n, err
}

func (h *hashingReader) sum() [32]byte { return [32]byte(h.h.Sum(nil)) }

// Largest manifest, key escrow and signing key objects read: anything larger is refused
// before it is read, as a target's objects are not trusted before their signature or seal.
const (
	maxManifest  = 16 << 20
	maxKeyObject = 4 << 20
)

// readSmall reads a whole object of at most limit bytes; a larger one is refused unread.
func readSmall(ctx context.Context, b *blob.Bucket, key string, limit int64) ([]byte, error) {
	r, err := b.NewReader(ctx, key, nil)
	if err != nil {
		return nil, err
	}
	defer func() { _ = r.Close() }()
	if r.Size() > limit {
		return nil, fmt.Errorf("%w: %s is %d bytes, more than the %d a genuine one can be", ErrManifest, key, r.Size(), limit)
	}
	out, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(out)) > limit {
		return nil, fmt.Errorf("%w: %s is more than %d bytes", ErrManifest, key, limit)
	}
	return out, nil
}

// cutOrder orders an account's streams so that each is cut before the streams its messages
// move to: an exchange (X_) before the queues it routes to (Q_), a queue before its
// dead-letter queue (D_). A message moved between two cuts is then in both (delivered once
// more after a restore: at least once), never in neither.
func cutOrder(stream string) int {
	switch {
	case strings.HasPrefix(stream, "X_"):
		return 0
	case strings.HasPrefix(stream, "Q_"):
		return 1
	case strings.HasPrefix(stream, "D_"):
		return 2
	}
	return 3
}
