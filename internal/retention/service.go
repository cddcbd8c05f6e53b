package retention

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/penstock/penstock/internal/activity"
	"github.com/penstock/penstock/internal/audit"
	"github.com/penstock/penstock/internal/authz"
	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/crashpoint"
	"github.com/penstock/penstock/internal/identity"
	"github.com/penstock/penstock/internal/keyring"
	"github.com/penstock/penstock/internal/lifecycle"
	"github.com/penstock/penstock/internal/notify"
)

// Bucket holds the records, each sealed with its scope's data key: an environment's with the
// environment's (its deletion shreds it), a tenant's policy with the tenant's.
const Bucket = "penstock_retention"

// Actor is who the audit log says deleted an environment for inactivity.
const Actor = "system:retention"

const (
	activityID = "activity"
	policyID   = "policy"
	warnedID   = "warned"
)

// platformScope holds the index of warned environments every node reads.
var platformScope = keyring.Scope{Tenant: notify.PlatformTenant}

// Auditor appends audit events.
type Auditor interface {
	Append(ctx context.Context, e audit.Event) (audit.Event, error)
}

// Options are what retention reads and acts through.
type Options struct {
	Keyring   *keyring.Keyring
	Identity  *identity.Store
	Lifecycle *lifecycle.Service
	Tracker   *activity.Tracker
	Config    config.Retention
	// InUse notes, at each flush, what is in use on this node without a call to note it: a
	// native client connected, however quiet; a pipeline run in progress (a continuous
	// pipeline's never ends).
	InUse func(*activity.Tracker)
	// Notify raises the warnings (nil: the audit log and the API say it only).
	Notify   *notify.Service
	Audit    Auditor
	Logger   *slog.Logger
	Registry prometheus.Registerer
}

// Service keeps activity and applies the policy.
type Service struct {
	o     Options
	store *keyring.Sealed
	run   sync.Mutex // one run at a time in this process (in a cluster, the lease holder's)
	// flush: one flush at a time, so that a run's flush returns only once what another flush
	// took from the tracker is written.
	flush sync.Mutex

	mu     sync.Mutex
	warned map[activity.Env]Warning // the index, as last read

	warnings, deletions prometheus.Counter
	lastRun             prometheus.Gauge
}

// Open opens the store.
func Open(ctx context.Context, o Options) (*Service, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	st, err := o.Keyring.Sealed(ctx, Bucket, "retention")
	if err != nil {
		return nil, err
	}
	s := &Service{o: o, store: st, warned: map[activity.Env]Warning{},
		warnings: prometheus.NewCounter(prometheus.CounterOpts{Name: "penstock_retention_warnings_total",
			Help: "Warnings sent that retention will delete an unused environment."}),
		deletions: prometheus.NewCounter(prometheus.CounterOpts{Name: "penstock_retention_deletions_total",
			Help: "Environments retention deleted for inactivity."}),
		lastRun: prometheus.NewGauge(prometheus.GaugeOpts{Name: "penstock_retention_last_run_timestamp_seconds",
			Help: "Unix time of the last retention run that went through every environment without an error (0: none yet on this node)."}),
	}
	if o.Registry != nil {
		o.Registry.MustRegister(s.warnings, s.deletions, s.lastRun)
	}
	return s, nil
}

func (s *Service) now() time.Time { return s.o.Tracker.Now().UTC() }

// ErrInvalid wraps refusals of bad input; the message names the field.
var ErrInvalid = errors.New("invalid")

// TenantPolicy is a tenant's own retention, set by platform admins.
type TenantPolicy struct {
	InactiveAfter string   `json:"inactive_after,omitempty" doc:"how long an environment of the tenant may go unused (90d, 720h); empty: retention.inactive_after; 0: never deleted"`
	Exempt        []string `json:"exempt,omitempty" doc:"environments of the tenant never deleted for inactivity"`
}

// Normalize checks the policy.
func (p *TenantPolicy) Normalize() error {
	if p.InactiveAfter != "" {
		d, err := config.ParseDuration(p.InactiveAfter)
		if err != nil || d < 0 {
			return fmt.Errorf("%w: inactive_after: a duration such as 90d or 720h, or 0", ErrInvalid)
		}
		if d != 0 && d < day {
			return fmt.Errorf("%w: inactive_after: at least 1d (0 keeps the tenant's environments)", ErrInvalid)
		}
	}
	if len(p.Exempt) > 100 {
		return fmt.Errorf("%w: exempt: at most 100 environments", ErrInvalid)
	}
	for i, e := range p.Exempt {
		if err := identity.CheckName("environment", e); err != nil {
			return fmt.Errorf("%w: exempt[%d]: %v", ErrInvalid, i, err)
		}
	}
	slices.Sort(p.Exempt)
	p.Exempt = slices.Compact(p.Exempt)
	return nil
}

func (p TenantPolicy) inactiveAfter(def time.Duration) (time.Duration, string) {
	if p.InactiveAfter == "" {
		return def, "retention.inactive_after"
	}
	d, _ := config.ParseDuration(p.InactiveAfter) // checked when stored
	return d, "tenant policy"
}

// SetPolicy stores a tenant's policy (platform admins).
func (s *Service) SetPolicy(ctx context.Context, tenant string, p TenantPolicy) (TenantPolicy, error) {
	if err := p.Normalize(); err != nil {
		return TenantPolicy{}, err
	}
	if _, ok := s.o.Identity.Tenant(tenant); !ok {
		return TenantPolicy{}, identity.ErrNotFound
	}
	b, _ := json.Marshal(p)
	if _, err := s.store.Put(ctx, keyring.Scope{Tenant: tenant}, policyID, b); err != nil {
		return TenantPolicy{}, err
	}
	return p, nil
}

// PolicyOf reads a tenant's policy (empty when none was set).
func (s *Service) PolicyOf(ctx context.Context, tenant string) (TenantPolicy, error) {
	var p TenantPolicy
	b, _, err := s.store.Get(ctx, keyring.Scope{Tenant: tenant}, policyID)
	if errors.Is(err, keyring.ErrNotFound) {
		return p, nil
	}
	if errors.Is(err, keyring.ErrDecrypt) || errors.Is(err, keyring.ErrMalformed) {
		return p, fmt.Errorf("stored retention policy of %s: %w: %v", tenant, errDamaged, err)
	}
	if err != nil {
		return p, err
	}
	if err := json.Unmarshal(b, &p); err != nil {
		return p, fmt.Errorf("stored retention policy of %s: %w: %v", tenant, errDamaged, err)
	}
	return p, nil
}

// get reads an environment's record and its revision (0: none).
func (s *Service) get(ctx context.Context, e activity.Env) (Record, uint64, error) {
	var r Record
	b, ent, err := s.store.Get(ctx, keyring.Scope{Tenant: e.Tenant, Environment: e.Environment}, activityID)
	if errors.Is(err, keyring.ErrNotFound) {
		return r, 0, nil
	}
	if errors.Is(err, keyring.ErrDecrypt) || errors.Is(err, keyring.ErrMalformed) {
		return r, 0, fmt.Errorf("stored activity of %s/%s: %w: %v", e.Tenant, e.Environment, errDamaged, err)
	}
	if err != nil {
		return r, 0, err
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, 0, fmt.Errorf("stored activity of %s/%s: %w: %v", e.Tenant, e.Environment, errDamaged, err)
	}
	return r, ent.Revision, nil
}

// update changes an environment's record by compare and set (a record that is not there
// starts at now).
func (s *Service) update(ctx context.Context, e activity.Env, change func(*Record) bool) (Record, error) {
	for range 5 {
		r, rev, err := s.get(ctx, e)
		if err != nil {
			return r, err
		}
		if rev == 0 {
			r.Since = s.now()
		}
		if !change(&r) && rev != 0 {
			return r, nil
		}
		b, _ := json.Marshal(r)
		_, err = s.store.Update(ctx, keyring.Scope{Tenant: e.Tenant, Environment: e.Environment}, activityID, b, rev)
		if errors.Is(err, keyring.ErrConflict) {
			continue // another node wrote it: read again
		}
		return r, err
	}
	return Record{}, fmt.Errorf("activity of %s/%s: %w", e.Tenant, e.Environment, keyring.ErrConflict)
}

// live says whether the environment exists and is not being deleted.
func (s *Service) live(e activity.Env) bool {
	sc := authz.Scope{Tenant: e.Tenant, Environment: e.Environment}
	return s.o.Identity.Exists(sc) && !s.o.Identity.Deleting(sc)
}

// errDamaged marks a record that is there and does not read.
var errDamaged = errors.New("damaged")

// writeStep is the most often a busy environment's use is written (per node): an hour, or an
// eighth of retention.inactive_after if that is shorter. No warning goes before half of a
// policy (at least a day for a tenant's own), so a use written this late never gets one; a
// use after a long quiet spell (one that voids a warning) is written at the next flush.
func (s *Service) writeStep() time.Duration {
	if d := s.o.Config.InactiveAfter / 8; d > 0 && d < time.Hour {
		return d
	}
	return time.Hour
}

// Flush writes what the tracker noted since the last flush, after noting what is in use
// here (InUse).
func (s *Service) Flush(ctx context.Context) error {
	s.flush.Lock()
	defer s.flush.Unlock()
	if s.o.InUse != nil {
		s.o.InUse(s.o.Tracker)
	}
	s.o.Tracker.Prune(s.live)
	var errs []error
	for e, t := range s.o.Tracker.Take(s.writeStep()) {
		if !s.live(e) {
			continue
		}
		if _, err := s.update(ctx, e, func(r *Record) bool { return r.merge(t) }); err != nil {
			s.o.Tracker.Untake(e)
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// EnvStatus is one environment as retention sees it.
type EnvStatus struct {
	Tenant      string `json:"tenant"`
	Environment string `json:"environment"`
	// State: active (not within a warning yet), warned, due (deleted at the next run),
	// exempt, off (the policy deletes nothing), deleting, unknown (not seen by a run yet),
	// error (its record does not read: never deleted while so).
	State            string               `json:"state" enum:"active,warned,due,exempt,off,deleting,unknown,error"`
	LastActivity     time.Time            `json:"last_activity,omitzero"`
	LastActivityKind string               `json:"last_activity_kind,omitempty"`
	Activity         map[string]time.Time `json:"activity,omitempty"`
	Since            time.Time            `json:"tracked_since,omitzero"`
	InactiveAfter    string               `json:"inactive_after"`
	PolicyFrom       string               `json:"policy_from"`
	ExemptBy         string               `json:"exempt_by,omitempty"`
	// WarnAt: the warnings' dates, 30, 7 and 1 days before (sent ones at their sending).
	WarnAt   []WarningDate `json:"warnings,omitempty"`
	DeleteAt time.Time     `json:"delete_at,omitzero"`
	// Error says why the state is "error" (a record that does not read).
	Error string `json:"error,omitempty"`
}

// WarningDate is one warning's date.
type WarningDate struct {
	Days int       `json:"days"`
	At   time.Time `json:"at"`
	Sent bool      `json:"sent"`
}

// exemptBy says what exempts an environment ("" if nothing).
func (s *Service) exemptBy(e activity.Env, p TenantPolicy) string {
	for _, g := range s.o.Config.Exempt {
		if ok, _ := path.Match(g, e.Tenant+"/"+e.Environment); ok {
			return "retention.exempt " + g
		}
	}
	if slices.Contains(p.Exempt, e.Environment) {
		return "tenant policy"
	}
	return ""
}

// status describes an environment from its record (whose warnings are current).
func (s *Service) status(e activity.Env, r Record, p TenantPolicy, now time.Time) (EnvStatus, Plan) {
	st := EnvStatus{Tenant: e.Tenant, Environment: e.Environment, Activity: r.Activity, Since: r.Since}
	st.LastActivity, st.LastActivityKind = r.Last()
	d, from := p.inactiveAfter(s.o.Config.InactiveAfter)
	st.InactiveAfter, st.PolicyFrom = Days(d), from
	if d == 0 {
		st.InactiveAfter = "0"
	}
	if st.ExemptBy = s.exemptBy(e, p); st.ExemptBy != "" {
		st.State = "exempt"
		return st, Plan{}
	}
	if d == 0 {
		st.State = "off"
		return st, Plan{}
	}
	if r.Since.IsZero() {
		st.State = "unknown" // not seen by a run yet: the next one starts counting
		return st, Plan{}
	}
	pl := plan(r, d, s.o.Config.Grace, now)
	for _, stage := range stages(d) {
		_, sent := r.sent(stage)
		st.WarnAt = append(st.WarnAt, WarningDate{Days: stage, At: pl.WarnAt[stage], Sent: sent})
	}
	st.DeleteAt = pl.DeleteAt
	switch {
	case pl.Delete:
		st.State = "due"
	case len(r.Warnings) > 0 || pl.Warn != 0:
		st.State = "warned"
	default:
		st.State = "active"
	}
	return st, pl
}

// Env describes one environment now.
func (s *Service) Env(ctx context.Context, tenant, env string) (EnvStatus, error) {
	t, err := s.tenantOf(ctx, tenant)
	if err != nil {
		return EnvStatus{}, err
	}
	return s.envOf(ctx, activity.Env{Tenant: tenant, Environment: env}, t)
}

// judged is what a tenant's environments are judged by: its policy and its restore time.
type judged struct {
	policy  TenantPolicy
	floor   time.Time
	damaged bool // the policy does not read: its environments are in state error
}

// tenantOf reads a tenant's policy and restore time. A record that does not read (damage) is
// said where it is, not as a failure of every report: such an environment is never deleted,
// its record is kept for repair. An engine error is an error.
func (s *Service) tenantOf(ctx context.Context, tenant string) (judged, error) {
	var j judged
	var err error
	j.policy, err = s.PolicyOf(ctx, tenant)
	if errors.Is(err, errDamaged) {
		s.o.Logger.Error("retention: a tenant's policy does not read; its environments are not deleted while it does not", "tenant", tenant,
			"error", err)
		return judged{damaged: true}, nil
	}
	if err != nil {
		return j, err
	}
	j.floor, err = s.floorOf(ctx, tenant)
	return j, err
}

// envOf describes one environment of a tenant now.
func (s *Service) envOf(ctx context.Context, e activity.Env, j judged) (EnvStatus, error) {
	tenant, env := e.Tenant, e.Environment
	if s.o.Identity.Deleting(authz.Scope{Tenant: tenant, Environment: env}) {
		return EnvStatus{Tenant: tenant, Environment: env, State: "deleting"}, nil
	}
	if j.damaged {
		return EnvStatus{Tenant: tenant, Environment: env, State: "error", Error: "the tenant's retention policy does not read"}, nil
	}
	p := j.policy
	r, _, err := s.get(ctx, e)
	if errors.Is(err, errDamaged) {
		s.o.Logger.Error("retention: an environment's record does not read; it is not deleted while it does not", "tenant", tenant,
			"environment", env, "error", err)
		return EnvStatus{Tenant: tenant, Environment: env, State: "error", Error: "its retention record does not read"}, nil
	}
	if err != nil {
		return EnvStatus{}, err
	}
	r.floor(j.floor)
	d, _ := p.inactiveAfter(s.o.Config.InactiveAfter)
	r.current(d)
	st, _ := s.status(e, r, p, s.now())
	return st, nil
}

// Report describes every environment (of one tenant, or all with tenant "").
func (s *Service) Report(ctx context.Context, tenant string) ([]EnvStatus, error) {
	out := []EnvStatus{}
	for _, t := range s.o.Identity.Tenants() {
		if tenant != "" && t.Name != tenant {
			continue
		}
		j, err := s.tenantOf(ctx, t.Name)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", t.Name, err)
		}
		for _, env := range t.Environments {
			st, err := s.envOf(ctx, activity.Env{Tenant: t.Name, Environment: env}, j)
			if err != nil {
				return nil, fmt.Errorf("%s/%s: %w", t.Name, env, err)
			}
			out = append(out, st)
		}
	}
	return out, nil
}

// RunAction is one thing a run did (or, dry, would do).
type RunAction struct {
	Tenant      string    `json:"tenant"`
	Environment string    `json:"environment"`
	Action      string    `json:"action" enum:"warn,delete,cleared,resumed,error"`
	Days        int       `json:"days,omitempty" doc:"the warning's stage"`
	DeleteAt    time.Time `json:"delete_at,omitzero"`
	LastUse     time.Time `json:"last_activity,omitzero"`
	Error       string    `json:"error,omitempty"`
}

// RunResult is a run's outcome.
type RunResult struct {
	At      time.Time   `json:"at"`
	DryRun  bool        `json:"dry_run"`
	Checked int         `json:"checked"`
	Actions []RunAction `json:"actions"`
}

// Run looks at every environment: warnings whose date has come are sent, environments past
// their date (and past the grace after their last warning) are deleted through the
// lifecycle. Dry, it only says what it would do. A run stopped by a crash is simply run
// again: warnings are recorded as they go, and a deletion once marked is finished by the
// lifecycle at the next start.
func (s *Service) Run(ctx context.Context, dry bool) (RunResult, error) {
	s.run.Lock()
	defer s.run.Unlock()
	res := RunResult{At: s.now(), DryRun: dry, Actions: []RunAction{}}
	if err := s.Flush(ctx); err != nil {
		s.o.Logger.Warn("retention: activity not written", "error", err)
	}
	index := map[activity.Env]Warning{}
	var errs []error
	if !dry {
		// A deletion of its own that failed part way (an engine error, a lost lease) is
		// finished here rather than left until the next start.
		for _, d := range s.o.Identity.Deletions() {
			if d.Actor != Actor {
				continue
			}
			a := RunAction{Tenant: d.Scope.Tenant, Environment: d.Scope.Environment, Action: "resumed"}
			if err := s.o.Lifecycle.DeleteFor(ctx, Actor, d.Reason, d.Scope); err != nil && !errors.Is(err, identity.ErrNotFound) {
				a.Error = err.Error()
				errs = append(errs, err)
			}
			res.Actions = append(res.Actions, a)
		}
		if err := s.checkClock(ctx); err != nil {
			errs = append(errs, err)
			s.o.Logger.Error("retention: nothing is warned or deleted while this node's clock disagrees with the engine's", "error", err)
			return res, errors.Join(errs...)
		}
	}
	for _, t := range s.o.Identity.Tenants() {
		if s.o.Identity.Deleting(authz.Scope{Tenant: t.Name}) {
			continue
		}
		j, err := s.tenantOf(ctx, t.Name)
		if err == nil && j.damaged {
			err = errors.New("the tenant's retention policy does not read")
		}
		if err != nil {
			errs = append(errs, err)
			res.Actions = append(res.Actions, RunAction{Tenant: t.Name, Action: "error", Error: err.Error()})
			continue
		}
		for _, env := range t.Environments {
			e := activity.Env{Tenant: t.Name, Environment: env}
			if !s.live(e) {
				continue
			}
			res.Checked++
			a, w, err := s.runEnv(ctx, e, j.policy, j.floor, dry)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s/%s: %w", t.Name, env, err))
				if a == nil {
					a = &RunAction{Tenant: t.Name, Environment: env, Action: "error"}
				}
				a.Error = err.Error()
			}
			if a != nil {
				res.Actions = append(res.Actions, *a)
			}
			if w.Days != 0 {
				index[e] = w
			}
		}
	}
	if !dry {
		if err := s.writeIndex(ctx, index); err != nil {
			errs = append(errs, err)
		}
		if len(errs) == 0 {
			s.lastRun.Set(float64(time.Now().Unix()))
		}
	}
	return res, errors.Join(errs...)
}

// runEnv applies the policy to one environment; it returns what it did and the environment's
// latest warning, if one stands.
func (s *Service) runEnv(ctx context.Context, e activity.Env, p TenantPolicy, floor time.Time, dry bool) (*RunAction, Warning, error) {
	now := s.now()
	r, rev, err := s.get(ctx, e)
	if err != nil {
		return nil, Warning{}, err
	}
	r.floor(floor)
	if rev == 0 {
		if dry {
			return nil, Warning{}, nil
		}
		// First seen (created, or this is the first run since the upgrade): counted from now.
		_, err := s.update(ctx, e, func(*Record) bool { return true })
		return nil, Warning{}, err
	}
	d, _ := p.inactiveAfter(s.o.Config.InactiveAfter)
	voided := r.current(d)
	st, pl := s.status(e, r, p, now)
	last := st.LastActivity
	if st.State == "exempt" || st.State == "off" {
		if len(r.Warnings) > 0 {
			voided = true
		}
		pl = Plan{}
	}
	if voided {
		a := &RunAction{Tenant: e.Tenant, Environment: e.Environment, Action: "cleared", LastUse: last}
		if !dry {
			if _, err := s.update(ctx, e, func(r *Record) bool {
				r.Warnings, r.Basis = nil, time.Time{}
				return true
			}); err != nil {
				return a, Warning{}, err
			}
		}
		if pl.Warn == 0 && !pl.Delete {
			return a, Warning{}, nil
		}
	}
	switch {
	case pl.Delete:
		a := &RunAction{Tenant: e.Tenant, Environment: e.Environment, Action: "delete", DeleteAt: pl.DeleteAt, LastUse: last}
		if dry {
			return a, Warning{}, nil
		}
		// Use noted on this node since the run began keeps it.
		if err := s.Flush(ctx); err != nil {
			return a, Warning{}, err
		}
		if r2, _, err := s.get(ctx, e); err != nil {
			return a, Warning{}, err
		} else if l2, _ := r2.Last(); l2.After(last) {
			a.Action = "cleared"
			return a, Warning{}, nil
		}
		reason := fmt.Sprintf("no use since %s (inactive_after %s, from %s)", last.Format(time.RFC3339), st.InactiveAfter, st.PolicyFrom)
		crashpoint.Hit("retention/deleting")
		err := s.o.Lifecycle.DeleteFor(ctx, Actor, reason, authz.Scope{Tenant: e.Tenant, Environment: e.Environment})
		if errors.Is(err, identity.ErrNotFound) {
			err = nil // deleted meanwhile
		} else if err == nil {
			s.deletions.Inc()
		}
		return a, Warning{}, err
	case pl.Warn != 0:
		w := Warning{Days: pl.Warn, At: now, DeleteAt: pl.DeleteAt}
		a := &RunAction{Tenant: e.Tenant, Environment: e.Environment, Action: "warn", Days: w.Days, DeleteAt: w.DeleteAt, LastUse: last}
		if dry {
			return a, Warning{}, nil
		}
		if err := s.warn(ctx, e, w, last, st); err != nil {
			return a, Warning{}, err
		}
		return a, w, nil
	}
	if n := len(r.Warnings); n > 0 && !voided {
		return nil, r.Warnings[n-1], nil
	}
	return nil, Warning{}, nil
}

// warn audits a warning, records it, then tells the tenant's channels (the event
// retention.warning). A crash before the record sends it again at the next run (audited
// twice); one between the record and the notice loses the notice, never the record, so no
// environment is deleted without a recorded warning.
func (s *Service) warn(ctx context.Context, e activity.Env, w Warning, last time.Time, st EnvStatus) error {
	if _, err := s.o.Audit.Append(ctx, audit.Event{Actor: Actor, Tenant: e.Tenant, Environment: e.Environment, Action: "retention.warned",
		Target: e.Tenant + "/" + e.Environment, Result: audit.ResultOK, Details: map[string]string{
			"days": fmt.Sprint(w.Days), "delete_at": w.DeleteAt.Format(time.RFC3339), "last_activity": last.Format(time.RFC3339),
			"inactive_after": st.InactiveAfter, "policy_from": st.PolicyFrom}}); err != nil {
		return err
	}
	recorded := false
	if _, err := s.update(ctx, e, func(r *Record) bool {
		if _, ok := r.sent(w.Days); ok {
			recorded = false // another run (a process on the same engine) sent it
			return false
		}
		r.Basis = last
		r.Warnings = append(r.Warnings, w)
		recorded = true
		return true
	}); err != nil {
		return err
	}
	if !recorded {
		return nil
	}
	crashpoint.Hit("retention/warned")
	detail := fmt.Sprintf("environment %s of tenant %s has not been used since %s; it will be deleted with all of its data on %s unless it is used before (%d-day warning; inactive_after %s)",
		e.Environment, e.Tenant, last.Format("2006-01-02 15:04 MST"), w.DeleteAt.Format("2006-01-02 15:04 MST"), w.Days, st.InactiveAfter)
	if s.o.Notify != nil && !s.o.Notify.Raise(notify.Event{Tenant: e.Tenant, Environment: e.Environment, Kind: notify.RetentionWarning,
		Resource: fmt.Sprintf("%s/delete-%s/%dd-warning", e.Environment, w.DeleteAt.UTC().Format("2006-01-02"), w.Days), Detail: detail}) {
		// The notifications' queue is full: the warning is taken back, to go at the next run
		// (nothing is deleted on a warning nobody could be told of).
		if _, err := s.update(ctx, e, func(r *Record) bool {
			r.Warnings = slices.DeleteFunc(r.Warnings, func(x Warning) bool { return x.Days == w.Days && x.At.Equal(w.At) })
			return true
		}); err != nil {
			return err
		}
		return errors.New("the notifications' queue is full: the warning goes at the next run")
	}
	s.warnings.Inc()
	return nil
}

// indexEntry is one warned environment in the index every node reads.
type indexEntry struct {
	Tenant      string  `json:"tenant"`
	Environment string  `json:"environment"`
	Warning     Warning `json:"warning"`
}

// ReadIndex reads the warned environments the last run wrote (every node, once a minute).
func (s *Service) ReadIndex(ctx context.Context) error {
	b, _, err := s.store.Get(ctx, platformScope, warnedID)
	if errors.Is(err, keyring.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	var list []indexEntry
	if err := json.Unmarshal(b, &list); err != nil {
		return fmt.Errorf("stored index of warned environments: %w", err)
	}
	index := make(map[activity.Env]Warning, len(list))
	for _, x := range list {
		index[activity.Env{Tenant: x.Tenant, Environment: x.Environment}] = x.Warning
	}
	s.mu.Lock()
	s.warned = index
	s.mu.Unlock()
	return nil
}

// Warned returns the standing warning of an environment, for the API's responses.
func (s *Service) Warned(tenant, env string) (Warning, bool) {
	if s == nil {
		return Warning{}, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	w, ok := s.warned[activity.Env{Tenant: tenant, Environment: env}]
	return w, ok
}

// Loop flushes activity and reads the index every interval until ctx ends (every node).
func (s *Service) Loop(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if err := s.Flush(ctx); err != nil && ctx.Err() == nil {
			s.o.Logger.Warn("retention: activity not written; retried at the next flush", "error", err)
		}
		if err := s.ReadIndex(ctx); err != nil && ctx.Err() == nil {
			s.o.Logger.Warn("retention: warned environments not read", "error", err)
		}
		select {
		case <-ctx.Done():
			// What was noted since the last flush is written before the process stops.
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			_ = s.Flush(fctx)
			cancel()
			return
		case <-t.C:
		}
	}
}

// Schedule runs retention every check_every until ctx ends (the lease holder in a cluster).
func (s *Service) Schedule(ctx context.Context) {
	t := time.NewTicker(s.o.Config.CheckEvery)
	defer t.Stop()
	for {
		res, err := s.Run(ctx, false)
		if err != nil && ctx.Err() == nil {
			s.o.Logger.Warn("retention run", "error", err)
		}
		if n := len(res.Actions); n > 0 {
			s.o.Logger.Info("retention run", "checked", res.Checked, "actions", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// maxSkew is how far this node's clock may be from the engine's for a run to warn or delete:
// a node whose clock ran ahead would otherwise see every quiet environment as overdue.
const maxSkew = 5 * time.Minute

// editIndex changes the stored index of warned environments by compare and set, then keeps
// what it wrote: the run replaces it, a deletion takes its environment out, and neither
// brings back what the other changed.
func (s *Service) editIndex(ctx context.Context, change func(map[activity.Env]Warning)) error {
	for range 5 {
		b, ent, err := s.store.Get(ctx, platformScope, warnedID)
		index := map[activity.Env]Warning{}
		switch {
		case errors.Is(err, keyring.ErrNotFound):
			ent.Revision = 0
		case err != nil:
			return err
		default:
			var list []indexEntry
			if json.Unmarshal(b, &list) == nil {
				for _, x := range list {
					index[activity.Env{Tenant: x.Tenant, Environment: x.Environment}] = x.Warning
				}
			}
		}
		change(index)
		list := make([]indexEntry, 0, len(index))
		for e, w := range index {
			list = append(list, indexEntry{Tenant: e.Tenant, Environment: e.Environment, Warning: w})
		}
		nb, _ := json.Marshal(list)
		_, err = s.store.Update(ctx, platformScope, warnedID, nb, ent.Revision)
		if errors.Is(err, keyring.ErrConflict) {
			continue
		}
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.warned = index
		s.mu.Unlock()
		return nil
	}
	return fmt.Errorf("index of warned environments: %w", keyring.ErrConflict)
}

// writeIndex replaces the index with a run's (leaving out environments deleted meanwhile).
func (s *Service) writeIndex(ctx context.Context, index map[activity.Env]Warning) error {
	return s.editIndex(ctx, func(m map[activity.Env]Warning) {
		clear(m)
		for e, w := range index {
			if s.live(e) {
				m[e] = w
			}
		}
	})
}

// Forget takes a deleted environment (env "": every environment of the tenant) out of the
// index, so that a new one of the same name is not said to be warned.
func (s *Service) Forget(tenant, env string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.editIndex(ctx, func(m map[activity.Env]Warning) {
		for e := range m {
			if e.Tenant == tenant && (env == "" || e.Environment == env) {
				delete(m, e)
			}
		}
	}); err != nil {
		s.o.Logger.Warn("retention: index of warned environments not rewritten; the next run does", "error", err)
	}
}

func floorID(tenant string) string { return "floor-" + tenant }

// floorOf is when a tenant's environments were last restored (zero: never): they count as
// used then.
func (s *Service) floorOf(ctx context.Context, tenant string) (time.Time, error) {
	b, _, err := s.store.Get(ctx, platformScope, floorID(tenant))
	if errors.Is(err, keyring.ErrNotFound) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("restore time of %s: %w", tenant, err)
	}
	var t time.Time
	if err := t.UnmarshalText(b); err != nil {
		return time.Time{}, fmt.Errorf("restore time of %s: %w: %v", tenant, errDamaged, err)
	}
	return t, nil
}

// Restart counts every environment of a tenant (of every tenant, with "") as used now, with no
// warning standing: after a restore, whose records of use are as old as the backup. It is one
// record per tenant, written before the restored records are used (the platform's before the
// deletions resume; a tenant's when its restore stops it), so no run sees them alone.
func (s *Service) Restart(ctx context.Context, tenant string) error {
	now, _ := s.now().MarshalText()
	var errs []error
	for _, t := range s.o.Identity.Tenants() {
		if tenant != "" && t.Name != tenant {
			continue
		}
		if _, err := s.store.Put(ctx, platformScope, floorID(t.Name), now); err != nil {
			errs = append(errs, err)
		}
	}
	if err := s.editIndex(ctx, func(m map[activity.Env]Warning) {
		for e := range m {
			if tenant == "" || e.Tenant == tenant {
				delete(m, e)
			}
		}
	}); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// checkClock compares this node's clock with the engine's (the time the engine stamps on a
// record it stores, from its stream leader's clock in a cluster). A read that does not return
// the record just written (a follower behind) checks nothing rather than refuse.
func (s *Service) checkClock(ctx context.Context) error {
	before := time.Now()
	rev, err := s.store.Put(ctx, platformScope, "clock", []byte(`{}`))
	if err != nil {
		return err
	}
	_, e, err := s.store.Get(ctx, platformScope, "clock")
	if err != nil {
		return err
	}
	after := time.Now()
	if e.Revision != rev {
		return nil
	}
	if e.Updated.Before(before.Add(-maxSkew)) || e.Updated.After(after.Add(maxSkew)) {
		return fmt.Errorf("this node's clock (%s) and the engine's (%s) are more than %s apart", after.UTC().Format(time.RFC3339),
			e.Updated.UTC().Format(time.RFC3339), maxSkew)
	}
	return nil
}
