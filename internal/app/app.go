// Package app owns wiring: it builds every subsystem from the configuration, runs them and
// shuts them down in order. It never prints to stdout or exits the process; that is the CLI's.
package app

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"

	"github.com/penstock/penstock/internal/activity"
	"github.com/penstock/penstock/internal/api"
	"github.com/penstock/penstock/internal/audit"
	"github.com/penstock/penstock/internal/backup"
	"github.com/penstock/penstock/internal/certs"
	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/crashpoint"
	"github.com/penstock/penstock/internal/datadir"
	"github.com/penstock/penstock/internal/edge"
	"github.com/penstock/penstock/internal/engine"
	"github.com/penstock/penstock/internal/fabric"
	"github.com/penstock/penstock/internal/identity"
	"github.com/penstock/penstock/internal/integrity"
	"github.com/penstock/penstock/internal/keyring"
	"github.com/penstock/penstock/internal/lifecycle"
	"github.com/penstock/penstock/internal/notify"
	"github.com/penstock/penstock/internal/pipeline"
	"github.com/penstock/penstock/internal/redact"
	"github.com/penstock/penstock/internal/retention"
	"github.com/penstock/penstock/internal/secrets"
)

// App is one running Penstock process.
type App struct {
	cfg config.Config
	log *slog.Logger
	eng *engine.Engine
	// leases, in a cluster, decide which node runs each pipeline and the backup schedule.
	leases *pipeline.Leases
	// drain is closed by a drain request: Run stops as on SIGTERM.
	drain     chan struct{}
	drainOnce sync.Once
	certs     *certs.Manager

	lock      *datadir.Lock
	integ     *integrity.Checker
	master    *keyring.Master
	keys      *keyring.Keyring
	ident     *identity.Store
	fabric    *fabric.Service
	pipes     *pipeline.Service
	life      *lifecycle.Service
	audit     *audit.Log
	sinks     []audit.Sink
	bootstrap redact.Secret
	routes    []api.Route
	restored  *backup.RestoreReport // what this start restored
	// restoredAside and restoredDamage say where a damaged directory was set aside, and why.
	restoredAside, restoredDamage string
	restoreMarked                 bool     // the restore-in-progress marker is there until restoreDone
	backups                       *backups // nil without backup.target
	notify                        *notify.Service
	activity                      *activity.Tracker
	retention                     *retention.Service
	dir                           *dirState    // nil without a directory
	inflight                      atomic.Int64 // handlers in progress

	apiSrv     *http.Server
	apiLn      net.Listener
	metricsSrv *http.Server
	metricsLn  net.Listener
}

// New locks the data directory, binds the listeners, then opens the engine: a second
// process on the same directory, or a port already taken, fails before the store is touched.
// Nothing is served until Run.
func New(ctx context.Context, cfg config.Config, log *slog.Logger, version string, opts ...Option) (*App, error) {
	var o options
	for _, f := range opts {
		f(&o)
	}
	a, err := newApp(ctx, cfg, log, version, o)
	var rd *replaceDamaged
	if !errors.As(err, &rd) {
		return a, err
	}
	// backup.auto_restore allows damage to be replaced: the damaged directory is set aside,
	// not deleted, and the newest backup that verifies is restored in its place.
	aside, err := datadir.SetAside(cfg.DataDir, restoreKeeps...)
	if err != nil {
		return nil, err
	}
	log.Warn("damaged streams found and backup.auto_restore is set: the data directory was set aside and a backup is restored in its place",
		"damaged", rd.String(), "set_aside", aside)
	o.replaced, o.aside = rd.findings, aside
	if o.restoreFrom == "" {
		o.restoreFrom = cfg.Backup.Target
	}
	return newApp(ctx, cfg, log, version, o)
}

// restoreKeeps are what a data directory may hold when a restore begins in it: the master key
// the operator kept, and the TLS authority clients already trust.
var restoreKeeps = []string{keyring.MasterKeyFile, "tls/ca.key", "tls/ca.crt"}

func newApp(ctx context.Context, cfg config.Config, log *slog.Logger, version string, o options) (_ *App, err error) {
	a := &App{cfg: cfg, log: log, drain: make(chan struct{}), activity: activity.New(o.now)}
	defer func() {
		if err != nil {
			a.closeAll()
		}
	}()
	if a.lock, err = datadir.Acquire(cfg.DataDir); err != nil {
		return nil, err
	}
	// Decided once, before anything is written: keys, the CA and the first administrator are
	// made only in a first start; next to existing data a missing one is a refusal.
	if err := datadir.InterruptedRestore(cfg.DataDir); err != nil {
		return nil, err
	}
	first, err := datadir.FirstStart(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	if !first && (o.restoreFrom != "" || cfg.Backup.AutoRestore) {
		// A restore may begin in a directory that holds only the master key it needs.
		if first, err = datadir.FirstStartWith(cfg.DataDir, restoreKeeps...); err != nil {
			return nil, err
		}
	}
	if a.certs, err = certs.NewManager(cfg.DataDir, cfg.API.TLS, log.With("component", "tls")); err != nil {
		return nil, err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	em := edge.NewMetrics(reg)
	lim := cfg.API.Limits
	ln, err := net.Listen("tcp", cfg.API.Listen)
	if err != nil {
		return nil, fmt.Errorf("api.listen: %w", err)
	}
	a.apiLn = tls.NewListener(edge.NewListener(ln, lim, em), a.certs.TLSConfig())
	if cfg.Metrics.Listen != "" {
		if a.metricsLn, err = net.Listen("tcp", cfg.Metrics.Listen); err != nil {
			return nil, fmt.Errorf("metrics.listen: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
		if cfg.Metrics.Pprof {
			mux.HandleFunc("GET /debug/pprof/", pprof.Index)
			mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		}
		a.metricsSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: time.Minute}
	}

	if a.master, err = keyring.LoadMaster(ctx, cfg.DataDir, cfg.Keyring); err != nil {
		return nil, err
	}
	var integ *integrity.Checker
	eo := engine.Options{DataDir: cfg.DataDir, Config: cfg.Engine, Logger: log.With("component", "engine"),
		Native: engine.Native{
			NATSListen: cfg.Fabric.NATSListen, MQTTListen: cfg.Fabric.MQTTListen, WebSocketListen: cfg.Fabric.WebSocketListen,
			TLS: a.certs.TLSConfig(), MaxPayload: int32(max(cfg.Fabric.MaxPayload, 1<<20)),
		}}
	if cfg.Cluster.Enabled() {
		if eo.Cluster, err = a.clusterOptions(cfg); err != nil {
			return nil, err
		}
	}
	if cfg.Engine.Embedded() && !cfg.Cluster.Enabled() {
		// In a cluster a node's streams are replicas: what other nodes consumed or deleted
		// while it was down is not damage, and a damaged replica is repaired from the others.
		eo.StoreKey = a.master.StoreKey()
		// Read before the engine opens: a damaged record is a refusal that changed nothing.
		if integ, err = integrity.Open(cfg.DataDir, a.master, log.With("component", "integrity")); err != nil {
			return nil, err
		}
	}
	if cfg.Cluster.Enabled() {
		eo.StoreKey = a.master.StoreKey()
	}
	if a.eng, err = engine.Open(ctx, eo); err != nil {
		return nil, fmt.Errorf("engine: %w", err)
	}
	var damage []integrity.Finding
	if integ != nil {
		if err := a.master.StoreOpened(); err != nil {
			return nil, err
		}
		// Before anything writes: compare the store as it opened with what was recorded.
		integ.Attach(a.eng)
		if damage, err = integ.Check(ctx); err != nil {
			return nil, fmt.Errorf("integrity check: %w", err)
		}
		if len(damage) > 0 && cfg.Backup.AutoRestore && o.aside == "" {
			return nil, &replaceDamaged{findings: damage} // New sets the directory aside and restores
		}
		a.integ = integ // from here on, a stop records the streams
	}
	plat, err := a.eng.Account(ctx, engine.PlatformAccount)
	if err != nil {
		return nil, err
	}
	if a.keys, err = keyring.New(ctx, keyring.Options{Master: a.master, Platform: plat, Logger: log.With("component", "keyring")}); err != nil {
		return nil, err
	}
	if err := a.restoreAtStart(ctx, o, first); err != nil {
		return nil, err
	}
	store, err := secrets.New(ctx, a.keys)
	if err != nil {
		return nil, err
	}
	if err := a.keys.ResumeJobs(ctx); err != nil {
		return nil, err
	}
	icfg := identity.DefaultConfig()
	ic := cfg.Identity
	icfg.MFAForAll, icfg.SessionIdle, icfg.SessionMax = ic.MFAAllUsers, ic.SessionIdle, ic.SessionMax
	icfg.Policy.MinLength = ic.PasswordMinLength
	icfg.Argon2 = identity.Argon2Params{Memory: ic.Argon2MemoryKiB, Time: ic.Argon2Time, Threads: ic.Argon2Threads}
	if a.dir, err = directoryConfig(cfg.Directory, &icfg); err != nil {
		return nil, err
	}
	if a.ident, err = identity.Open(ctx, plat, a.keys, icfg, log.With("component", "identity")); err != nil {
		return nil, err
	}
	nonces, err := identity.OpenNonces(ctx, plat)
	if err != nil {
		return nil, err
	}
	var anchor *audit.FileAnchor
	if f := cfg.Audit.Anchor.File; f != "" {
		if anchor, err = audit.OpenFileAnchor(f, cfg.DataDir); err != nil {
			return nil, err
		}
	}
	if a.audit, err = audit.Open(ctx, audit.Options{Platform: plat, Keyring: a.keys, Retention: cfg.Audit.Retention, Logger: log.With("component", "audit"),
		CheckpointDelay: cfg.Audit.CheckpointDelay, Anchor: anchor, ForwardCheckpoints: cfg.Audit.Anchor.SIEM}); err != nil {
		return nil, err
	}
	if a.sinks, err = auditSinks(cfg.Audit); err != nil {
		return nil, err
	}
	flat := cfg.Flat(a.audit.Fingerprint)
	changed, err := a.audit.ConfigChanges(ctx, flat)
	if err != nil {
		return nil, err
	}
	details := map[string]string{"version": version, "engine": engineMode(a.eng), "sync": a.eng.Durability(),
		"group_sync": strconv.FormatBool(a.eng.GroupSync()), "master_key": a.master.ID(), "config_changed": strings.Join(changed, ",")}
	for _, k := range changed {
		details["config."+k] = flat[k]
	}
	if err := a.afterRestore(ctx); err != nil {
		return nil, err
	}
	if _, err := a.audit.Append(ctx, audit.Event{Actor: "system", Action: "platform.start", Result: audit.ResultOK, Details: details}); err != nil {
		return nil, err
	}
	if a.integ != nil {
		if err := a.auditDamage(ctx, damage); err != nil {
			return nil, err
		}
		a.integ.OnFindings(func(f []integrity.Finding) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := a.auditDamage(ctx, f); err != nil {
				a.log.Error("audit stream damage", "error", err)
			}
		})
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "penstock_streams_damaged",
			Help: "Open findings of damaged streams (fewer messages than recorded, lost or unreadable records); see penstock doctor.",
		}, func() float64 { return float64(len(a.integ.Findings())) }))
	}
	if err := a.openNotify(ctx, reg); err != nil {
		return nil, err
	}
	if a.fabric, err = fabric.Open(ctx, fabric.Options{Engine: a.eng, Identity: a.ident, Audit: a.audit, Config: cfg.Fabric,
		Logger: log.With("component", "fabric"), Registry: reg, OnDeadLetter: a.onDeadLetter, Activity: a.activity}); err != nil {
		return nil, err
	}
	filesRoot := cfg.Pipelines.FilesRoot
	if filesRoot == "" {
		filesRoot = filepath.Join(cfg.DataDir, "files")
	}
	ident := a.ident
	if cfg.Cluster.Enabled() {
		node, _ := NodeName(cfg) // known: the engine opened with it
		if a.leases, err = pipeline.OpenLeases(ctx, plat, node, log.With("component", "pipeline")); err != nil {
			return nil, err
		}
	}
	if a.pipes, err = pipeline.Open(ctx, pipeline.Options{
		Leases:  a.leases,
		Keyring: a.keys, Fabric: a.fabric, Registry: Connectors(), FilesRoot: filesRoot,
		Logger: log.With("component", "pipeline"), DrainTimeout: cfg.Pipelines.DrainTimeout,
		Egress: ident.EgressPolicy, OnRunEnd: a.onRunEnd, OnDeadLetters: a.onPipelineDeadLetters,
		Secrets: func(ctx context.Context, app keyring.Scope, name string) (redact.Secret, error) {
			v, _, err := store.Get(ctx, app, name)
			return v, err
		},
		Live: func(app keyring.Scope) bool {
			_, ok := ident.App(app.Tenant, app.Environment, app.Application)
			return ok
		},
		Apps: func() []keyring.Scope {
			var out []keyring.Scope
			for _, t := range ident.Tenants() {
				out = append(out, a.appsOf(t.Name)...)
			}
			return out
		},
	}); err != nil {
		return nil, err
	}
	reg.MustRegister(a.pipes.Collectors()...)
	a.life = lifecycle.New(lifecycle.Options{Identity: a.ident, Keyring: a.keys, Fabric: a.fabric, Pipelines: a.pipes,
		Engine: a.eng, Audit: a.audit, FilesRoot: filesRoot, OnDeleted: a.onDeleted, Logger: log.With("component", "lifecycle")})
	// Opened before the deletions resume: the purge of a deleted environment's records reaches
	// every sealed store opened by then, retention's included.
	if a.retention, err = retention.Open(ctx, retention.Options{Keyring: a.keys, Identity: a.ident, Lifecycle: a.life,
		Tracker: a.activity, Config: cfg.Retention, InUse: a.inUse, Notify: a.notify, Audit: a.audit,
		Logger: log.With("component", "retention"), Registry: reg}); err != nil {
		return nil, err
	}
	if a.restored != nil {
		// What the backup says of each environment's use is as old as the backup: counted from
		// now, with no warning standing.
		if err := a.retention.Restart(ctx, ""); err != nil {
			return nil, fmt.Errorf("restore: %w", err)
		}
	}
	if err := a.restoreDone(); err != nil {
		return nil, err
	}
	if err := a.life.Resume(ctx); err != nil { // before serving: an interrupted deletion finishes first
		return nil, err
	}
	if err := a.openBackups(ctx, reg); err != nil {
		return nil, err
	}
	if (first && a.restored == nil) || !cfg.Engine.Embedded() || cfg.Cluster.Enabled() { // an external engine holds its own platform, whatever the directory
		// Only the embedded engine's platform is this directory's own: an external one may have
		// served already, whatever the directory says.
		// A node joining a cluster starts with a new directory, but the platform may have
		// served: only a single node's first start may reset the administrator it made.
		if a.bootstrap, err = a.ident.Bootstrap(ctx, first && cfg.Engine.Embedded() && !cfg.Cluster.Enabled()); err != nil {
			return nil, err
		}
		crashpoint.Hit("first-start/bootstrapped")
	}

	lockout := identity.NewLockout()
	reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "penstock_auth_lockouts_total",
		Help: "Login lockouts started (per account or per source address) since the process started.",
	}, func() float64 { return float64(lockout.Lockouts()) }))
	apiOpts := api.Options{
		Version: version, Logger: log.With("component", "api"), Ready: a.eng, Damage: a.damage,
		Limits: lim, Edge: em, Registry: reg,
		Keyring: a.keys, Master: a.master, Secrets: store,
		Identity: a.ident, Lockout: lockout, Nonces: nonces, Audit: a.audit, Fabric: a.fabric,
		Pipelines: a.pipes, Lifecycle: a.life, Backups: a.backupsAPI(), Cluster: a.clusterAPI(), Notify: a.notify,
		Activity: a.activity, Retention: a.retention, DirectoryConfig: cfg.Directory,
	}
	if a.dir != nil {
		reg.MustRegister(a.dir.rechecks)
		apiOpts.Directory, apiOpts.Recheck = a.dir.authenticator(), a.recheckDirectory
		if a.dir.oidc != nil {
			apiOpts.OIDC = a.dir.oidc
		}
	}
	handler, routes := api.Handler(apiOpts)
	a.routes = routes
	a.apiSrv = &http.Server{
		Handler:           a.track(handler),
		TLSConfig:         a.certs.TLSConfig(),
		MaxHeaderBytes:    lim.MaxHeaderBytes,
		ReadHeaderTimeout: lim.ReadHeaderTimeout,
		ReadTimeout:       lim.ReadTimeout,
		WriteTimeout:      lim.WriteTimeout,
		IdleTimeout:       lim.IdleTimeout,
		ConnContext:       em.ConnContext,
		ConnState:         em.ConnState,
		ErrorLog:          slog.NewLogLogger(log.With("component", "http").Handler(), slog.LevelDebug),
	}
	return a, nil
}

// RestoreOnly ends a start that restored a backup (backup restore --to-data-dir): the
// directory is complete, as after a first start, and everything is closed without serving.
func (a *App) RestoreOnly() error {
	err := datadir.Complete(a.cfg.DataDir)
	a.closeAll()
	return err
}

// track counts handlers in progress, so shutdown can wait for them before closing the engine.
func (a *App) track(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.inflight.Add(1)
		defer a.inflight.Add(-1)
		next.ServeHTTP(w, r)
	})
}

// BootstrapPassword is the first platform administrator's one-time password when this start
// created it, else zero. The CLI prints it once; it is never logged or stored in the clear.
func (a *App) BootstrapPassword() redact.Secret { return a.bootstrap }

// APIAddr is the address the API listens on.
func (a *App) APIAddr() string { return a.apiLn.Addr().String() }

// MetricsAddr is the metrics listener's address, or "" when metrics are off.
func (a *App) MetricsAddr() string {
	if a.metricsLn == nil {
		return ""
	}
	return a.metricsLn.Addr().String()
}

// Reload re-reads what can change without a restart: the TLS certificate.
func (a *App) Reload() error { return a.certs.Reload() }

// Run serves until ctx is cancelled, then shuts down in two phases: stop accepting and let
// in-flight requests finish for up to api.shutdown_timeout; past that, close their
// connections and give their handlers a last moment to return. The engine closes after the
// handlers (a handler still stuck then gets engine.ErrClosed), and the data directory is
// unlocked last.
func (a *App) Run(ctx context.Context) error {
	// The first start is complete once its password has been shown (the CLI prints it before
	// Run): from here on no key file is ever made in this directory.
	if err := datadir.Complete(a.cfg.DataDir); err != nil {
		a.closeAll()
		return err
	}
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		select {
		case <-a.drain: // POST /v1/cluster/drain: the same stop as SIGTERM, then exit 0
			a.log.Info("draining: this node stops; its leaderships and pipelines pass to the others")
			stop()
		case <-ctx.Done():
		}
	}()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return serve(a.apiSrv, a.apiLn) })
	if a.metricsSrv != nil {
		g.Go(func() error { return serve(a.metricsSrv, a.metricsLn) })
	}
	a.log.Info("serving", "api", "https://"+a.APIAddr(), "metrics", a.MetricsAddr(),
		"engine", engineMode(a.eng), "sync", a.eng.Durability(), "group_sync", a.eng.GroupSync(), "nats", a.eng.ClientURL(),
		"mqtt", a.eng.NativeAddrs().MQTT, "websocket", a.eng.NativeAddrs().WebSocket,
		"data_dir", a.cfg.DataDir, "ca", a.certs.CAPath())
	// Opening the store churns memory in proportion to the accounts it holds (each enabled,
	// its streams recovered): handed back to the system now rather than kept as headroom
	// (bench/scale measures a node of 10,000 after a restart).
	go debug.FreeOSMemory()
	fctx, stopForwarding := context.WithCancel(context.Background())
	var forwarders sync.WaitGroup
	forwarders.Add(1)
	go func() { defer forwarders.Done(); a.audit.Checkpoints(fctx) }()
	if a.integ != nil {
		forwarders.Add(1)
		go func() { defer forwarders.Done(); a.integ.Run(fctx, integrityInterval) }()
	}
	if a.backups != nil {
		forwarders.Add(1)
		go func() { defer forwarders.Done(); a.backups.scheduleHeld(fctx) }()
	}
	forwarders.Add(4)
	go func() { defer forwarders.Done(); a.notify.Events(fctx) }()
	go func() { defer forwarders.Done(); a.held(fctx, "notify-delivery", a.notify.Ticks) }()
	go func() { defer forwarders.Done(); a.retention.Loop(fctx, activityFlush) }()
	go func() { defer forwarders.Done(); a.held(fctx, "retention", a.retention.Schedule) }()
	if a.dir != nil {
		forwarders.Add(1)
		go func() { defer forwarders.Done(); a.held(fctx, "directory", a.directoryLoop) }()
	}
	for _, sink := range a.sinks {
		forwarders.Add(1)
		go func() {
			defer forwarders.Done()
			if err := a.audit.Forward(fctx, sink); err != nil {
				a.log.Error("audit forwarding stopped", "sink", sink.Name(), "error", err)
			}
		}()
	}
	g.Go(func() error {
		<-gctx.Done()
		defer func() { stopForwarding(); forwarders.Wait() }()
		a.log.Info("shutting down", "drain_timeout", a.cfg.API.ShutdownTimeout.String())
		sctx, cancel := context.WithTimeout(context.Background(), a.cfg.API.ShutdownTimeout)
		defer cancel()
		var errs []error
		for _, s := range []*http.Server{a.apiSrv, a.metricsSrv} {
			if s == nil {
				continue
			}
			if err := s.Shutdown(sctx); err != nil {
				a.log.Warn("drain timed out; closing remaining connections", "error", err)
				errs = append(errs, s.Close())
			}
		}
		for deadline := time.Now().Add(handlerGrace); a.inflight.Load() > 0 && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
		}
		stopForwarding() // they resume where they stopped at the next start
		forwarders.Wait()
		for _, s := range a.sinks {
			_ = s.Close()
		}
		if n := a.inflight.Load(); n > 0 {
			a.log.Warn("closing the engine under running handlers", "handlers", n)
		}
		a.closeAll()
		a.log.Info("stopped")
		return errors.Join(errs...)
	})
	return g.Wait()
}

// integrityInterval is how often a running server records its streams, so a crash is compared
// with a recent record.
const integrityInterval = 30 * time.Second

// damage lists the open findings of damaged streams, for readiness.
func (a *App) damage() []integrity.Finding {
	if a.integ == nil {
		return nil
	}
	return a.integ.Findings()
}

// auditDamage records findings of damaged streams in the audit log, one event each.
func (a *App) auditDamage(ctx context.Context, found []integrity.Finding) error {
	for _, f := range found {
		if _, err := a.audit.Append(ctx, audit.Event{Actor: "system", Action: "platform.stream_damaged", Result: audit.ResultError,
			Details: map[string]string{"account": f.Account, "stream": f.Stream, "problem": f.Problem,
				"expected": fmt.Sprint(f.Expected), "found": fmt.Sprint(f.Found), "missing": f.Missing, "detail": f.Detail}}); err != nil {
			return err
		}
	}
	return nil
}

// handlerGrace is how long handlers whose connections were force-closed may take to return.
const handlerGrace = 5 * time.Second

func serve(s *http.Server, ln net.Listener) error {
	if err := s.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func engineMode(e *engine.Engine) string {
	switch {
	case e.Embedded():
		return "embedded"
	case e.Operator():
		return "operator"
	}
	return "external"
}

// closeAll releases everything New opened, in reverse order; Run calls it at the end and
// New when it fails part way.
func (a *App) closeAll() {
	if a.dir != nil && a.dir.ldap != nil {
		a.dir.ldap.Close()
	}
	if a.apiLn != nil {
		a.apiLn.Close()
	}
	if a.metricsLn != nil {
		a.metricsLn.Close()
	}
	if a.backups != nil {
		a.backups.close() // a job in progress is canceled; its end is audited
	}
	if a.notify != nil {
		a.notify.Close()
	}
	if a.audit != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := a.audit.Close(ctx); err != nil {
			a.log.Warn("final audit checkpoint", "error", err)
		}
		cancel()
	}
	if a.pipes != nil {
		a.pipes.Close() // drains batches in flight, which write through the fabric
	}
	if a.fabric != nil {
		a.fabric.Close()
	}
	if a.ident != nil {
		a.ident.Close()
	}
	if a.keys != nil {
		a.keys.Close() // background jobs first: they write through the engine
	}
	if a.integ != nil {
		// Native clients keep their connections after the fabric stops taking logins: close
		// them so their acknowledgements cannot change the counts after they are recorded.
		if err := a.eng.DisconnectNetwork(); err != nil {
			a.log.Warn("close native connections", "error", err)
		}
		// Every writer has stopped: the next start may expect exactly these counts.
		if err := a.integ.Mark(context.Background(), true); err != nil {
			a.log.Warn("integrity record at stop", "error", err)
		}
	}
	if a.eng != nil {
		a.eng.Close()
	}
	if a.master != nil {
		a.master.Close()
	}
	if err := a.lock.Release(); err != nil {
		a.log.Warn("release data directory lock", "error", err)
	}
}

// auditSinks builds the configured SIEM forwarders.
func auditSinks(c config.Audit) ([]audit.Sink, error) {
	var sinks []audit.Sink
	if c.WebhookURL != "" {
		tc, err := clientTLS(c.WebhookCAFile, "audit.webhook_ca_file")
		if err != nil {
			return nil, err
		}
		sinks = append(sinks, &audit.Webhook{URL: c.WebhookURL, Secret: c.WebhookSecret,
			Client: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}})
	}
	if c.SyslogAddr != "" {
		tc, err := clientTLS(c.SyslogCAFile, "audit.syslog_ca_file")
		if err != nil {
			return nil, err
		}
		if host, _, err := net.SplitHostPort(c.SyslogAddr); err == nil {
			tc.ServerName = host
		}
		sinks = append(sinks, &audit.Syslog{Addr: c.SyslogAddr, TLS: tc})
	}
	return sinks, nil
}

// clientTLS trusts caFile, or the system's roots when it is empty.
func clientTLS(caFile, field string) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile == "" {
		return tc, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", field, err)
	}
	tc.RootCAs = x509.NewCertPool()
	if !tc.RootCAs.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no PEM certificate in %s", field, caFile)
	}
	return tc, nil
}
