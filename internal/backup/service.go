package backup

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"gocloud.dev/blob"
	"gocloud.dev/gcerrors"

	"github.com/penstock/penstock/internal/engine"
	"github.com/penstock/penstock/internal/keyring"
)

// PlatformScope seals the platform's part of a backup: the scope the platform's own records
// are sealed under.
var PlatformScope = keyring.Scope{Tenant: "platform"}

// Objects of a target that are not backups: the manifests' signing key and the key escrow,
// both sealed by the master key (see keyring.MasterSeal and keyring.ExportEscrow).
const (
	signingObject = "keys/signing"
	escrowPrefix  = "keys/escrow/"
	signingName   = "backup/signing"
)

func escrowObject(tenant string) string { return escrowPrefix + tenant }

// excludedStreams are platform streams a backup leaves out: the keyring's bucket, whose
// records go to the escrow instead (a backup holding a tenant's keys would bring them back
// after they were destroyed), the replay nonces, which only matter for minutes, and the
// engine's health probe, which every engine makes for itself as it opens.
var excludedStreams = map[string]bool{"KV_" + keyring.Bucket: true, "KV_penstock_nonces": true, "KV_penstock_health": true}

// Tenant is a tenant and its environments, each an engine account.
type Tenant struct {
	Name         string
	Created      time.Time // a backup from before it is of another tenant of the same name
	Environments []string
	// Account names an environment's engine account.
	Account func(env string) string
	// Application names the application a stream of an environment's account belongs to,
	// if any: its parts are sealed under the application's key.
	Application func(stream string) (string, bool)
}

// ServiceOptions configure a Service.
type ServiceOptions struct {
	Engine  *engine.Engine
	Keyring *keyring.Keyring
	Bucket  *blob.Bucket
	Logger  *slog.Logger
	// Tenants lists the live tenants.
	Tenants func() []Tenant
}

// Service takes, lists, checks and restores the backups of one target.
type Service struct {
	o  ServiceOptions
	mu sync.Mutex // one backup or restore at a time

	keyMu sync.Mutex
	sign  ed25519.PrivateKey

	// BeforeFirstWrite, when set, runs once before a full restore writes anything.
	BeforeFirstWrite func() error
}

// NewService returns a service over o's target.
func NewService(o ServiceOptions) *Service {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Service{o: o}
}

func (s *Service) opts() Options {
	return Options{Engine: s.o.Engine, Keyring: s.o.Keyring, Bucket: s.o.Bucket}
}

// signingKey returns the target's manifest signing key, making it on first use when create is
// set. It is kept in the target sealed by the master key, so the master key alone opens and
// checks the target's backups, from any data directory.
func (s *Service) signingKey(ctx context.Context, create bool) (ed25519.PrivateKey, error) {
	s.keyMu.Lock()
	defer s.keyMu.Unlock()
	if s.sign != nil {
		return s.sign, nil
	}
	b, err := readSmall(ctx, s.o.Bucket, signingObject, maxKeyObject)
	switch {
	case err == nil:
		seed, err := s.o.Keyring.MasterOpen(ctx, signingName, b)
		if err != nil {
			return nil, fmt.Errorf("%w: the target's signing key (%s) does not open with this master key: %v", ErrManifest, signingObject, err)
		}
		if len(seed) != ed25519.SeedSize {
			return nil, fmt.Errorf("%w: the target's signing key is damaged", ErrManifest)
		}
		s.sign = ed25519.NewKeyFromSeed(seed)
		return s.sign, nil
	case gcerrors.Code(err) != gcerrors.NotFound:
		return nil, fmt.Errorf("read the target's signing key: %w", err)
	case !create:
		return nil, fmt.Errorf("%w: the target has no signing key (%s), so no backup was ever completed in it", ErrNotFound, signingObject)
	}
	seed := make([]byte, ed25519.SeedSize)
	if _, err := rand.Read(seed); err != nil {
		return nil, err
	}
	sealed, err := s.o.Keyring.MasterSeal(ctx, signingName, seed)
	if err != nil {
		return nil, err
	}
	if err := s.o.Bucket.WriteAll(ctx, signingObject, sealed, nil); err != nil {
		return nil, fmt.Errorf("store the target's signing key: %w", err)
	}
	s.sign = ed25519.NewKeyFromSeed(seed)
	return s.sign, nil
}

// idPattern is what a backup id looks like; anything else is refused before it is used in an
// object name.
var idPattern = regexp.MustCompile(`^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}(-[a-z0-9][a-z0-9-]{0,62})?$`)

// ValidID reports whether id is a well-formed backup id.
func ValidID(id string) error {
	if !idPattern.MatchString(id) {
		return fmt.Errorf("%w: backup id %q: expected the form 20261205T120000Z-1a2b3c[-tenant]", ErrInvalid, id)
	}
	return nil
}

// ErrInvalid marks a caller's mistake: a malformed id or tenant.
var ErrInvalid = errors.New("invalid")

func newID(now time.Time, tenant string) string {
	r := make([]byte, 3)
	_, _ = rand.Read(r)
	id := now.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(r)
	if tenant != "" {
		id += "-" + tenant
	}
	return id
}

// Progress reports a long operation's advance; Bytes and Parts count what is done so far.
type Progress struct {
	Parts      int   `json:"parts"`
	TotalParts int   `json:"total_parts"`
	Bytes      int64 `json:"bytes"`
	TotalBytes int64 `json:"total_bytes"` // 0 while unknown (a backup does not know its size before it ends)
}

// Backup takes a backup: of one tenant if tenant is set, else of the whole platform. Publishers
// keep running: each stream is cut where its snapshot begins.
func (s *Service) Backup(ctx context.Context, tenant string, progress func(Progress)) (*Manifest, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sign, err := s.signingKey(ctx, true)
	if err != nil {
		return nil, err
	}
	tenants := s.o.Tenants()
	if tenant != "" {
		i := slices.IndexFunc(tenants, func(t Tenant) bool { return t.Name == tenant })
		if i < 0 {
			return nil, fmt.Errorf("%w: no such tenant %q", ErrInvalid, tenant)
		}
		tenants = tenants[i : i+1]
	}
	id := newID(time.Now(), tenant)
	var sources []Source
	if tenant == "" {
		sources = append(sources, Source{Account: engine.PlatformAccount, Scope: PlatformScope, Skip: excludedStreams})
	}
	scopes := []keyring.Scope{}
	for _, t := range tenants {
		scopes = append(scopes, keyring.Scope{Tenant: t.Name})
		for _, env := range t.Environments {
			sc := keyring.Scope{Tenant: t.Name, Environment: env}
			src := Source{Account: t.Account(env), Scope: sc}
			if t.Application != nil {
				src.ScopeOf = func(stream string) keyring.Scope {
					if app, ok := t.Application(stream); ok {
						return keyring.Scope{Tenant: t.Name, Environment: env, Application: app}
					}
					return keyring.Scope{}
				}
			}
			sources = append(sources, src)
		}
	}
	for _, src := range sources {
		streams, err := s.streamsOf(ctx, src)
		if err != nil {
			return nil, err
		}
		scopes = append(scopes, src.Scope)
		for _, st := range streams {
			scopes = append(scopes, src.scopeOf(st))
		}
	}
	// Every key the parts will be sealed with exists before the escrow is taken, and the
	// escrow is stored before any part: a backup whose manifest exists can find its keys.
	for _, sc := range scopes {
		if destroyed, err := s.o.Keyring.IsDestroyed(ctx, sc); err != nil {
			return nil, err
		} else if destroyed {
			continue // an application deleted as the backup began: its part fails below
		}
		if err := s.o.Keyring.EnsureKey(ctx, sc); err != nil {
			return nil, fmt.Errorf("the key of %s: %w", sc, err)
		}
	}
	if err := s.writeEscrow(ctx, tenant == "", tenants); err != nil {
		return nil, err
	}
	var done Progress
	report := func(p Part) {
		done.Parts++
		done.Bytes += p.Size
		if progress != nil {
			progress(done)
		}
	}
	m, err := create(ctx, s.opts(), id, tenant, sources, sign, func(m *Manifest) error {
		// Again once the streams are stored: a key rotated meanwhile sealed some of them.
		if err := s.writeEscrow(ctx, tenant == "", tenants); err != nil {
			return err
		}
		for _, t := range tenants {
			p, err := s.recordsPart(ctx, id, t.Name)
			if err != nil {
				return err
			}
			m.Parts = append(m.Parts, p)
			report(p)
		}
		return nil
	}, report)
	if err != nil {
		return nil, err
	}
	return m, nil
}

// writeEscrow stores the current keys of the given tenants (and of the platform for a full
// backup), and deletes the escrow of every tenant whose keys were destroyed.
func (s *Service) writeEscrow(ctx context.Context, platform bool, tenants []Tenant) error {
	names := make([]string, 0, len(tenants)+1)
	if platform {
		names = append(names, PlatformScope.Tenant)
	}
	for _, t := range tenants {
		names = append(names, t.Name)
	}
	for _, name := range names {
		if err := s.RefreshEscrow(ctx, name); err != nil {
			return fmt.Errorf("escrow the keys of %s: %w", name, err)
		}
	}
	_, err := s.ForgetDestroyed(ctx)
	return err
}

// RefreshEscrow rewrites one tenant's escrow from its current keys (after one of its
// environments' keys were destroyed, say).
//
// A destruction that lands while the escrow is written (a backup's, say) could have its keys
// written back by it: the escrow is read again after each write, and written again until what
// was written is what the keyring holds.
func (s *Service) RefreshEscrow(ctx context.Context, tenant string) error {
	var written []byte
	for range 10 {
		b, err := s.o.Keyring.ExportEscrow(ctx, tenant)
		if errors.Is(err, keyring.ErrDestroyed) {
			return s.Forget(ctx, tenant)
		}
		if err != nil {
			return err
		}
		// Sealed anew each time: compare what it holds, not its bytes.
		same, err := s.o.Keyring.SameEscrow(ctx, tenant, written, b)
		if err != nil {
			return err
		}
		if same {
			return nil
		}
		if err := s.o.Bucket.WriteAll(ctx, escrowObject(tenant), b, nil); err != nil {
			return fmt.Errorf("store the escrow of %s: %w", tenant, err)
		}
		written = b
	}
	return fmt.Errorf("the keys of %s kept changing while their escrow was written", tenant)
}

// ForgetDestroyed deletes the escrow of every tenant whose keys were destroyed, and returns
// their names: from then on no backup of theirs opens. A destruction deletes its tenant's
// escrow at once (see Forget); this catches one whose target was unreachable then.
func (s *Service) ForgetDestroyed(ctx context.Context) ([]string, error) {
	var gone []string
	it := s.o.Bucket.List(&blob.ListOptions{Prefix: escrowPrefix})
	for {
		obj, err := it.Next(ctx)
		if err == io.EOF {
			break
		}
		if err != nil {
			return gone, fmt.Errorf("list the escrow: %w", err)
		}
		name := strings.TrimPrefix(obj.Key, escrowPrefix)
		sc := keyring.Scope{Tenant: name}
		if sc.Validate() != nil {
			continue
		}
		destroyed, err := s.o.Keyring.IsDestroyed(ctx, sc)
		if err != nil {
			return gone, err
		}
		if destroyed {
			if err := s.Forget(ctx, name); err != nil {
				return gone, err
			}
			gone = append(gone, name)
		}
	}
	return gone, nil
}

// shredRecord says, signed with the target's key, that a tenant's keys were destroyed: a
// restore of a backup taken before then leaves the tenant destroyed. Without it a missing
// escrow is damage to the target, not a deletion.
type shredRecord struct {
	Tenant    string    `json:"tenant"`
	Destroyed time.Time `json:"destroyed"`
}

func shredObject(tenant string) string { return "keys/shredded/" + tenant }

// Forget deletes a tenant's escrow, first recording (signed) that its keys were destroyed:
// every backup of the tenant becomes unreadable.
func (s *Service) Forget(ctx context.Context, tenant string) error {
	if sign, err := s.signingKey(ctx, false); err == nil {
		body, _ := json.Marshal(shredRecord{Tenant: tenant, Destroyed: time.Now().UTC()})
		if err := s.o.Bucket.WriteAll(ctx, shredObject(tenant), signed(sign, body), nil); err != nil {
			return fmt.Errorf("record the deletion of %s in the target: %w", tenant, err)
		}
	} else if !errors.Is(err, ErrNotFound) {
		return err
	} // no signing key: no backup was ever taken here, so none holds the tenant
	err := s.o.Bucket.Delete(ctx, escrowObject(tenant))
	if err != nil && gcerrors.Code(err) != gcerrors.NotFound {
		return fmt.Errorf("delete the escrow of %s: %w", tenant, err)
	}
	return nil
}

// BackupSummary is a backup as a list shows it.
type BackupSummary struct {
	ID      string    `json:"id"`
	Created time.Time `json:"created"`
	Tenant  string    `json:"tenant,omitempty"`
	Parts   int       `json:"parts"`
	Bytes   int64     `json:"bytes"`
	// Messages is the sum of the messages of every stream at its cut.
	Messages uint64 `json:"messages"`
	// Error says why a backup's manifest could not be read; such a backup cannot be restored.
	Error string `json:"error,omitempty"`
}

// List returns the target's backups, newest first; tenant, if set, keeps the full backups
// and that tenant's own.
func (s *Service) List(ctx context.Context, tenant string) ([]BackupSummary, error) {
	pub, err := s.publicKey(ctx)
	if errors.Is(err, ErrNotFound) {
		return []BackupSummary{}, nil
	}
	if err != nil {
		return nil, err
	}
	ids, err := s.ids(ctx)
	if err != nil {
		return nil, err
	}
	out := []BackupSummary{}
	for _, id := range ids {
		sum := BackupSummary{ID: id}
		m, err := Open(ctx, s.opts(), id, pub)
		if errors.Is(err, ErrNotFound) {
			continue // an unfinished backup: parts without a manifest
		}
		if err != nil {
			if tenant != "" {
				continue // a tenant is not shown what it cannot restore, nor others' names
			}
			sum.Error = err.Error()
		} else {
			sum.Created, sum.Tenant = m.Created, m.Tenant
			// A tenant sees its own parts of a full backup, not the platform's size.
			parts, err := s.tenantParts(m, tenant)
			if err != nil {
				continue
			}
			sum.Parts = len(parts)
			for _, p := range parts {
				sum.Bytes += p.Size
				sum.Messages += p.State.Messages
			}
		}
		out = append(out, sum)
	}
	return out, nil
}

// ids lists the ids of the target's backups, newest first (ids sort by time).
func (s *Service) ids(ctx context.Context) ([]string, error) {
	var ids []string
	it := s.o.Bucket.List(&blob.ListOptions{Delimiter: "/"})
	for {
		obj, err := it.Next(ctx)
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("list the target: %w", err)
		}
		id := strings.TrimSuffix(obj.Key, "/")
		if obj.IsDir && ValidID(id) == nil {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	slices.Reverse(ids)
	return ids, nil
}

func (s *Service) publicKey(ctx context.Context) (ed25519.PublicKey, error) {
	k, err := s.signingKey(ctx, false)
	if err != nil {
		return nil, err
	}
	return k.Public().(ed25519.PublicKey), nil
}

// Manifest reads and checks a backup's manifest.
func (s *Service) Manifest(ctx context.Context, id string) (*Manifest, error) {
	if err := ValidID(id); err != nil {
		return nil, err
	}
	pub, err := s.publicKey(ctx)
	if err != nil {
		return nil, err
	}
	return Open(ctx, s.opts(), id, pub)
}

// Verify checks a backup without restoring it: the manifest's signature, and that every part
// (of tenant, if set) decrypts to its end with the size and SHA-256 the manifest gives.
func (s *Service) Verify(ctx context.Context, id, tenant string, progress func(Progress)) (*Manifest, error) {
	m, err := s.Manifest(ctx, id)
	if err != nil {
		return nil, err
	}
	parts, err := s.tenantParts(m, tenant)
	if err != nil {
		return nil, err
	}
	p := Progress{TotalParts: len(parts)}
	for _, part := range parts {
		p.TotalBytes += part.Size
	}
	for _, part := range parts {
		if err := readPart(ctx, s.opts(), part, io.Discard); err != nil {
			return m, err
		}
		p.Parts++
		p.Bytes += part.Size
		if progress != nil {
			progress(p)
		}
	}
	return m, nil
}

// Prune deletes the backups that the retention policy does not keep (see Keep), newest
// first, and returns their ids. Backups of one tenant are kept by the same rule among
// themselves.
func (s *Service) Prune(ctx context.Context, policy Retention, now time.Time) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	list, err := s.List(ctx, "")
	if err != nil {
		return nil, err
	}
	byTenant := map[string][]BackupSummary{}
	for _, b := range list {
		if b.Error == "" {
			byTenant[b.Tenant] = append(byTenant[b.Tenant], b)
		}
	}
	var deleted []string
	for _, group := range byTenant {
		keep := policy.Keep(group, now)
		for _, b := range group {
			if keep[b.ID] {
				continue
			}
			if err := s.delete(ctx, b.ID); err != nil {
				return deleted, err
			}
			deleted = append(deleted, b.ID)
		}
	}
	slices.Sort(deleted)
	return deleted, nil
}

// delete removes a backup: its manifest first (from then on it is not a backup), then its
// parts.
func (s *Service) delete(ctx context.Context, id string) error {
	if err := s.o.Bucket.Delete(ctx, manifestObject(id)); err != nil && gcerrors.Code(err) != gcerrors.NotFound {
		return fmt.Errorf("delete backup %s: %w", id, err)
	}
	it := s.o.Bucket.List(&blob.ListOptions{Prefix: id + "/"})
	for {
		obj, err := it.Next(ctx)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := s.o.Bucket.Delete(ctx, obj.Key); err != nil && gcerrors.Code(err) != gcerrors.NotFound {
			return fmt.Errorf("delete %s: %w", obj.Key, err)
		}
	}
}

// Newest returns the id of the newest full backup whose manifest checks, or ErrNotFound.
func (s *Service) Newest(ctx context.Context) (string, error) {
	list, err := s.List(ctx, "")
	if err != nil {
		return "", err
	}
	for _, b := range list {
		if b.Error == "" && b.Tenant == "" {
			return b.ID, nil
		}
	}
	return "", fmt.Errorf("%w: the target holds no complete full backup", ErrNotFound)
}

// streamMissing reports an engine error that says a stream does not exist.
func streamMissing(err error) bool { return errors.Is(err, jetstream.ErrStreamNotFound) }

// tenantParts returns the parts of a backup that belong to tenant (all of them for ""). A
// backup of another tenant, one that holds nothing of the tenant, or one taken before the
// tenant was made (of an earlier tenant of that name) is ErrInvalid.
func (s *Service) tenantParts(m *Manifest, tenant string) ([]Part, error) {
	if tenant == "" {
		return m.Parts, nil
	}
	if s.o.Tenants != nil {
		for _, t := range s.o.Tenants() {
			if t.Name == tenant && m.Created.Before(t.Created) {
				return nil, fmt.Errorf("%w: backup %s holds nothing of tenant %s", ErrInvalid, m.ID, tenant)
			}
		}
	}
	if m.Tenant != "" && m.Tenant != tenant {
		return nil, fmt.Errorf("%w: backup %s is of tenant %s", ErrInvalid, m.ID, m.Tenant)
	}
	var out []Part
	for _, p := range m.Parts {
		if sc, err := keyring.ParseScope(p.Scope); err == nil && sc.Tenant == tenant {
			out = append(out, p)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: backup %s holds nothing of tenant %s", ErrInvalid, m.ID, tenant)
	}
	return out, nil
}

func objectFor(id string, elems ...string) string {
	return path.Join(append([]string{id}, elems...)...)
}

// streamsOf lists the streams of a source's account that a backup takes.
func (s *Service) streamsOf(ctx context.Context, src Source) ([]string, error) {
	acc, err := s.o.Engine.Account(ctx, src.Account)
	if err != nil {
		return nil, err
	}
	var out []string
	names := acc.JetStream().StreamNames(ctx)
	for n := range names.Name() {
		if !src.Skip[n] {
			out = append(out, n)
		}
	}
	return out, names.Err()
}

// Reseal seals the target's signing key and every tenant's escrow again under the current
// master key: a master key rotation calls it before the old key is retired.
func (s *Service) Reseal(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, err := readSmall(ctx, s.o.Bucket, signingObject, maxKeyObject)
	if gcerrors.Code(err) == gcerrors.NotFound {
		return nil // no backup was ever taken here
	}
	if err != nil {
		return fmt.Errorf("backup target: read the signing key: %w", err)
	}
	seed, err := s.o.Keyring.MasterOpen(ctx, signingName, b)
	if err != nil {
		return fmt.Errorf("backup target: the signing key does not open: %w", err)
	}
	sealed, err := s.o.Keyring.MasterSeal(ctx, signingName, seed)
	if err != nil {
		return err
	}
	if err := s.o.Bucket.WriteAll(ctx, signingObject, sealed, nil); err != nil {
		return fmt.Errorf("backup target: store the signing key: %w", err)
	}
	it := s.o.Bucket.List(&blob.ListOptions{Prefix: escrowPrefix})
	for {
		obj, err := it.Next(ctx)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("backup target: list the escrow: %w", err)
		}
		tenant := strings.TrimPrefix(obj.Key, escrowPrefix)
		if (keyring.Scope{Tenant: tenant}).Validate() != nil {
			continue
		}
		if err := s.RefreshEscrow(ctx, tenant); err != nil {
			return fmt.Errorf("backup target: escrow of %s: %w", tenant, err)
		}
	}
}

// shreddedAt returns when the tenant's keys were destroyed, as the target's signed record
// says, or the zero time if it records no destruction.
func (s *Service) shreddedAt(ctx context.Context, tenant string, pub ed25519.PublicKey) (time.Time, error) {
	b, err := readSmall(ctx, s.o.Bucket, shredObject(tenant), maxKeyObject)
	if gcerrors.Code(err) == gcerrors.NotFound {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, err
	}
	body, err := openSigned(b, pub)
	if err != nil {
		return time.Time{}, fmt.Errorf("%s: %w", shredObject(tenant), err)
	}
	var r shredRecord
	if err := json.Unmarshal(body, &r); err != nil || r.Tenant != tenant {
		return time.Time{}, fmt.Errorf("%w: %s is not the record of %s", ErrManifest, shredObject(tenant), tenant)
	}
	return r.Destroyed, nil
}
