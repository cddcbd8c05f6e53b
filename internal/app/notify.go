package app

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/penstock/penstock/internal/activity"
	"github.com/penstock/penstock/internal/audit"
	"github.com/penstock/penstock/internal/authz"
	"github.com/penstock/penstock/internal/egress"
	"github.com/penstock/penstock/internal/fabric"
	"github.com/penstock/penstock/internal/keyring"
	"github.com/penstock/penstock/internal/notify"
	"github.com/penstock/penstock/internal/pipeline"
)

// openNotify opens notifications and has the audit log tell them of what they watch there:
// failed logins, refused native logins and publishes, failed or missed backups, damage.
func (a *App) openNotify(ctx context.Context, reg *prometheus.Registry) error {
	var platform egress.Policy
	platform.Tenant = "platform"
	for i, r := range a.cfg.Notify.PlatformEgress {
		rule, err := egress.ParseRule(r)
		if err != nil {
			return fmt.Errorf("notify.platform_egress[%d]: %w", i, err)
		}
		platform.Rules = append(platform.Rules, rule)
	}
	ident := a.ident
	var err error
	a.notify, err = notify.Open(ctx, notify.Options{
		Keyring: a.keys, Config: a.cfg.Notify, Audit: a.audit, Logger: a.log.With("component", "notify"), Registry: reg,
		Egress: func(tenant string) egress.Policy {
			if tenant == "" {
				return platform
			}
			return ident.EgressPolicy(tenant)
		},
		Tenants: func() []string {
			var out []string
			for _, t := range ident.Tenants() {
				out = append(out, t.Name)
			}
			return out
		},
		Levels: (&levels{a: a, started: time.Now(), active: map[string]queueMove{}}).measure,
	})
	if err != nil {
		return err
	}
	n := a.notify
	a.audit.OnAppend(func(e audit.Event) {
		ev := notify.Event{Tenant: e.Tenant, Environment: e.Environment, Time: e.Time}
		switch {
		case e.Action == "auth.login" && e.Result == "denied":
			// Names typed for users that do not exist are one resource: each would otherwise
			// be an alert of its own, opened by anyone.
			ev.Kind, ev.Tenant, ev.Resource = "auth.login_failed", "", e.Actor
			if strings.HasPrefix(e.Actor, "unknown-user:") {
				ev.Resource = "unknown-user"
			}
		case e.Action == "fabric.connect" && e.Result != audit.ResultOK:
			ev.Kind, ev.Resource = "fabric.native_refused", "native"
		case e.Action == "fabric.quota":
			ev.Kind, ev.Resource = "fabric.quota_refused", e.Environment
		case backupJobEnds[e.Action] && e.Result == audit.ResultError:
			// The ends of backup jobs and missed schedules, not a refused backup request.
			ev.Kind, ev.Resource = "backup.failed", e.Action
		case e.Action == "platform.stream_damaged":
			ev.Kind, ev.Tenant, ev.Resource = "data.damaged", "", e.Details["account"]+"/"+e.Details["stream"]
		default:
			return
		}
		n.Raise(ev)
	})
	a.audit.OnForwardFailure(func(sink string) {
		n.Raise(notify.Event{Kind: "audit.forward_failed", Resource: sink})
	})
	return nil
}

// backupJobEnds are the audit actions of backup jobs that ended (app/backups.go) and of a
// missed schedule.
var backupJobEnds = map[string]bool{"backup.created": true, "backup.verified": true, "backup.restored": true, "backup.missed": true}

// onDeadLetter tells notifications of a message moved to a dead-letter queue.
func (a *App) onDeadLetter(r fabric.Ref, _ string) {
	a.notify.Raise(notify.Event{Tenant: r.Tenant, Environment: r.Environment, Application: r.Application,
		Kind: "queue.dead_letters", Resource: r.Environment + "/" + r.Application + "/" + r.Name})
}

// onRunEnd tells notifications of a pipeline run that ended: a failure, and its error rate.
func (a *App) onRunEnd(app keyring.Scope, name string, run pipeline.Run) {
	a.activity.Touch(app.Tenant, app.Environment, activity.Pipeline)
	ev := notify.Event{Tenant: app.Tenant, Environment: app.Environment, Application: app.Application,
		Resource: app.Environment + "/" + app.Application + "/" + name}
	if run.Status == "failed" {
		f := ev
		f.Kind = "pipeline.run_failed"
		a.notify.Raise(f)
	}
	if run.In > 0 {
		ev.Kind, ev.Value = "pipeline.error_rate", float64(run.Failed)*100/float64(run.In)
		a.notify.Raise(ev)
	}
}

// onPipelineDeadLetters tells notifications of records a pipeline run sent to its dead-letter
// queue (continuous runs never end: their failures are told as they go).
func (a *App) onPipelineDeadLetters(app keyring.Scope, name string, records int64) {
	a.notify.Raise(notify.Event{Tenant: app.Tenant, Environment: app.Environment, Application: app.Application,
		Kind: "pipeline.dead_letters", Resource: app.Environment + "/" + app.Application + "/" + name, Value: float64(records)})
}

// levels measures the queues of the tenants whose rules watch queue levels.
type levels struct {
	a       *App
	started time.Time
	mu      sync.Mutex
	// active remembers, by queue, the delivery position last seen and when it last moved.
	active map[string]queueMove
}

type queueMove struct {
	delivered uint64
	at        time.Time
}

// measure measures what the rules want: queue levels, overdue pipelines, API keys and the
// TLS certificate near expiry.
func (l *levels) measure(ctx context.Context, want map[string][]string) []notify.Event {
	by := map[string]map[string]bool{} // kind -> tenants
	for t, kinds := range want {
		for _, k := range kinds {
			if by[k] == nil {
				by[k] = map[string]bool{}
			}
			if t == "" { // platform rules watch every tenant
				for _, x := range l.a.ident.Tenants() {
					by[k][x.Name] = true
				}
			} else {
				by[k][t] = true
			}
		}
	}
	now := time.Now()
	queues := map[string]bool{}
	for _, k := range []string{"queue.depth", "queue.oldest_age", "queue.no_consumer"} {
		for t := range by[k] {
			queues[t] = true
		}
	}
	out := l.queues(ctx, queues, now)
	out = append(out, l.late(ctx, by["pipeline.late"], now)...)
	if limit := l.a.cfg.Fabric.MaxStorage; limit > 0 {
		for t := range by["quota.storage"] {
			tn, ok := l.a.ident.Tenant(t)
			if !ok {
				continue
			}
			for _, env := range tn.Environments {
				if used, err := l.a.fabric.StorageUsed(ctx, t, env); err == nil {
					out = append(out, notify.Event{Tenant: t, Environment: env, Kind: "quota.storage", Resource: env,
						Value: math.Floor(float64(used) * 100 / float64(limit)), Time: now})
				}
			}
		}
	}
	for t := range by["apikey.expiring"] {
		for _, k := range l.a.ident.APIKeys("") {
			if k.Scope.Tenant == t && !k.Revoked && !k.Expires.IsZero() {
				out = append(out, notify.Event{Tenant: t, Environment: k.Scope.Environment, Application: k.Scope.Application,
					Kind: "apikey.expiring", Resource: "apikey:" + k.ID, Value: days(k.Expires.Sub(now)), Time: now})
			}
		}
	}
	if _, ok := want[""]; ok && slices.Contains(want[""], "cert.expiring") {
		if c := l.a.certs.Current(); c != nil && c.Leaf != nil {
			out = append(out, notify.Event{Kind: "cert.expiring", Resource: "api-certificate", Value: days(c.Leaf.NotAfter.Sub(now)), Time: now})
		}
	}
	return out
}

// appsOf lists the applications of a tenant.
func (a *App) appsOf(tenant string) []keyring.Scope {
	t, ok := a.ident.Tenant(tenant)
	if !ok {
		return nil
	}
	var out []keyring.Scope
	for _, e := range t.Environments {
		for _, ap := range a.ident.Apps(tenant, e) {
			out = append(out, keyring.Scope{Tenant: tenant, Environment: e, Application: ap.Name})
		}
	}
	return out
}

// days is d in whole days, rounded down (a certificate with 6.5 days left has 6).
func days(d time.Duration) float64 { return math.Floor(d.Hours() / 24) }

// late measures, for each scheduled pipeline of the tenants, how long its next run is overdue:
// the time since the schedule said it should have started, while no run is in progress.
func (l *levels) late(ctx context.Context, tenants map[string]bool, now time.Time) []notify.Event {
	var out []notify.Event
	for t := range tenants {
		for _, sc := range l.a.appsOf(t) {
			pipes, err := l.a.pipes.List(ctx, sc)
			if err != nil {
				continue
			}
			for _, p := range pipes {
				sched, err := pipeline.ParseSchedule(p.Spec.Schedule)
				if err != nil || p.Paused || sched.Continuous {
					continue
				}
				runs, err := l.a.pipes.Runs(ctx, sc, p.Name)
				if err != nil {
					continue
				}
				// The schedule counts from the end of the last run, the last change, or this
				// process's start, whichever is latest (a worker starts its timer then).
				from := p.Updated
				if from.Before(l.started) {
					from = l.started
				}
				if len(runs) > 0 {
					if runs[0].Status == "running" || runs[0].Status == "queued" {
						continue
					}
					if runs[0].End.After(from) {
						from = runs[0].End
					}
				}
				var due time.Time
				switch {
				case sched.Every > 0:
					due = from.Add(sched.Every)
				case sched.Cron != nil:
					due = sched.Cron.Next(from)
				default:
					continue
				}
				out = append(out, notify.Event{Tenant: t, Environment: sc.Environment, Application: sc.Application, Kind: "pipeline.late",
					Resource: sc.Environment + "/" + sc.Application + "/" + p.Name, Value: math.Max(0, math.Floor(now.Sub(due).Seconds())), Time: now})
			}
		}
	}
	return out
}

// queues measures every queue of the tenants.
func (l *levels) queues(ctx context.Context, tenants map[string]bool, now time.Time) []notify.Event {
	var out []notify.Event
	seen := map[string]bool{}
	for t := range tenants {
		for _, sc := range l.a.appsOf(t) {
			qs, err := l.a.fabric.Queues(ctx, fabric.Ref{Tenant: t, Environment: sc.Environment, Application: sc.Application})
			if err != nil {
				continue
			}
			for _, q := range qs {
				ev := notify.Event{Tenant: t, Environment: sc.Environment, Application: sc.Application,
					Resource: sc.Environment + "/" + sc.Application + "/" + q.Name, Time: now}
				key := t + "/" + ev.Resource
				seen[key] = true
				l.mu.Lock()
				act, ok := l.active[key]
				if !ok || act.delivered != q.Stats.Delivered || q.Stats.InFlight > 0 {
					act = queueMove{delivered: q.Stats.Delivered, at: now}
					l.active[key] = act
				}
				l.mu.Unlock()
				age := 0.0
				if !q.Stats.Oldest.IsZero() {
					age = math.Floor(now.Sub(q.Stats.Oldest).Seconds())
				}
				for kind, v := range map[string]float64{"queue.depth": float64(q.Stats.Depth), "queue.oldest_age": age,
					"queue.no_consumer": math.Floor(now.Sub(act.at).Seconds())} {
					e := ev
					e.Kind, e.Value = kind, v
					out = append(out, e)
				}
			}
		}
	}
	l.mu.Lock()
	for k := range l.active {
		if !seen[k] {
			delete(l.active, k)
		}
	}
	l.mu.Unlock()
	return out
}

// held runs fn while this node holds the cluster lease of task (on a single node, always),
// until ctx ends: notify delivery, the retention run.
func (a *App) held(ctx context.Context, task string, fn func(context.Context)) {
	if a.leases == nil {
		fn(ctx)
		return
	}
	for ctx.Err() == nil {
		lost, release, ok := a.leases.Hold(ctx.Done(), task)
		if !ok {
			return
		}
		tctx, cancel := context.WithCancel(ctx)
		go func() {
			select {
			case <-lost:
				cancel()
			case <-tctx.Done():
			}
		}()
		fn(tctx)
		cancel()
		release()
	}
}

// activityFlush is how often each node writes the activity it noted (retention): well within
// retention.Settle, so a use just before a deletion's date is seen by the run that would delete.
const activityFlush = 10 * time.Second

// onDeleted forgets what retention kept of a deleted tenant or environment on this node.
func (a *App) onDeleted(sc authz.Scope) {
	if sc.Application != "" {
		return
	}
	a.activity.Forget(sc.Tenant, sc.Environment)
	a.retention.Forget(sc.Tenant, sc.Environment)
}

// inUse notes what is in use on this node without a call that notes it: native clients
// connected, pipeline runs in progress.
func (a *App) inUse(t *activity.Tracker) {
	for _, e := range a.fabric.NativeEnvs() {
		t.Touch(e[0], e[1], activity.Native)
	}
	for _, app := range a.pipes.Running() {
		t.Touch(app.Tenant, app.Environment, activity.Pipeline)
	}
}
