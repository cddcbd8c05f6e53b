package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"gocloud.dev/blob"

	"github.com/penstock/penstock/internal/api"
	"github.com/penstock/penstock/internal/audit"
	"github.com/penstock/penstock/internal/authz"
	"github.com/penstock/penstock/internal/backup"
	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/datadir"
	"github.com/penstock/penstock/internal/fabric"
	"github.com/penstock/penstock/internal/identity"
	"github.com/penstock/penstock/internal/integrity"
	"github.com/penstock/penstock/internal/keyring"
	"github.com/penstock/penstock/internal/pipeline"
)

// Option changes how New starts.
type Option func(*options)

type options struct {
	restoreFrom string // a target URL
	restoreID   string // "" for the newest full backup that verifies
	restoreOnly bool   // refuse a data directory that holds a platform
	// replaced and aside are set on the start after damage was set aside.
	replaced []integrity.Finding
	aside    string
	// now is the clock of activity and retention (time.Now when nil).
	now func() time.Time
}

// WithClock gives activity tracking and retention a clock of their own: tests move it ahead
// by months to see environments warned and deleted.
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// replaceDamaged stops a start that found damage that backup.auto_restore allows to be
// replaced.
type replaceDamaged struct{ findings []integrity.Finding }

func (r *replaceDamaged) Error() string { return "damaged streams found: " + r.String() }

func (r *replaceDamaged) String() string {
	var names []string
	for _, f := range r.findings {
		names = append(names, f.Account+" > "+f.Stream)
	}
	return strings.Join(names, ", ")
}

// RestoreFrom makes a start on an empty data directory restore a full backup from the target
// URL (with the credentials of backup.*): the one named id, or the newest that verifies when
// id is "". A directory that holds a platform starts as it is, unless only is set, when it is
// refused.
func RestoreFrom(target, id string, only bool) Option {
	return func(o *options) { o.restoreFrom, o.restoreID, o.restoreOnly = target, id, only }
}

// Restored is what a start restored, nil if nothing.
func (a *App) Restored() *backup.RestoreReport { return a.restored }

func backupTarget(c config.Backup, url string) backup.Target {
	return backup.Target{URL: url, AccessKeyID: c.AccessKeyID, SecretAccessKey: c.SecretAccessKey}
}

// restoreAtStart restores a full backup into the new engine when asked to (serve
// --restore-from, backup restore --to-data-dir, or backup.auto_restore) and the data
// directory is empty. It runs after the keyring opens and before anything else writes.
func (a *App) restoreAtStart(ctx context.Context, o options, first bool) error {
	url := o.restoreFrom
	if url == "" && a.cfg.Backup.AutoRestore {
		url = a.cfg.Backup.Target
	}
	if url == "" {
		return nil
	}
	if !first {
		if o.restoreOnly {
			return fmt.Errorf("restore: data directory %s already holds a platform; a full restore needs an empty one (only its master.key may be there)", a.cfg.DataDir)
		}
		a.log.Info("data directory holds a platform: nothing restored", "target", backup.Redacted(url))
		return nil
	}
	bucket, err := backup.OpenTarget(ctx, backupTarget(a.cfg.Backup, url))
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	defer func() { _ = bucket.Close() }()
	svc := backup.NewService(backup.ServiceOptions{Engine: a.eng, Keyring: a.keys, Bucket: bucket, Logger: a.log.With("component", "backup")})
	a.log.Info("restoring a backup into the empty data directory", "backup", o.restoreID, "target", backup.Redacted(url))
	start := time.Now()
	// From the first write on, the directory holds part of a platform until the restore ends:
	// an interrupted restore (a failure, a kill) leaves it refused by every start.
	wrote := false
	svc.BeforeFirstWrite = func() error {
		wrote = true
		return datadir.MarkRestoring(a.cfg.DataDir, "from "+backup.Redacted(url))
	}
	rep, err := svc.RestoreAll(ctx, o.restoreID, func(p backup.Progress) {
		a.log.Info("restore progress", "parts", p.Parts, "of", p.TotalParts, "bytes", p.Bytes, "total_bytes", p.TotalBytes)
	}, func(id string, err error) {
		a.log.Warn("backup skipped: it does not verify", "backup", id, "error", err.Error())
	})
	// The marker stays until afterRestore has re-anchored the audit log and recorded the
	// restore: a start that stops before then is refused, not served half restored.
	a.restoreMarked = wrote && err == nil
	if errors.Is(err, backup.ErrNotFound) && o.restoreFrom == "" && o.restoreID == "" {
		a.log.Warn("backup.auto_restore: the target holds no backup to restore; starting a new platform", "target", backup.Redacted(url))
		return nil
	}
	id := o.restoreID
	if rep != nil {
		id = rep.ID
	}
	if err != nil {
		return fmt.Errorf("restore backup %s: %w", id, err)
	}
	a.restored, a.restoredAside = rep, o.aside
	if len(o.replaced) > 0 {
		a.restoredDamage = (&replaceDamaged{findings: o.replaced}).String()
	}
	a.log.Info("backup restored", "backup", id, "parts", rep.Parts, "messages", rep.Messages, "bytes", rep.Bytes,
		"shredded", strings.Join(rep.Shredded, ","), "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// afterRestore records a start's restore: the restore is the first event after the restored
// audit chain, and tenants shredded since the backup are marked for deletion, which the
// lifecycle finishes before anything is served.
func (a *App) afterRestore(ctx context.Context) error {
	rep := a.restored
	if rep == nil {
		return nil
	}
	details := map[string]string{"backup": rep.ID, "parts": strconv.Itoa(rep.Parts),
		"messages": strconv.FormatUint(rep.Messages, 10), "bytes": strconv.FormatInt(rep.Bytes, 10),
		"tenants": strings.Join(rep.Restored, ",")}
	if len(rep.Shredded) > 0 {
		details["shredded"] = strings.Join(rep.Shredded, ",")
	}
	if len(rep.Skipped) > 0 {
		details["skipped"] = strings.Join(rep.Skipped, "; ")
	}
	if a.restoredAside != "" {
		details["replaced_damage"], details["set_aside"] = a.restoredDamage, a.restoredAside
	}
	// The audit stream and its anchors were cut one after the other while checkpoints went
	// on: the anchors are set again from the restored stream's own checkpoints.
	chains, aside, err := a.audit.Reanchor(ctx)
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	details["audit_reanchored"] = strings.Join(chains, ",")
	if aside != "" {
		details["audit_anchor_file_set_aside"] = aside
	}
	if _, err := a.audit.Append(ctx, audit.Event{Actor: "system", Action: "backup.restored", Target: rep.ID,
		Result: audit.ResultOK, Details: details}); err != nil {
		return err
	}
	for _, t := range rep.Shredded {
		if _, err := a.ident.MarkDeletion(ctx, identity.Deletion{Scope: authz.Scope{Tenant: t}, Actor: "system"}); err != nil {
			return fmt.Errorf("restore: mark shredded tenant %s for deletion: %w", t, err)
		}
	}
	// Environments and applications deleted after the backup: their keys are destroyed (the
	// escrow says so); their deletion is finished before anything is served.
	for _, t := range a.ident.Tenants() {
		for _, env := range t.Environments {
			scopes := []authz.Scope{{Tenant: t.Name, Environment: env}}
			for _, ap := range a.ident.Apps(t.Name, env) {
				scopes = append(scopes, authz.Scope{Tenant: t.Name, Environment: env, Application: ap.Name})
			}
			for _, sc := range scopes {
				gone, err := a.keys.IsDestroyed(ctx, keyring.Scope{Tenant: sc.Tenant, Environment: sc.Environment, Application: sc.Application})
				if err != nil {
					return err
				}
				if gone {
					if _, err := a.ident.MarkDeletion(ctx, identity.Deletion{Scope: sc, Actor: "system"}); err != nil {
						return fmt.Errorf("restore: mark %s, deleted after the backup, for deletion: %w", sc, err)
					}
				}
			}
		}
	}
	return nil
}

// restoreDone ends a restore at start: the marker goes once everything the restore changes is
// done (retention's restart included), so a crash before is an interrupted restore.
func (a *App) restoreDone() error {
	if a.restoreMarked {
		if err := datadir.ClearRestoring(a.cfg.DataDir); err != nil {
			return fmt.Errorf("restore: %w", err)
		}
		a.restoreMarked = false
	}
	return nil
}

// backups is the running platform's backup service: API jobs, the schedule, the metric.
type backups struct {
	svc    *backup.Service
	jobs   *backup.Jobs
	bucket *blob.Bucket
	cfg    config.Backup
	log    *slog.Logger
	audit  *audit.Log
	// lastSuccess is the Unix time of the newest backup taken or found, NaN before any.
	lastSuccess atomic.Uint64
	cancel      context.CancelFunc
	// leases, in a cluster, make one node at a time keep the schedule.
	leases *pipeline.Leases
}

// scheduleHeld keeps the schedule on this node while it holds the schedule's lease (in a
// cluster), or always (one node).
func (b *backups) scheduleHeld(ctx context.Context) {
	if b.leases == nil {
		b.schedule(ctx)
		return
	}
	for ctx.Err() == nil {
		lost, release, ok := b.leases.Hold(ctx.Done(), "backup-schedule")
		if !ok {
			return
		}
		sctx, cancel := context.WithCancel(ctx)
		go func() {
			select {
			case <-lost:
				cancel()
			case <-sctx.Done():
			}
		}()
		b.refreshLastSuccess(sctx)
		b.schedule(sctx)
		cancel()
		release()
	}
}

func (a *App) openBackups(ctx context.Context, reg *prometheus.Registry) error {
	c := a.cfg.Backup
	if c.Target == "" {
		return nil
	}
	bucket, err := backup.OpenTarget(ctx, backupTarget(c, c.Target))
	if err != nil {
		return err
	}
	ident := a.ident
	svc := backup.NewService(backup.ServiceOptions{Engine: a.eng, Keyring: a.keys, Bucket: bucket,
		Logger: a.log.With("component", "backup"),
		Tenants: func() []backup.Tenant {
			var out []backup.Tenant
			for _, t := range ident.Tenants() {
				out = append(out, backup.Tenant{Name: t.Name, Created: t.Created, Environments: t.Environments,
					Account:     func(env string) string { return fabric.AccountName(t.Name, env) },
					Application: fabric.StreamApplication})
			}
			return out
		}})
	jctx, cancel := context.WithCancel(context.Background())
	b := &backups{svc: svc, bucket: bucket, cfg: c, log: a.log.With("component", "backup"), audit: a.audit, cancel: cancel, leases: a.leases}
	b.lastSuccess.Store(math.Float64bits(math.NaN()))
	b.jobs = backup.NewJobs(jctx, b.jobDone)
	a.backups = b
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "penstock_backup_last_success_timestamp_seconds",
		Help: "Unix time of the newest full backup in backup.target (taken by this process or found at start); NaN before any.",
	}, func() float64 { return math.Float64frombits(b.lastSuccess.Load()) }))
	// A tenant's keys destroyed: its escrow goes too, so no backup of it opens any more. An
	// environment's: the tenant's escrow is rewritten without its keys.
	a.keys.OnDestroy(func(ctx context.Context, s keyring.Scope) {
		if s.Tenant == backup.PlatformScope.Tenant {
			return
		}
		var err error
		if s.Environment == "" {
			err = svc.Forget(ctx, s.Tenant)
		} else {
			err = svc.RefreshEscrow(ctx, s.Tenant)
		}
		if err != nil {
			b.log.Error("backup escrow not updated after keys were destroyed; the next backup retries", "scope", s.String(), "error", err)
		}
	})
	// A master key rotation seals the target's signing key and escrow again under the new key
	// before the old one goes; with the target unreachable the rotation stops, to be retried.
	a.keys.OnMasterRotation(svc.Reseal)
	// Catch up on destructions made while the target was unreachable, and read the newest
	// backup's time for the metric and the schedule.
	if gone, err := svc.ForgetDestroyed(ctx); err != nil {
		b.log.Warn("backup target: escrow of destroyed tenants not checked", "error", err)
	} else if len(gone) > 0 {
		b.log.Info("backup escrow deleted for tenants destroyed earlier", "tenants", strings.Join(gone, ","))
	}
	b.refreshLastSuccess(ctx)
	return nil
}

// refreshLastSuccess reads the newest full backup's time from the target: another node may
// have taken it.
func (b *backups) refreshLastSuccess(ctx context.Context) {
	list, err := b.svc.List(ctx, "")
	if err != nil {
		b.log.Warn("backup target not readable", "error", err)
		return
	}
	for _, s := range list {
		if s.Error == "" && s.Tenant == "" {
			b.lastSuccess.Store(math.Float64bits(float64(s.Created.Unix())))
			return
		}
	}
}

// jobDone audits the end of every backup job.
func (b *backups) jobDone(j backup.BackupJob) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ev := audit.Event{Actor: j.Actor, Tenant: j.Tenant, Action: "backup." + map[string]string{
		"create": "created", "verify": "verified", "restore": "restored"}[j.Kind], Target: j.Backup, Result: audit.ResultOK,
		Details: map[string]string{"job": j.ID, "parts": strconv.Itoa(j.Progress.Parts), "bytes": strconv.FormatInt(j.Progress.Bytes, 10)}}
	if j.State == backup.JobFailed {
		ev.Result, ev.Details["error"] = audit.ResultError, j.Error
	}
	if j.Kind == "create" && j.State == backup.JobDone && j.Tenant == "" {
		b.lastSuccess.Store(math.Float64bits(float64(j.Finished.Unix())))
	}
	if _, err := b.audit.Append(ctx, ev); err != nil {
		b.log.Error("backup job not audited", "job", j.ID, "error", err)
	}
}

// schedule takes a full backup every cfg.Schedule, counted from the newest one, and prunes
// after each. A backup that fails is audited (backup.created, result failed) and tried
// again in 5 minutes; one missed by more than its interval (the process was down) is
// audited as backup.missed and taken at once.
func (b *backups) schedule(ctx context.Context) {
	every := b.cfg.Schedule
	if every <= 0 {
		return
	}
	next := time.Now()
	if last := math.Float64frombits(b.lastSuccess.Load()); !math.IsNaN(last) {
		lastT := time.Unix(int64(last), 0)
		next = lastT.Add(every)
		if late := time.Since(next); late > every {
			ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, err := b.audit.Append(ctx, audit.Event{Actor: "system", Action: "backup.missed", Result: audit.ResultError,
				Details: map[string]string{"last": lastT.UTC().Format(time.RFC3339), "late": late.Round(time.Second).String()}})
			cancel()
			if err != nil {
				b.log.Error("missed backup not audited", "error", err)
			}
			next = time.Now()
		}
	}
	for {
		t := time.NewTimer(time.Until(next))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		_, err := b.jobs.Start("create", "", "", "system", func(ctx context.Context, progress func(backup.Progress)) (string, *backup.RestoreReport, error) {
			m, err := b.svc.Backup(ctx, "", progress)
			if err != nil {
				return "", nil, err
			}
			if pruned, err := b.svc.Prune(ctx, backup.Retention{KeepDaily: b.cfg.KeepDaily, KeepWeekly: b.cfg.KeepWeekly,
				KeepMonthly: b.cfg.KeepMonthly}, time.Now()); err != nil {
				b.log.Error("pruning old backups failed", "error", err)
			} else if len(pruned) > 0 {
				b.log.Info("old backups pruned", "backups", strings.Join(pruned, ","))
			}
			return m.ID, nil, nil
		})
		if errors.Is(err, backup.ErrBusy) {
			next = time.Now().Add(time.Minute)
			continue
		}
		b.jobs.Wait()
		if math.IsNaN(math.Float64frombits(b.lastSuccess.Load())) ||
			time.Since(time.Unix(int64(math.Float64frombits(b.lastSuccess.Load())), 0)) > every {
			next = time.Now().Add(min(5*time.Minute, every))
		} else {
			next = time.Now().Add(every)
		}
	}
}

func (b *backups) close() {
	b.cancel()
	b.jobs.Wait()
	_ = b.bucket.Close()
}

// backupsAPI is the API's view of the backup service; nil (an untyped nil) without a target.
func (a *App) backupsAPI() api.Backups {
	if a.backups == nil {
		return nil
	}
	return &backupAPI{a: a}
}

type backupAPI struct{ a *App }

func (b *backupAPI) Job(id string) (backup.BackupJob, bool) { return b.a.backups.jobs.Get(id) }

func (b *backupAPI) List(ctx context.Context, tenant string) ([]backup.BackupSummary, error) {
	return b.a.backups.svc.List(ctx, tenant)
}

func (b *backupAPI) Start(kind, tenant, id, actor string) (backup.BackupJob, error) {
	bs, a := b.a.backups, b.a
	return bs.jobs.Start(kind, tenant, id, actor, func(ctx context.Context, progress func(backup.Progress)) (string, *backup.RestoreReport, error) {
		switch kind {
		case "create":
			m, err := bs.svc.Backup(ctx, tenant, progress)
			if err != nil {
				return "", nil, err
			}
			return m.ID, nil, nil
		case "verify":
			_, err := bs.svc.Verify(ctx, id, tenant, progress)
			return id, nil, err
		case "restore":
			rep, err := bs.svc.RestoreTenant(ctx, id, tenant, backup.TenantHooks{
				Stop: func(ctx context.Context, t backup.Tenant) {
					// Before its records are replaced by the backup's, as old as the backup: its
					// environments count as used now (again in Start, which reports a failure).
					if err := a.retention.Restart(ctx, t.Name); err != nil {
						a.log.Warn("retention: restore time not recorded before the restore", "tenant", t.Name, "error", err)
					}
					a.pipes.StopScope(keyring.Scope{Tenant: t.Name})
					for _, env := range t.Environments {
						a.fabric.ForgetAccount(t.Name, env)
					}
				},
				Start: func(ctx context.Context, t backup.Tenant) error {
					var errs []error
					for _, env := range t.Environments {
						errs = append(errs, a.fabric.ResetAccount(ctx, t.Name, env))
					}
					errs = append(errs, a.pipes.StartScope(ctx, keyring.Scope{Tenant: t.Name}))
					// Its environments' use is as old as the backup: counted from now.
					errs = append(errs, a.retention.Restart(ctx, t.Name))
					return errors.Join(errs...)
				},
			}, progress)
			return id, rep, err
		}
		return "", nil, fmt.Errorf("unknown backup job %q", kind)
	})
}
