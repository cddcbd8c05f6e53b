package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/penstock/penstock/internal/connector"
	"github.com/penstock/penstock/internal/connector/webhook"
	"github.com/penstock/penstock/internal/egress"
	"github.com/penstock/penstock/internal/fabric"
	"github.com/penstock/penstock/internal/keyring"
)

// Errors the API maps to stable codes.
var (
	ErrNotFound = errors.New("pipeline not found")
	ErrPaused   = errors.New("pipeline is paused")
	ErrRunning  = errors.New("a run is already in progress")
)

// Options are the service's dependencies.
type Options struct {
	Keyring  *keyring.Keyring
	Secrets  SecretReader
	Fabric   *fabric.Service
	Registry *connector.Registry
	// Egress returns a tenant's egress policy.
	Egress func(tenant string) egress.Policy
	// Leases, in a cluster, make one node at a time run each pipeline; nil runs every
	// pipeline here.
	Leases *Leases
	// Apps lists every application, for the scheduler to find stored pipelines at start.
	Apps func() []keyring.Scope
	// Live reports whether an application exists and is not being deleted; a pipeline of any
	// other is neither stored nor started (nil: every application is live).
	Live func(app keyring.Scope) bool
	// FilesRoot holds one directory per tenant for file connectors ("" disables them).
	FilesRoot string
	Logger    *slog.Logger
	// DrainTimeout bounds how long a stop waits for the batch in flight (default 30s).
	DrainTimeout time.Duration
	// Resolver looks up names for egress checks at validation (default net.DefaultResolver).
	Resolver egress.Resolver
	// OnRunEnd, if set, is told of every run that ended (notifications); it must not block.
	OnRunEnd func(app keyring.Scope, pipeline string, run Run)
	// OnDeadLetters, if set, is told of records a run sent to the dead-letter queue, as the
	// run reports its progress; it must not block.
	OnDeadLetters func(app keyring.Scope, pipeline string, records int64)
}

// Pipeline is a stored pipeline and its state.
type Pipeline struct {
	Tenant      string    `json:"tenant"`
	Environment string    `json:"environment"`
	Application string    `json:"application"`
	Name        string    `json:"name"`
	Version     int       `json:"version" doc:"1 on create, one more on each change"`
	Paused      bool      `json:"paused"`
	Spec        Spec      `json:"spec"`
	Created     time.Time `json:"created"`
	Updated     time.Time `json:"updated"`
	Running     bool      `json:"running"`
	LastRun     *Run      `json:"last_run,omitempty"`
}

type stored struct {
	Spec    json.RawMessage `json:"spec"`
	Version int             `json:"version"`
	Paused  bool            `json:"paused"`
	Created time.Time       `json:"created"`
	Updated time.Time       `json:"updated"`
}

// Run is one run's record.
type Run struct {
	ID      string    `json:"id"`
	Version int       `json:"version" doc:"the pipeline version it ran"`
	Trigger string    `json:"trigger" doc:"schedule, manual or continuous"`
	Status  string    `json:"status" doc:"queued (run-now asked for it; it starts when the run before it ends), running, succeeded, failed, stopped, or interrupted (the process died)"`
	Start   time.Time `json:"start"`
	End     time.Time `json:"end,omitzero"`
	Seconds float64   `json:"duration_seconds"`
	Node    string    `json:"node,omitempty" doc:"in a cluster, the node that ran it (held the pipeline's lease)"`
	RunStats
	Error string `json:"error,omitempty"`
}

// maxRuns is how many runs a pipeline's history keeps.
const maxRuns = 50

// Service owns pipelines: their storage, validation and the scheduler that runs them.
type Service struct {
	o     Options
	defs  *keyring.Sealed
	state *keyring.Sealed
	runs  *keyring.Sealed
	m     *metrics

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// life serialises changes to pipelines' lifecycles (apply, pause, resume, delete): each
	// stops the old worker before it starts another, so no two workers run one pipeline and
	// a deleted pipeline is not brought back. Lock order: life, then mu.
	life sync.Mutex

	mu      sync.Mutex
	workers map[string]*worker
	logs    map[string]*logRing
}

// Open opens the stores and starts a worker for every stored pipeline.
func Open(ctx context.Context, o Options) (*Service, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.DrainTimeout == 0 {
		o.DrainTimeout = 30 * time.Second
	}
	if o.Resolver == nil {
		o.Resolver = net.DefaultResolver
	}
	s := &Service{o: o, workers: map[string]*worker{}, logs: map[string]*logRing{}, m: newMetrics()}
	var err error
	if s.defs, err = o.Keyring.Sealed(ctx, "penstock_pipelines", "pipeline"); err != nil {
		return nil, err
	}
	if s.state, err = o.Keyring.Sealed(ctx, "penstock_pipeline_state", "pipeline-state"); err != nil {
		return nil, err
	}
	if s.runs, err = o.Keyring.Sealed(ctx, "penstock_pipeline_runs", "pipeline-runs"); err != nil {
		return nil, err
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if o.Apps != nil {
		for _, app := range o.Apps() {
			entries, err := s.defs.List(ctx, app)
			if err != nil {
				return nil, err
			}
			for _, e := range entries {
				if o.Leases == nil { // in a cluster the lease's next holder marks it
					s.markInterrupted(ctx, app, e.ID)
				}
				_, p, err := s.load(ctx, app, e.ID)
				if err != nil {
					o.Logger.Error("pipeline not started", "app", app.String(), "pipeline", e.ID, "error", err.Error())
					continue
				}
				s.start(app, p)
			}
		}
	}
	if o.Leases != nil {
		// Pipelines applied, paused, resumed or deleted on another node.
		if err := s.defs.Watch(s.ctx, o.Logger, s.follow); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

// follow brings this node's worker of a pipeline in line with its stored definition after a
// change made here or on another node: a new version or pause state restarts it (the worker
// then waits for the lease), a deletion stops it. A change this node made has been applied
// already and is skipped.
func (s *Service) follow(app keyring.Scope, name string, deleted bool) {
	s.life.Lock()
	defer s.life.Unlock()
	if deleted {
		s.stopWorker(app, name)
		return
	}
	if !s.live(app) {
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, 30*time.Second)
	defer cancel()
	_, p, err := s.load(ctx, app, name)
	if err != nil {
		if !errors.Is(err, ErrNotFound) {
			s.o.Logger.Error("pipeline change not followed", "app", app.String(), "pipeline", name, "error", err.Error())
		}
		return
	}
	s.mu.Lock()
	w := s.workers[key(app, name)]
	s.mu.Unlock()
	if w != nil && w.p.Version == p.Version && w.p.Paused == p.Paused {
		return
	}
	s.start(app, p)
}

// Close stops every worker, draining the batches in flight.
func (s *Service) Close() {
	s.mu.Lock()
	for _, w := range s.workers {
		w.stop()
	}
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
}

func key(app keyring.Scope, name string) string { return app.String() + "/" + name }

// Validate checks a spec completely against an application: connectors, transforms, the
// secrets it names and the egress targets it dials. Its error is SpecErrors, every problem
// found with its field path, or another error when a check could not be made.
func (s *Service) Validate(ctx context.Context, app keyring.Scope, doc []byte) (Spec, error) {
	var c checker
	spec, refs := c.spec("", doc, s.o.Registry)
	names := make([]string, 0, len(refs.Secrets))
	for p := range refs.Secrets {
		names = append(names, p)
	}
	sort.Strings(names)
	for _, p := range names {
		if _, err := s.o.Secrets(ctx, app, refs.Secrets[p]); err != nil {
			if !errors.Is(err, keyring.ErrNotFound) {
				return Spec{}, fmt.Errorf("%s: %w", p, err)
			}
			c.addf(p, "secret %q does not exist in application %s (penstock secrets put)", refs.Secrets[p], app)
		}
	}
	policy := s.o.Egress(app.Tenant)
	dials := make([]string, 0, len(refs.Dials))
	for p := range refs.Dials {
		dials = append(dials, p)
	}
	sort.Strings(dials)
	for _, p := range dials {
		if err := s.checkDial(ctx, policy, refs.Dials[p]); err != nil {
			c.add(p, err.Error())
		}
	}
	if err := c.err(); err != nil {
		return Spec{}, err
	}
	return spec, nil
}

// checkDial applies the egress policy to a target at validation time; the dialer checks again
// on every connection.
func (s *Service) checkDial(ctx context.Context, policy egress.Policy, hostport string) error {
	host, portStr, err := net.SplitHostPort(hostport)
	if err != nil {
		return err
	}
	port, _ := strconv.Atoi(portStr)
	name := host
	var addrs []netip.Addr
	if a, err := netip.ParseAddr(host); err == nil {
		addrs, name = []netip.Addr{a}, ""
	} else {
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		addrs, err = s.o.Resolver.LookupNetIP(lctx, "ip", host)
		cancel()
		if err != nil {
			return fmt.Errorf("cannot resolve %s: %v", host, err)
		}
	}
	for _, a := range addrs {
		if err := policy.Check(name, a, port); err != nil {
			return err
		}
	}
	return nil
}

// Check validates a spec offline: its connectors' settings and its transforms. It returns
// what the spec refers to (secrets, network targets) for the online checks. Its error is
// SpecErrors, without positions: Load gives them.
func Check(spec Spec, reg *connector.Registry) (connector.Refs, error) {
	var c checker
	refs := c.check(spec, reg)
	return refs, c.err()
}

// Load parses a spec and checks it offline, as Parse then Check do, reporting every problem of
// both at once, each at its line and column in doc; name is the document's file name in
// errors ("" for none). Its error is SpecErrors.
func Load(name string, doc []byte, reg *connector.Registry) (Spec, connector.Refs, error) {
	var c checker
	spec, refs := c.spec(name, doc, reg)
	if err := c.err(); err != nil {
		return Spec{}, refs, err
	}
	return spec, refs, nil
}

// spec parses and checks doc offline, recording every problem.
func (c *checker) spec(name string, doc []byte, reg *connector.Registry) (Spec, connector.Refs) {
	spec, ok := c.parse(name, doc)
	if !ok {
		return spec, connector.Refs{}
	}
	return spec, c.check(spec, reg)
}

// check records the problems of a spec's connectors and transforms, and returns what they
// refer to. A connector's secrets are named even when its settings have other problems, so
// that one pass reports them all; its network targets only when its settings are right.
func (c *checker) check(spec Spec, reg *connector.Registry) connector.Refs {
	var refs connector.Refs
	for _, side := range []struct {
		path string
		kind connector.Kind
		m    map[string]any
	}{{"source", connector.SourceKind, spec.Source}, {"sink", connector.SinkKind, spec.Sink}} {
		typ, cfg := connectorConfig(side.m)
		if typ == "" {
			continue // missing: parse said so
		}
		p, err := reg.Lookup(typ, side.kind)
		if err != nil {
			c.add(side.path+".type", err.Error())
			continue
		}
		var r connector.Refs
		if side.kind == connector.SourceKind {
			_, r, err = p.Source(side.path, cfg, connector.Resources{})
		} else {
			_, r, err = p.Sink(side.path, cfg, connector.Resources{})
		}
		if err != nil {
			c.addErr(side.path, err)
			r.Dials = nil
		}
		refs.Merge(r)
	}
	// Without a secret resolver, transforms has no error of its own to return.
	_, r, _ := c.transforms(context.Background(), spec.Transforms, nil)
	refs.Merge(r)
	return refs
}

// Apply creates or updates a pipeline after validating it, and (re)starts its worker.
func (s *Service) Apply(ctx context.Context, app keyring.Scope, doc []byte) (Pipeline, bool, error) {
	spec, err := s.Validate(ctx, app, doc)
	if err != nil {
		return Pipeline{}, false, err
	}
	// Held from before the queues are made: a lifecycle deletion (StopScope) either waits for
	// this apply, and then deletes what it made, or comes first, and then it is refused here.
	s.life.Lock()
	defer s.life.Unlock()
	if !s.live(app) {
		return Pipeline{}, false, ErrNotFound
	}
	// The queues the pipeline writes to by itself exist before it runs.
	type queue struct{ name, what string }
	var queues []queue
	if *spec.Errors.DeadLetter {
		queues = append(queues, queue{spec.Name + "-dlq", "dead-letter queue"})
	}
	if spec.Errors.Notify != "" {
		queues = append(queues, queue{spec.Errors.Notify, "errors.notify"})
	}
	if typ, _ := connectorConfig(spec.Source); typ == webhook.Plugin.Name {
		queues = append(queues, queue{webhook.Queue(spec.Name), "webhook ingest queue"})
	}
	for _, q := range queues {
		_, err := s.o.Fabric.CreateQueue(ctx, appQueues{s.o.Fabric, app}.ref(q.name), fabric.QueueSpec{})
		if err != nil && !errors.Is(err, fabric.ErrExists) {
			return Pipeline{}, false, fmt.Errorf("%s: %w", q.what, err)
		}
	}
	now := time.Now().UTC()
	st := stored{Spec: spec.JSON(), Version: 1, Created: now, Updated: now}
	created := true
	if old, prev, err := s.load(ctx, app, spec.Name); err == nil {
		st.Version, st.Created, st.Paused = old.Version+1, old.Created, old.Paused
		created = false
		if !sameJSON(prev.Spec.Source, spec.Source) {
			// A checkpoint belongs to the source it was taken on: a new source starts from
			// its beginning. The old worker stops first, so it cannot save after.
			s.stopWorker(app, spec.Name)
			if err := s.state.Delete(ctx, app, spec.Name); err != nil && !errors.Is(err, keyring.ErrNotFound) {
				return Pipeline{}, false, err
			}
		}
	} else if !errors.Is(err, ErrNotFound) {
		return Pipeline{}, false, err
	}
	b, _ := json.Marshal(st)
	if _, err := s.defs.Put(ctx, app, spec.Name, b); err != nil {
		return Pipeline{}, false, err
	}
	p := s.view(app, spec.Name, st, spec)
	s.start(app, p)
	return s.withStatus(ctx, app, p), created, nil
}

func sameJSON(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}

func (s *Service) view(app keyring.Scope, name string, st stored, spec Spec) Pipeline {
	return Pipeline{Tenant: app.Tenant, Environment: app.Environment, Application: app.Application, Name: name,
		Version: st.Version, Paused: st.Paused, Spec: spec, Created: st.Created, Updated: st.Updated}
}

// Get returns a stored pipeline with its status and last run.
func (s *Service) Get(ctx context.Context, app keyring.Scope, name string) (Pipeline, error) {
	_, p, err := s.load(ctx, app, name)
	if err != nil {
		return Pipeline{}, err
	}
	return s.withStatus(ctx, app, p), nil
}

// Exists reports ErrNotFound for a pipeline that is not stored.
func (s *Service) Exists(ctx context.Context, app keyring.Scope, name string) error {
	_, _, err := s.load(ctx, app, name)
	return err
}

// load reads a stored pipeline: its record and the pipeline it describes, without the run
// status (which costs another read).
func (s *Service) load(ctx context.Context, app keyring.Scope, name string) (stored, Pipeline, error) {
	b, _, err := s.defs.Get(ctx, app, name)
	if errors.Is(err, keyring.ErrNotFound) {
		return stored{}, Pipeline{}, ErrNotFound
	}
	if err != nil {
		return stored{}, Pipeline{}, err
	}
	var st stored
	if err := json.Unmarshal(b, &st); err != nil {
		return stored{}, Pipeline{}, err
	}
	spec, err := Parse(st.Spec)
	if err != nil {
		return stored{}, Pipeline{}, fmt.Errorf("stored spec: %w", err)
	}
	return st, s.view(app, name, st, spec), nil
}

func (s *Service) withStatus(ctx context.Context, app keyring.Scope, p Pipeline) Pipeline {
	s.mu.Lock()
	if w, ok := s.workers[key(app, p.Name)]; ok {
		p.Running = w.isRunning()
	}
	s.mu.Unlock()
	if runs, err := s.Runs(ctx, app, p.Name); err == nil && len(runs) > 0 {
		p.LastRun = &runs[0]
	}
	return p
}

// List returns an application's pipelines, by name.
func (s *Service) List(ctx context.Context, app keyring.Scope) ([]Pipeline, error) {
	entries, err := s.defs.List(ctx, app)
	if err != nil {
		return nil, err
	}
	out := []Pipeline{}
	for _, e := range entries {
		p, err := s.Get(ctx, app, e.ID)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// Delete stops a pipeline and removes it, its checkpoint and its history. Its dead-letter
// queue stays until deleted as a queue: it may hold records someone still needs.
func (s *Service) Delete(ctx context.Context, app keyring.Scope, name string) error {
	s.life.Lock()
	defer s.life.Unlock()
	if err := s.Exists(ctx, app, name); err != nil {
		return err
	}
	s.stopWorker(app, name)
	for _, st := range []*keyring.Sealed{s.defs, s.state, s.runs} {
		if err := st.Delete(ctx, app, name); err != nil && !errors.Is(err, keyring.ErrNotFound) {
			return err
		}
	}
	s.mu.Lock()
	delete(s.logs, key(app, name))
	s.mu.Unlock()
	return nil
}

func (s *Service) live(app keyring.Scope) bool { return s.o.Live == nil || s.o.Live(app) }

// StopScope stops, and waits for, every worker of the applications in scope (a tenant, an
// environment or one application), draining each batch in flight as any stop does: once it
// returns, none of them reads or writes again. It is the lifecycle's step before deleting
// the scope: the scope is no longer live by then, so nothing starts them again. Their stored
// specs, checkpoints and runs go when the lifecycle purges the scope's records.
func (s *Service) StopScope(sc keyring.Scope) {
	// The workers are taken out under the lock; waiting for them to drain is done outside it,
	// so that other scopes' pipelines are not held up by a slow sink here. Nothing starts a
	// new worker of sc meanwhile: it is no longer live (its deletion is marked) and every
	// start checks that under the lock.
	s.life.Lock()
	s.mu.Lock()
	var stop []*worker
	for k, w := range s.workers {
		if inScope(sc, w.app) {
			stop = append(stop, w)
			delete(s.workers, k)
		}
	}
	s.mu.Unlock()
	for _, w := range stop {
		w.stop()
	}
	s.life.Unlock()
	for _, w := range stop {
		<-w.done
	}
	s.mu.Lock()
	for k := range s.logs {
		if strings.HasPrefix(k, sc.String()+"/") {
			delete(s.logs, k)
		}
	}
	s.mu.Unlock()
}

// StartScope starts a worker for every stored pipeline of the live applications in scope, as
// Open does at start: after a restore replaced the scope's specs and checkpoints.
func (s *Service) StartScope(ctx context.Context, sc keyring.Scope) error {
	if s.o.Apps == nil {
		return nil
	}
	s.life.Lock()
	defer s.life.Unlock()
	for _, app := range s.o.Apps() {
		if !inScope(sc, app) {
			continue
		}
		entries, err := s.defs.List(ctx, app)
		if err != nil {
			return err
		}
		for _, e := range entries {
			s.markInterrupted(ctx, app, e.ID)
			_, p, err := s.load(ctx, app, e.ID)
			if err != nil {
				s.o.Logger.Error("pipeline not started", "app", app.String(), "pipeline", e.ID, "error", err.Error())
				continue
			}
			s.start(app, p)
		}
	}
	return nil
}

// inScope reports whether app is sc or lies under it.
func inScope(sc, app keyring.Scope) bool {
	return sc.Tenant == app.Tenant && (sc.Environment == "" || sc.Environment == app.Environment &&
		(sc.Application == "" || sc.Application == app.Application))
}

// SetPaused pauses (stopping a run in progress after its batch) or resumes a pipeline.
func (s *Service) SetPaused(ctx context.Context, app keyring.Scope, name string, paused bool) (Pipeline, error) {
	s.life.Lock()
	defer s.life.Unlock()
	if !s.live(app) {
		return Pipeline{}, ErrNotFound
	}
	st, p, err := s.load(ctx, app, name)
	if err != nil {
		return Pipeline{}, err
	}
	st.Paused, p.Paused = paused, paused
	nb, _ := json.Marshal(st)
	if _, err := s.defs.Put(ctx, app, name, nb); err != nil {
		return Pipeline{}, err
	}
	s.start(app, p)
	return s.withStatus(ctx, app, p), nil
}

// RunNow starts a run at once, whatever the schedule.
func (s *Service) RunNow(ctx context.Context, app keyring.Scope, name string) (string, error) {
	_, p, err := s.load(ctx, app, name)
	if err != nil {
		return "", err
	}
	if p.Paused {
		return "", ErrPaused
	}
	s.mu.Lock()
	w, ok := s.workers[key(app, name)]
	s.mu.Unlock()
	if !ok {
		return "", ErrNotFound
	}
	id := newRunID()
	w.qmu.Lock()
	defer w.qmu.Unlock()
	select {
	case w.now <- id:
		w.queued = id
		return id, nil
	default:
		return "", ErrRunning
	}
}

// Runs returns a pipeline's recent runs, newest first; the run in progress on this node shows
// its totals as of its last batch.
func (s *Service) Runs(ctx context.Context, app keyring.Scope, name string) ([]Run, error) {
	runs, err := s.storedRuns(ctx, app, name)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	w := s.workers[key(app, name)]
	s.mu.Unlock()
	if w == nil {
		return runs, nil
	}
	w.qmu.Lock()
	live, queued := w.live.Load(), w.queued
	w.qmu.Unlock()
	if live != nil {
		if len(runs) > 0 && runs[0].ID == live.ID {
			runs[0] = *live
		} else {
			runs = append([]Run{*live}, runs...)
		}
	}
	if queued != "" && (len(runs) == 0 || runs[0].ID != queued) {
		runs = append([]Run{{ID: queued, Version: w.p.Version, Trigger: "manual", Status: "queued"}}, runs...)
	}
	return runs, nil
}

// storedRuns is a pipeline's run history as stored.
func (s *Service) storedRuns(ctx context.Context, app keyring.Scope, name string) ([]Run, error) {
	b, _, err := s.runs.Get(ctx, app, name)
	if errors.Is(err, keyring.ErrNotFound) {
		return []Run{}, nil
	}
	if err != nil {
		return nil, err
	}
	var runs []Run
	return runs, json.Unmarshal(b, &runs)
}

func (s *Service) saveRun(ctx context.Context, app keyring.Scope, name string, r Run) {
	runs, err := s.storedRuns(ctx, app, name)
	if err != nil {
		runs = nil
	}
	if len(runs) > 0 && runs[0].ID == r.ID {
		runs[0] = r
	} else {
		runs = append([]Run{r}, runs...)
	}
	if len(runs) > maxRuns {
		runs = runs[:maxRuns]
	}
	b, _ := json.Marshal(runs)
	if _, err := s.runs.Put(ctx, app, name, b); err != nil {
		s.o.Logger.Error("pipeline run not recorded", "pipeline", name, "app", app.String(), "error", err.Error())
	}
}

// markInterrupted closes the record of a run the previous process did not finish (it was
// killed): its batches past the last checkpoint are read again by the next run.
func (s *Service) markInterrupted(ctx context.Context, app keyring.Scope, name string) {
	runs, err := s.storedRuns(ctx, app, name)
	if err != nil || len(runs) == 0 || runs[0].Status != "running" {
		return
	}
	r := runs[0]
	r.Status, r.Error = "interrupted", "the process stopped during the run; the next run resumes from the last checkpoint"
	s.saveRun(ctx, app, name, r)
}

// Logs returns a pipeline's recent log lines (JSON), oldest first. They pass through the same
// redaction as every log.
func (s *Service) Logs(app keyring.Scope, name string) []json.RawMessage {
	s.mu.Lock()
	l := s.logs[key(app, name)]
	s.mu.Unlock()
	if l == nil {
		return []json.RawMessage{}
	}
	return l.lines()
}

func (s *Service) logRingFor(app keyring.Scope, name string) *logRing {
	s.mu.Lock()
	defer s.mu.Unlock()
	l, ok := s.logs[key(app, name)]
	if !ok {
		l = &logRing{max: 500}
		s.logs[key(app, name)] = l
	}
	return l
}

// resources are what one run of the pipeline may use: its application's secrets, queues and
// state, its tenant's egress policy and file root.
func (s *Service) resources(app keyring.Scope, name string, log *slog.Logger) connector.Resources {
	res := connector.Resources{
		Logger:   log,
		Dialer:   &egress.Dialer{Current: func() egress.Policy { return s.o.Egress(app.Tenant) }},
		Secrets:  appSecrets{s.o.Secrets, app},
		State:    pipelineState{s.state, app, name},
		Queues:   appQueues{s.o.Fabric, app},
		Pipeline: name,
	}
	if s.o.FilesRoot != "" {
		res.Files = filepath.Join(s.o.FilesRoot, app.Tenant)
	}
	return res
}

// Running lists the applications with a run in progress on this node (a continuous
// pipeline's run never ends): retention counts it as use.
func (s *Service) Running() []keyring.Scope {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []keyring.Scope
	for _, w := range s.workers {
		if w.isRunning() {
			out = append(out, w.app)
		}
	}
	return out
}
