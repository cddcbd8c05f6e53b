package pipeline

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/penstock/penstock/internal/connector"
	"github.com/penstock/penstock/internal/keyring"
)

// worker runs one pipeline on its schedule. Exactly one run is in progress at a time.
type worker struct {
	s   *Service
	app keyring.Scope
	p   Pipeline
	// now takes a manual run's id.
	now  chan string
	quit chan struct{}
	// live is the run in progress as of its last batch, for Runs (nil between runs).
	live atomic.Pointer[Run]
	// queued is the id of the manual run sent on now that has not started yet, for Runs: a run
	// RunNow answered for is queued, running or stored, and one that is none of these will not
	// run (its worker was stopped first). qmu orders it with now and with live.
	qmu    sync.Mutex
	queued string
	// done is closed when the worker's goroutine has ended.
	done    chan struct{}
	once    sync.Once
	running atomic.Bool
}

func (w *worker) stop() { w.once.Do(func() { close(w.quit) }) }

// publish makes r what Runs shows of the run in progress.
func (w *worker) publish(r Run)   { w.live.Store(&r) }
func (w *worker) isRunning() bool { return w.running.Load() }

// start replaces the pipeline's worker with one for p.
func (s *Service) start(app keyring.Scope, p Pipeline) {
	s.stopWorker(app, p.Name)
	w := &worker{s: s, app: app, p: p, now: make(chan string, 1), quit: make(chan struct{}), done: make(chan struct{})}
	s.mu.Lock()
	s.workers[key(app, p.Name)] = w
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(w.done)
		w.loop()
	}()
}

func (s *Service) stopWorker(app keyring.Scope, name string) {
	s.mu.Lock()
	w, ok := s.workers[key(app, name)]
	delete(s.workers, key(app, name))
	s.mu.Unlock()
	if ok {
		w.stop()
		<-w.done
	}
}

func (w *worker) loop() {
	sched, err := ParseSchedule(w.p.Spec.Schedule)
	if err != nil {
		return
	}
	failures := 0
	// In a cluster the node that holds the pipeline's lease runs it; the others wait here.
	var lost <-chan struct{}
	release := func() {}
	defer func() { release() }()
	for {
		if w.s.o.Leases != nil && lost == nil {
			l, rel, ok := w.s.o.Leases.hold(w.quit, w.s.ctx.Done(), leaseKey(w.app.String(), w.p.Name))
			if !ok {
				return
			}
			lost, release = l, rel
			// A run the previous holder left unfinished is over.
			w.s.markInterrupted(w.s.ctx, w.app, w.p.Name)
		}
		trigger, id := "", ""
		var timer <-chan time.Time
		switch {
		case w.p.Paused:
		case sched.Continuous:
			if failures == 0 {
				trigger = "continuous"
				select { // a manual run asked for comes first
				case id = <-w.now:
					trigger = "manual"
				default:
				}
			} else {
				timer = time.After(backoff(w.p.Spec.Errors.Backoff, failures))
			}
		case sched.Every > 0:
			timer = time.After(sched.Every)
		case sched.Cron != nil:
			if next := sched.Cron.Next(time.Now()); !next.IsZero() {
				timer = time.After(time.Until(next))
			}
		}
		if trigger == "" {
			select {
			case <-lost:
				release()
				lost, release = nil, func() {}
				continue
			case <-w.quit:
				return
			case <-w.s.ctx.Done():
				return
			case id = <-w.now:
				trigger = "manual"
			case <-timer:
				trigger = "schedule"
				if sched.Continuous {
					trigger = "continuous"
				}
			}
		}
		select {
		case <-w.quit: // a stop that came with the trigger wins: no run starts after a stop
			return
		default:
		}
		r := w.runOnce(trigger, sched.Continuous && trigger == "continuous", id, lost)
		if r.Status == "failed" {
			failures++
		} else {
			failures = 0
		}
		select {
		case <-lost:
			release()
			lost, release = nil, func() {}
		default:
		}
		select {
		case <-w.quit:
			return
		default:
		}
	}
}

// newRunID names a run: its start time, then a random part.
func newRunID() string { return time.Now().UTC().Format("20060102T150405Z") + "-" + nuid.Next()[12:] }

// runOnce builds the connectors, runs, and records the run under id (a new one if empty).
func (w *worker) runOnce(trigger string, continuous bool, id string, lost <-chan struct{}) Run {
	w.running.Store(true)
	defer w.running.Store(false)
	s, app, spec := w.s, w.app, w.p.Spec
	if id == "" {
		id = newRunID()
	}
	run := Run{ID: id, Version: w.p.Version, Trigger: trigger, Status: "running", Start: time.Now().UTC()}
	if s.o.Leases != nil {
		run.Node = s.o.Leases.node
	}
	w.qmu.Lock()
	w.publish(run)
	if w.queued == id {
		w.queued = ""
	}
	w.qmu.Unlock()
	defer w.live.Store(nil)
	ring := s.logRingFor(app, spec.Name)
	log := slog.New(teeHandler{s.o.Logger.Handler(), ring.handler()}).With("pipeline", spec.Name, "app", app.String(), "run", run.ID)
	// ctx outlives a stop by the drain timeout, so the batch in flight can finish. A lost
	// lease ends it at once instead: another node may hold the lease already, and the batch
	// not committed here is done again there from the last checkpoint.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-w.quit:
		case <-lost:
			cancel()
			return
		case <-s.ctx.Done():
		case <-ctx.Done():
			return
		}
		select {
		case <-time.After(s.o.DrainTimeout):
			cancel()
		case <-ctx.Done():
		}
	}()
	stop := make(chan struct{})
	go func() {
		select {
		case <-w.quit:
		case <-lost:
		case <-s.ctx.Done():
		case <-ctx.Done():
		}
		close(stop)
	}()
	s.saveRun(ctx, app, spec.Name, run)
	log.Info("run started", "trigger", trigger, "version", w.p.Version)
	rep := &reporter{s: s, w: w, app: app, spec: spec, run: &run, log: log, saved: time.Now()}
	st, err := w.execute(ctx, stop, run.ID, log, continuous, rep.progress)
	run.RunStats, run.End = st, time.Now().UTC()
	run.Seconds = run.End.Sub(run.Start).Seconds()
	run.Status = "succeeded"
	select {
	case <-stop:
		run.Status = "stopped"
	default:
	}
	if err != nil {
		run.Status, run.Error = "failed", err.Error()
		log.Error("run failed", "error", err.Error(), "records_in", st.In, "records_out", st.Out)
	} else {
		log.Info("run ended", "status", run.Status, "records_in", st.In, "records_out", st.Out, "records_failed", st.Failed)
	}
	rep.end()
	s.saveRun(context.Background(), app, spec.Name, run)
	if s.o.OnRunEnd != nil {
		s.o.OnRunEnd(app, spec.Name, run)
	}
	return run
}

// reporter follows a run as it goes: it keeps the run's record and the metrics current, so a
// continuous run shows its totals, and tells the spec's notify queue about dead letters.
type reporter struct {
	s    *Service
	w    *worker
	app  keyring.Scope
	spec Spec
	run  *Run
	log  *slog.Logger
	// reported is what the metrics have counted; saved when the record was last stored.
	reported RunStats
	saved    time.Time
	lastDead string
	// notified is how many failed records notices have told of, the last at notifiedAt.
	notified   int64
	notifiedAt time.Time
}

// How often a running run's record is stored, and how often dead letters are notified after
// a run's first.
const (
	saveEvery   = 5 * time.Second
	notifyEvery = time.Minute
)

// Notice is what a pipeline's notify queue receives when records go to its dead-letter queue.
type Notice struct {
	Event    string `json:"event" doc:"pipeline.dead_lettered"`
	Pipeline string `json:"pipeline"`
	Run      string `json:"run"`
	// Records went to the dead-letter queue since the previous notice of the run.
	Records   int64     `json:"records"`
	RunFailed int64     `json:"run_records_failed" doc:"all of the run's dead letters so far"`
	Queue     string    `json:"dead_letter_queue"`
	LastError string    `json:"last_error"`
	Time      time.Time `json:"time"`
}

func (p *reporter) progress(st RunStats, lastDead string) {
	p.run.RunStats, p.lastDead = st, lastDead
	p.run.Seconds = time.Since(p.run.Start).Seconds()
	p.w.publish(*p.run)
	p.count()
	if time.Since(p.saved) >= saveEvery {
		p.s.saveRun(context.Background(), p.app, p.spec.Name, *p.run)
		p.saved = time.Now()
	}
	if p.run.Failed > p.notified && (p.notifiedAt.IsZero() || time.Since(p.notifiedAt) >= notifyEvery) {
		p.notify()
	}
}

// end counts the run's last totals and sends the notice still owed.
func (p *reporter) end() {
	p.count()
	p.s.m.ended(*p.run)
	if p.run.Failed > p.notified {
		p.notify()
	}
}

func (p *reporter) count() {
	st := p.run.RunStats
	if f := p.s.o.OnDeadLetters; f != nil && st.Failed > p.reported.Failed {
		f(p.app, p.spec.Name, st.Failed-p.reported.Failed)
	}
	p.s.m.add(st, p.reported)
	p.reported = st
}

// notify publishes a notice; one that fails is logged and owed to the next progress.
func (p *reporter) notify() {
	if p.spec.Errors.Notify == "" {
		return
	}
	n := Notice{Event: "pipeline.dead_lettered", Pipeline: p.spec.Name, Run: p.run.ID, Records: p.run.Failed - p.notified,
		RunFailed: p.run.Failed, Queue: p.spec.Name + "-dlq", LastError: p.lastDead, Time: time.Now().UTC()}
	b, _ := json.Marshal(n)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	id := fmt.Sprintf("%s/%d", p.run.ID, p.run.Failed) // a retry of the same notice is stored once
	if err := (appQueues{p.s.o.Fabric, p.app}).Publish(ctx, p.spec.Errors.Notify, [][]byte{b}, []string{id}); err != nil {
		p.log.Warn("dead-letter notice not sent; retried with the next", "queue", p.spec.Errors.Notify, "error", err.Error())
		return
	}
	p.notified, p.notifiedAt = p.run.Failed, time.Now()
}

func (w *worker) execute(ctx context.Context, stop <-chan struct{}, runID string, log *slog.Logger, continuous bool, progress func(RunStats, string)) (RunStats, error) {
	s, app, spec := w.s, w.app, w.p.Spec
	res := s.resources(app, spec.Name, log)
	srcType, srcCfg := connectorConfig(spec.Source)
	sinkType, sinkCfg := connectorConfig(spec.Sink)
	sp, err := s.o.Registry.Lookup(srcType, connector.SourceKind)
	if err != nil {
		return RunStats{}, err
	}
	kp, err := s.o.Registry.Lookup(sinkType, connector.SinkKind)
	if err != nil {
		return RunStats{}, err
	}
	src, _, err := sp.Source("source", srcCfg, res)
	if err != nil {
		return RunStats{}, err
	}
	sink, _, err := kp.Sink("sink", sinkCfg, res)
	if err != nil {
		return RunStats{}, err
	}
	transforms, _, err := compileTransforms(ctx, spec.Transforms, func(ctx context.Context, name string) ([]byte, error) {
		v, err := res.Secrets.Secret(ctx, name)
		return []byte(v.Reveal()), err
	})
	if err != nil {
		return RunStats{}, err
	}
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := src.Connect(cctx); err != nil {
		return RunStats{}, fmt.Errorf("source: %w", err)
	}
	defer src.Close(context.Background())
	if err := sink.Connect(cctx); err != nil {
		return RunStats{}, fmt.Errorf("sink: %w", err)
	}
	defer sink.Close(context.Background())
	r := &runner{spec: spec, runID: runID, src: src, sink: sink, transforms: transforms, log: log, progress: progress}
	if *spec.Errors.DeadLetter {
		dlq := spec.Name + "-dlq"
		r.dead = func(ctx context.Context, recs []DeadRecord) error {
			msgs := make([][]byte, len(recs))
			for i, d := range recs {
				msgs[i], _ = json.Marshal(d)
			}
			return res.Queues.Publish(ctx, dlq, msgs, nil)
		}
	}
	return r.run(ctx, stop, continuous)
}

// logRing keeps a pipeline's last log lines.
type logRing struct {
	mu    sync.Mutex
	max   int
	buf   []json.RawMessage
	start int
}

func (l *logRing) add(line []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	line = bytes.TrimSpace(line)
	if len(l.buf) < l.max {
		l.buf = append(l.buf, line)
		return
	}
	l.buf[l.start] = line
	l.start = (l.start + 1) % l.max
}

func (l *logRing) lines() []json.RawMessage {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]json.RawMessage, 0, len(l.buf))
	out = append(out, l.buf[l.start:]...)
	return append(out, l.buf[:l.start]...)
}

type ringWriter struct{ l *logRing }

func (r ringWriter) Write(p []byte) (int, error) {
	r.l.add(append([]byte(nil), p...))
	return len(p), nil
}

func (l *logRing) handler() slog.Handler {
	return slog.NewJSONHandler(ringWriter{l}, &slog.HandlerOptions{Level: slog.LevelInfo})
}

// teeHandler sends each record to two handlers.
type teeHandler struct{ a, b slog.Handler }

func (t teeHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return t.a.Enabled(ctx, l) || t.b.Enabled(ctx, l)
}

func (t teeHandler) Handle(ctx context.Context, r slog.Record) error {
	if t.a.Enabled(ctx, r.Level) {
		_ = t.a.Handle(ctx, r.Clone())
	}
	if t.b.Enabled(ctx, r.Level) {
		return t.b.Handle(ctx, r)
	}
	return nil
}

func (t teeHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return teeHandler{t.a.WithAttrs(as), t.b.WithAttrs(as)}
}
func (t teeHandler) WithGroup(n string) slog.Handler {
	return teeHandler{t.a.WithGroup(n), t.b.WithGroup(n)}
}

type metrics struct {
	runs    *prometheus.CounterVec
	records *prometheus.CounterVec
	seconds prometheus.Histogram
}

func newMetrics() *metrics {
	return &metrics{
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "penstock_pipeline_runs_total",
			Help: "Pipeline runs ended, by status."}, []string{"status"}),
		records: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "penstock_pipeline_records_total",
			Help: "Records handled by pipeline runs: in, out, filtered, failed (to the dead-letter queue)."}, []string{"kind"}),
		seconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "penstock_pipeline_run_seconds",
			Help: "Pipeline run duration.", Buckets: prometheus.ExponentialBuckets(0.01, 4, 10)}),
	}
}

// add counts the records of st that were not in before: runs report as they go.
func (m *metrics) add(st, before RunStats) {
	m.records.WithLabelValues("in").Add(float64(st.In - before.In))
	m.records.WithLabelValues("out").Add(float64(st.Out - before.Out))
	m.records.WithLabelValues("filtered").Add(float64(st.Filtered - before.Filtered))
	m.records.WithLabelValues("failed").Add(float64(st.Failed - before.Failed))
}

func (m *metrics) ended(r Run) {
	m.runs.WithLabelValues(r.Status).Inc()
	m.seconds.Observe(r.Seconds)
}

// Collectors are the service's Prometheus metrics, for the application to register.
func (s *Service) Collectors() []prometheus.Collector {
	return []prometheus.Collector{s.m.runs, s.m.records, s.m.seconds}
}
