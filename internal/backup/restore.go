package backup

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"gocloud.dev/gcerrors"

	"github.com/penstock/penstock/internal/engine"
	"github.com/penstock/penstock/internal/keyring"
)

// recordsPart stores the tenant's records from the platform's sealed stores (its secrets,
// pipelines, checkpoints and runs), sealed with the tenant's key.
func (s *Service) recordsPart(ctx context.Context, id, tenant string) (Part, error) {
	scope := keyring.Scope{Tenant: tenant}
	recs, err := s.o.Keyring.ExportRecords(ctx, scope)
	if err != nil {
		return Part{}, err
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	for _, r := range recs {
		if err := enc.Encode(r); err != nil {
			return Part{}, err
		}
	}
	p := Part{Kind: KindRecords, Object: objectFor(id, "records", tenant), Scope: scope.String(), Records: len(recs)}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	bw, err := s.o.Bucket.NewWriter(wctx, p.Object, nil)
	if err != nil {
		return Part{}, err
	}
	sw, err := NewSealedWriter(ctx, s.o.Keyring, scope, p.Object, bw)
	if err != nil {
		return Part{}, fmt.Errorf("back up the records of %s: %w", tenant, err)
	}
	if _, err := sw.Write(buf.Bytes()); err != nil {
		return Part{}, err
	}
	if err := sw.Close(); err != nil {
		return Part{}, err
	}
	if err := bw.Close(); err != nil {
		return Part{}, fmt.Errorf("store %s: %w", p.Object, err)
	}
	sum := sw.Sum()
	p.Size, p.SHA256 = sw.Size(), hex.EncodeToString(sum[:])
	return p, nil
}

// readRecords reads a records part, checked against the manifest.
func (s *Service) readRecords(ctx context.Context, p Part) ([]keyring.Record, error) {
	var buf bytes.Buffer
	if err := readPart(ctx, s.opts(), p, &buf); err != nil {
		return nil, err
	}
	var recs []keyring.Record
	dec := json.NewDecoder(&buf)
	for {
		var r keyring.Record
		err := dec.Decode(&r)
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%w: part %s: %v", ErrUnreadable, p.Object, err)
		}
		recs = append(recs, r)
	}
	if len(recs) != p.Records {
		return nil, fmt.Errorf("%w: part %s holds %d records; the manifest says %d", ErrUnreadable, p.Object, len(recs), p.Records)
	}
	return recs, nil
}

// RestoreReport says what a restore did.
type RestoreReport struct {
	ID string `json:"id"`
	// Restored lists the tenants whose parts were restored.
	Restored []string `json:"restored"`
	// Shredded lists the tenants in the backup whose keys were destroyed after it was taken:
	// their parts cannot be read, and the restore leaves them destroyed.
	Shredded []string `json:"shredded,omitempty"`
	// Skipped lists parts not restored, each with why (an environment shredded since).
	Skipped  []string `json:"skipped,omitempty"`
	Parts    int      `json:"parts"`
	Messages uint64   `json:"messages"`
	Bytes    int64    `json:"bytes"`
}

// ErrNotEmpty is returned for a full restore into an engine that already holds data.
var ErrNotEmpty = errors.New("a full restore needs an empty data directory")

// RestoreAll restores a full backup into a new platform: an engine whose keyring is empty
// and that holds nothing else yet (nothing of the platform has opened on it). The keys come
// from the target's escrow; a tenant whose escrow is gone (its keys were destroyed after the
// backup) is not restored and stays destroyed. With id "", the newest full backup whose parts
// all read back and match its manifest is restored; skipped is told of each newer one that
// does not.
func (s *Service) RestoreAll(ctx context.Context, id string, progress func(Progress), skipped func(id string, err error)) (*RestoreReport, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkEmpty(ctx); err != nil {
		return nil, err
	}
	imported := map[string]bool{}
	var (
		m    *Manifest
		gone map[string]bool
	)
	if id != "" {
		var err error
		if m, err = s.Manifest(ctx, id); err != nil {
			return nil, err
		}
		if m.Tenant != "" {
			return nil, fmt.Errorf("%w: backup %s is of tenant %s only; restore it into a running platform with --tenant", ErrInvalid, id, m.Tenant)
		}
		if gone, err = s.importKeys(ctx, m, imported); err != nil {
			return nil, err
		}
		// Every part is checked before the first is restored: a damaged backup stops here.
		if err := s.verifyParts(ctx, m, gone); err != nil {
			return nil, err
		}
	} else {
		list, err := s.List(ctx, "")
		if err != nil {
			return nil, err
		}
		var why []string
		for _, b := range list {
			if b.Tenant != "" {
				continue
			}
			err := errors.New(b.Error)
			var cand *Manifest
			if b.Error == "" {
				cand, err = s.Manifest(ctx, b.ID)
			}
			var g map[string]bool
			if err == nil {
				g, err = s.importKeys(ctx, cand, imported)
			}
			if err == nil {
				err = s.verifyParts(ctx, cand, g)
			}
			if err != nil {
				if skipped != nil {
					skipped(b.ID, err)
				}
				why = append(why, b.ID+": "+err.Error())
				continue
			}
			m, gone = cand, g
			break
		}
		if m == nil && len(why) == 0 {
			return nil, fmt.Errorf("%w: the target holds no full backup", ErrNotFound)
		}
		if m == nil {
			return nil, fmt.Errorf("no full backup in the target verifies: %s", strings.Join(why, "; "))
		}
		id = m.ID
	}
	rep := &RestoreReport{ID: id}
	for t := range gone {
		if err := s.o.Keyring.MarkDestroyed(ctx, keyring.Scope{Tenant: t}); err != nil {
			return nil, err
		}
		rep.Shredded = append(rep.Shredded, t)
	}
	slices.Sort(rep.Shredded)

	prog := Progress{}
	var parts []Part
	for _, p := range m.Parts {
		sc, _ := keyring.ParseScope(p.Scope)
		if gone[sc.Tenant] || p.Kind == KindRecords {
			continue // a full backup's records are in the platform's streams
		}
		if destroyed, err := s.o.Keyring.IsDestroyed(ctx, sc); err != nil {
			return nil, err
		} else if destroyed {
			rep.Skipped = append(rep.Skipped, p.Object+": the keys of "+sc.String()+" were destroyed after the backup")
			continue
		}
		parts = append(parts, p)
		prog.TotalParts++
		prog.TotalBytes += p.Size
	}
	for _, p := range parts {
		if err := s.restoreCounted(ctx, m, p, rep, &prog, progress); err != nil {
			return rep, err
		}
		sc, _ := keyring.ParseScope(p.Scope)
		if sc.Tenant != PlatformScope.Tenant && !slices.Contains(rep.Restored, sc.Tenant) {
			rep.Restored = append(rep.Restored, sc.Tenant)
		}
	}
	slices.Sort(rep.Restored)
	return rep, nil
}

// importKeys imports the escrow of the platform and of every tenant in the backup that the
// target still holds, and returns the tenants it does not hold: their keys were destroyed.
func (s *Service) importKeys(ctx context.Context, m *Manifest, imported map[string]bool) (map[string]bool, error) {
	tenants := []string{PlatformScope.Tenant}
	for _, p := range m.Parts {
		sc, err := keyring.ParseScope(p.Scope)
		if err != nil {
			return nil, fmt.Errorf("%w: part %s: scope: %v", ErrManifest, p.Object, err)
		}
		if !slices.Contains(tenants, sc.Tenant) {
			tenants = append(tenants, sc.Tenant)
		}
	}
	pub, err := s.publicKey(ctx)
	if err != nil {
		return nil, err
	}
	gone := map[string]bool{}
	for _, t := range tenants {
		// Destroyed after the backup (the target's signed record says so): not restored, and
		// its name's current keys (a tenant made anew) are not this backup's.
		at, err := s.shreddedAt(ctx, t, pub)
		if err != nil {
			return nil, err
		}
		if t != PlatformScope.Tenant && !at.IsZero() && m.Created.Before(at) {
			gone[t] = true
			continue
		}
		if imported[t] {
			continue
		}
		if len(imported) == 0 && s.BeforeFirstWrite != nil {
			if err := s.BeforeFirstWrite(); err != nil {
				return nil, err
			}
		}
		b, err := readSmall(ctx, s.o.Bucket, escrowObject(t), maxKeyObject)
		if gcerrors.Code(err) == gcerrors.NotFound {
			return nil, fmt.Errorf("%w: the key escrow of %s (%s) is missing from the target, and nothing in it records that %s was deleted: "+
				"the target is incomplete or was tampered with", ErrUnreadable, t, escrowObject(t), t)
		}
		if err != nil {
			return nil, fmt.Errorf("read the key escrow of %s: %w", t, err)
		}
		if _, err := s.o.Keyring.ImportEscrow(ctx, t, b); err != nil {
			return nil, fmt.Errorf("%w: the key escrow of %s: %v", ErrUnreadable, t, err)
		}
		imported[t] = true
	}
	return gone, nil
}

// verifyParts reads every part a full restore would restore (not those of tenants gone)
// against the manifest.
func (s *Service) verifyParts(ctx context.Context, m *Manifest, gone map[string]bool) error {
	for _, p := range m.Parts {
		sc, _ := keyring.ParseScope(p.Scope)
		if gone[sc.Tenant] || p.Kind == KindRecords || s.destroyed(ctx, sc) {
			continue // not restored: shredded since the backup
		}
		if err := readPart(ctx, s.opts(), p, io.Discard); err != nil {
			return err
		}
	}
	return nil
}

// checkEmpty refuses a platform engine that holds any stream but the keyring's, or a keyring
// with any scope in it.
func (s *Service) checkEmpty(ctx context.Context) error {
	acc, err := s.o.Engine.Account(ctx, engine.PlatformAccount)
	if err != nil {
		return err
	}
	names := acc.JetStream().StreamNames(ctx)
	for n := range names.Name() {
		if !excludedStreams[n] {
			return fmt.Errorf("%w: it holds stream %s", ErrNotEmpty, n)
		}
	}
	if err := names.Err(); err != nil {
		return err
	}
	st, err := s.o.Keyring.Status(ctx)
	if err != nil {
		return err
	}
	if len(st.Scopes) > 0 {
		return fmt.Errorf("%w: its keyring holds %d scopes", ErrNotEmpty, len(st.Scopes))
	}
	return nil
}

// checkRestored compares a restored stream with the manifest's count of it at the cut.
func (s *Service) checkRestored(ctx context.Context, p Part) error {
	acc, err := s.o.Engine.Account(ctx, p.Account)
	if err != nil {
		return err
	}
	st, err := acc.JetStream().Stream(ctx, p.Stream)
	if err != nil {
		return fmt.Errorf("restored stream %s/%s: %w", p.Account, p.Stream, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		return err
	}
	// A stream with an age limit may have dropped messages that expired since the backup.
	fewer := info.State.Msgs < p.State.Messages && info.Config.MaxAge > 0
	if (info.State.Msgs != p.State.Messages && !fewer) || info.State.LastSeq != p.State.LastSeq {
		return fmt.Errorf("%w: restored stream %s/%s holds %d messages up to sequence %d; the manifest says %d up to %d",
			ErrUnreadable, p.Account, p.Stream, info.State.Msgs, info.State.LastSeq, p.State.Messages, p.State.LastSeq)
	}
	return nil
}

// TenantHooks quiet a tenant before its restore and take it up again after: its pipelines
// stop and start, and the fabric forgets and reloads its accounts.
type TenantHooks struct {
	Stop  func(ctx context.Context, t Tenant)
	Start func(ctx context.Context, t Tenant) error
}

// RestoreTenant replaces one tenant of the running platform with its state in a backup (a full
// backup or one of the tenant): its queues, dead-letter queues and exchanges with their
// consumers' positions, and its records (secrets, pipelines, checkpoints, runs). Its users,
// roles, API keys and environments are the platform's and are left as they are. Every part
// is read and checked before anything of the tenant changes: a damaged backup, or one whose
// keys are gone, leaves the tenant as it was.
func (s *Service) RestoreTenant(ctx context.Context, id, tenant string, hooks TenantHooks, progress func(Progress)) (*RestoreReport, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, err := s.Manifest(ctx, id)
	if err != nil {
		return nil, err
	}
	parts, err := s.tenantParts(m, tenant)
	if err != nil {
		return nil, err
	}
	i := slices.IndexFunc(s.o.Tenants(), func(t Tenant) bool { return t.Name == tenant })
	if i < 0 {
		return nil, fmt.Errorf("%w: no such tenant %q", ErrInvalid, tenant)
	}
	live := s.o.Tenants()[i]
	rep := &RestoreReport{ID: id}
	prog := Progress{}
	var streams []Part
	var records *Part
	for _, p := range parts {
		sc, _ := keyring.ParseScope(p.Scope)
		switch {
		case p.Kind == KindRecords:
			records = &p
		case !slices.Contains(live.Environments, sc.Environment):
			rep.Skipped = append(rep.Skipped, p.Object+": environment "+sc.Environment+" no longer exists")
			continue
		case s.destroyed(ctx, sc):
			// An application (or environment) deleted since: it stays deleted.
			rep.Skipped = append(rep.Skipped, p.Object+": "+sc.String()+" was deleted after the backup")
			continue
		default:
			streams = append(streams, p)
		}
		prog.TotalParts++
		prog.TotalBytes += p.Size
	}
	if records == nil {
		return nil, fmt.Errorf("%w: backup %s has no records part for tenant %s", ErrManifest, id, tenant)
	}
	// Everything is read and checked first: only then does anything of the tenant change.
	for _, p := range streams {
		if err := readPart(ctx, s.opts(), p, io.Discard); err != nil {
			return nil, restoreReadError(tenant, err)
		}
	}
	recs, err := s.readRecords(ctx, *records)
	if err != nil {
		return nil, restoreReadError(tenant, err)
	}
	kept := recs[:0]
	for _, r := range recs {
		// A record of an application deleted since the backup stays deleted.
		if sc, ok := recordScope(r.Key); ok {
			if gone, err := s.o.Keyring.IsDestroyed(ctx, sc); err != nil {
				return nil, err
			} else if gone {
				continue
			}
		}
		kept = append(kept, r)
	}

	// From here the tenant is replaced to the end, whoever goes away: a stop waits for it
	// (a kill -9 in this phase leaves the tenant part-replaced; restore it again).
	ctx = context.WithoutCancel(ctx)
	if hooks.Stop != nil {
		hooks.Stop(ctx, live)
	}
	restoreErr := s.replaceTenant(ctx, m, live, streams, kept, rep, &prog, progress)
	if hooks.Start != nil {
		if err := hooks.Start(ctx, live); err != nil && restoreErr == nil {
			restoreErr = err
		}
	}
	if restoreErr != nil {
		return rep, restoreErr
	}
	rep.Restored = []string{tenant}
	return rep, nil
}

func (s *Service) replaceTenant(ctx context.Context, m *Manifest, live Tenant, streams []Part, recs []keyring.Record,
	rep *RestoreReport, prog *Progress, progress func(Progress)) error {
	// Streams of the tenant that the backup does not hold were made after it: they go.
	want := map[string]bool{}
	for _, p := range streams {
		want[p.Account+"/"+p.Stream] = true
	}
	for _, env := range live.Environments {
		acc, err := s.o.Engine.Account(ctx, live.Account(env))
		if err != nil {
			return err
		}
		var drop []string
		names := acc.JetStream().StreamNames(ctx)
		for n := range names.Name() {
			if !want[acc.Name()+"/"+n] {
				drop = append(drop, n)
			}
		}
		if err := names.Err(); err != nil {
			return err
		}
		for _, n := range drop {
			if err := acc.JetStream().DeleteStream(ctx, n); err != nil && !streamMissing(err) {
				return fmt.Errorf("replace %s/%s: %w", acc.Name(), n, err)
			}
		}
	}
	for _, p := range streams {
		if err := s.restoreCounted(ctx, m, p, rep, prog, progress); err != nil {
			return err
		}
	}
	if err := s.o.Keyring.ReplaceRecords(ctx, keyring.Scope{Tenant: live.Name}, recs); err != nil {
		return err
	}
	rep.Parts++
	prog.Parts++
	if progress != nil {
		progress(*prog)
	}
	return nil
}

// recordScope is the scope of a sealed record's key: every segment but the last.
func recordScope(key string) (keyring.Scope, bool) {
	i := strings.LastIndexByte(key, '.')
	if i < 0 {
		return keyring.Scope{}, false
	}
	sc, err := keyring.ParseScope(strings.ReplaceAll(key[:i], ".", "/"))
	return sc, err == nil
}

// restoreReadError says that a tenant's part could not be read, and why, in words.
func restoreReadError(tenant string, err error) error {
	if errors.Is(err, keyring.ErrDestroyed) {
		return fmt.Errorf("%w: the keys of tenant %s (or of an environment in the backup) were destroyed after the backup: its parts cannot be read", ErrUnreadable, tenant)
	}
	return err
}

// destroyed reports whether the scope's keys were destroyed; an error reading the keyring
// counts as not, and the part's own read then fails with it.
func (s *Service) destroyed(ctx context.Context, sc keyring.Scope) bool {
	gone, err := s.o.Keyring.IsDestroyed(ctx, sc)
	return err == nil && gone
}

// restoreCounted restores one stream part, checks it against the manifest, and counts it in
// the report and the progress.
func (s *Service) restoreCounted(ctx context.Context, m *Manifest, p Part, rep *RestoreReport, prog *Progress, progress func(Progress)) error {
	if err := RestoreParts(ctx, s.opts(), m, []Part{p}); err != nil {
		return err
	}
	if err := s.checkRestored(ctx, p); err != nil {
		return err
	}
	rep.Parts++
	rep.Messages += p.State.Messages
	rep.Bytes += p.Size
	prog.Parts++
	prog.Bytes += p.Size
	if progress != nil {
		progress(*prog)
	}
	return nil
}
