// Package fabric owns the message fabric: each tenant-environment's queues (work-queue streams
// with a dead-letter queue each), exchanges that route to them, the HTTPS publish path's group
// commit, consumption and acknowledgement, and the decision that lets a tenant's own NATS, MQTT
// or WebSocket client into its account. It never authenticates HTTP callers (the api package
// does) and never decides roles (authz does); it trusts the scope it is given.
package fabric

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/penstock/penstock/internal/activity"
	"github.com/penstock/penstock/internal/audit"
	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/engine"
	"github.com/penstock/penstock/internal/identity"
	"github.com/penstock/penstock/internal/names"
)

// Errors the API maps to its codes.
var (
	ErrNotFound     = errors.New("not found")
	ErrExists       = errors.New("already exists")
	ErrInvalid      = errors.New("invalid")
	ErrQueueFull    = errors.New("queue is full")
	ErrRateLimited  = errors.New("publish rate quota exceeded")
	ErrStorageQuota = errors.New("storage quota exceeded")
	ErrPayloadLimit = errors.New("message larger than the payload limit")
	// ErrNotDurable: the engine took the message but the disk did not confirm it; a retry
	// with the same message id is stored once.
	ErrNotDurable = errors.New("not confirmed on disk")
)

// Missing is an ErrNotFound saying which kind of thing is missing, where a caller could not
// tell from what it asked: the queue a binding names, the binding itself, one dead letter of
// a queue that exists.
type Missing struct{ Kind string }

func (m *Missing) Error() string        { return m.Kind + ": " + ErrNotFound.Error() }
func (m *Missing) Is(target error) bool { return target == ErrNotFound }

// missing is err as a Missing of kind when it is an ErrNotFound.
func missing(err error, kind string) error {
	if errors.Is(err, ErrNotFound) {
		return &Missing{Kind: kind}
	}
	return err
}

// invalidf is an ErrInvalid naming what is wrong.
func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// Ref names something in an application: a queue or an exchange.
type Ref struct {
	Tenant, Environment, Application, Name string
}

func (r Ref) account() string { return AccountName(r.Tenant, r.Environment) }

func (r Ref) queueStream() string    { return "Q_" + r.Application + "_" + r.Name }
func (r Ref) deadStream() string     { return "D_" + r.Application + "_" + r.Name }
func (r Ref) exchangeStream() string { return "X_" + r.Application + "_" + r.Name }
func (r Ref) queueSubject() string   { return r.Application + ".q." + r.Name }
func (r Ref) deadSubject() string    { return r.Application + ".dlq." + r.Name }
func (r Ref) exchangeSubject() string {
	return r.Application + ".x." + r.Name
}

// consumer is the name of a queue's one consumer: its application's name, which lets a native
// client's permissions cover every queue of its application with one wildcard.
func (r Ref) consumer() string { return r.Application }

// routerConsumer is an exchange's consumer. Application names cannot contain '_', so no
// application's permissions reach it.
const routerConsumer = "_router"

// check validates the reference to a thing of the given kind; with kind "" only its
// application.
func (r Ref) check(kind string) error {
	parts := []struct{ k, v string }{{"tenant", r.Tenant}, {"environment", r.Environment}, {"application", r.Application}}
	if kind != "" {
		parts = append(parts, struct{ k, v string }{kind, r.Name})
	}
	for _, p := range parts {
		if err := names.Check(p.k, p.v); err != nil {
			return fmt.Errorf("%w: %s", ErrInvalid, err.Error())
		}
	}
	return nil
}

// AccountName is the engine account of a tenant-environment. Names cannot contain '_', so
// the pair is unambiguous.
func AccountName(tenant, env string) string { return tenant + "_" + env }

// Auditor is what the fabric needs of the audit log.
type Auditor interface {
	Append(ctx context.Context, e audit.Event) (audit.Event, error)
}

// Options are the fabric's dependencies.
type Options struct {
	Engine   *engine.Engine
	Identity *identity.Store
	Audit    Auditor
	Config   config.Fabric
	Logger   *slog.Logger
	Registry prometheus.Registerer
	// SweepInterval is how often native connections are checked against their keys
	// (default 1s).
	SweepInterval time.Duration
	// OnDeadLetter, if set, is told of every message moved to a dead-letter queue
	// (notifications); it must not block.
	OnDeadLetter func(r Ref, reason string)
	// Activity is told of every publish, consume and native login (retention); nil is none.
	Activity *activity.Tracker
}

// Service is the fabric.
type Service struct {
	o Options
	// groupNative: native clients' queue publishes take the group commit (ingest.go), on the
	// embedded engine with sync "always". With a sync interval each publish is one write
	// without a sync, and the hop through the fabric would only cost.
	groupNative bool
	// life orders creations of queues and exchanges (read) before and after the deletion of
	// an application's or environment's (write).
	life sync.RWMutex
	log  *slog.Logger
	cfg  config.Fabric
	m    *metrics

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu         sync.Mutex
	accounts   map[string]*tenantAccount
	committers map[string]*committer // by account/stream
	unswept    chan *tenantAccount   // taken up and not swept yet (sweepDeadLetters)
	conns      map[uint64]nativeConn
	denials    map[netip.Addr]time.Time // last audited refusal per source
	closed     bool
	starting   bool // Open is taking tenant-environments up (only Open's goroutine runs)
}

// tenantAccount is the fabric's state for one tenant-environment account.
type tenantAccount struct {
	// ctx ends when the fabric closes or the account is reset (ResetAccount): its routers,
	// dead-letter mover and bindings watch stop with it.
	ctx         context.Context
	cancel      context.CancelFunc
	tenant, env string
	acc         *engine.Account
	ingest      *nats.Subscription // native queue and exchange publishes (ingest.go)
	lookups     *rate.Limiter      // engine lookups of queues the ingest has not seen yet
	kvMu        sync.Mutex
	bindings    jetstream.KeyValue // nil until the tenant-environment has an exchange (bindingsOf)
	limiter     *rate.Limiter      // messages per second
	bytes       *rate.Limiter      // bytes per second
	routers     map[string]context.CancelFunc

	mu        sync.RWMutex
	exchanges map[string]Exchange           // app/name -> exchange with bindings
	consumers map[string]jetstream.Consumer // queue stream -> its consumer handle
	missing   map[string]time.Time          // queue streams the engine said are not there, until
	lastQuota time.Time
	// swept is when the dead-letter sweep last finished here (only sweepDeadLetters uses it).
	swept time.Time
	// used is when the fabric last handed it out (unix ns), for the idle close (idle.go);
	// stored under s.mu, which the close holds.
	used atomic.Int64
	// busy counts dead-letter moves and sweeps under way; advisories is the subscription
	// they come from. sweepFirst: taken up at start or in a cluster, it is not let go before
	// its first sweep (sweptOnce).
	busy        atomic.Int32
	advisories  *nats.Subscription
	hasBindings atomic.Bool // its exchanges bucket is open here (bindingsOf)
	sweepFirst  bool
	sweptOnce   atomic.Bool
	// consMu orders queue creation and a native login's making of queue consumers; nativeReady:
	// that was done since the take-up, and queues are made with their consumer from then on
	// (queueconsumer.go).
	// useMu: consumes through the fabric hold it shared while they use a consumer; the idle
	// close deletes consumers only when it gets it alone.
	consMu      sync.Mutex
	useMu       sync.RWMutex
	nativeReady atomic.Bool
}

// Open starts the fabric: it resumes routing and dead-lettering in every tenant account the
// engine holds and, on the embedded engine, starts deciding native clients.
func Open(ctx context.Context, o Options) (*Service, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Registry == nil {
		o.Registry = prometheus.NewRegistry()
	}
	if o.SweepInterval == 0 {
		o.SweepInterval = time.Second
	}
	s := &Service{o: o, log: o.Logger, cfg: o.Config, m: newMetrics(o.Registry),
		accounts: map[string]*tenantAccount{}, committers: map[string]*committer{}, unswept: make(chan *tenantAccount, 4096), conns: map[uint64]nativeConn{},
		denials: map[netip.Addr]time.Time{}, groupNative: o.Engine.Embedded() && o.Engine.Durability() == "always"}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	due := s.dueAtStart()
	s.starting = true
	for _, t := range o.Identity.Tenants() {
		for _, env := range t.Environments {
			name := AccountName(t.Name, env)
			if !o.Engine.HasAccount(name) || due != nil && !due[name] {
				continue
			}
			if _, err := s.account(ctx, t.Name, env); err != nil {
				s.Close()
				return nil, err
			}
		}
	}
	s.starting = false
	if !s.lazyConsumers() {
		s.makeMissingConsumers(ctx)
	}
	s.wg.Add(1)
	go s.sweepDeadLetters()
	if o.Engine.Embedded() && s.cfg.IdleClose > 0 {
		// Only where native logins pass through the fabric (authNative takes their
		// tenant-environment up again): on an external engine they do not.
		s.wg.Add(1)
		go s.closeIdle()
	}
	if o.Engine.Embedded() {
		o.Engine.SetNativeAuth(s.authNative)
		s.wg.Add(1)
		go s.sweep()
	}
	return s, nil
}

// Close stops routers, dead-lettering and committers; publishes in progress fail.
func (s *Service) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.mu.Unlock()
	s.o.Engine.SetNativeAuth(nil)
	s.cancel()
	s.wg.Wait()
}

// account returns the fabric state of a tenant-environment, creating its engine account
// (with the configured limits) and starting its dead-letter mover and routers on first use.
func (s *Service) account(ctx context.Context, tenant, env string) (*tenantAccount, error) {
	name := AccountName(tenant, env)
	s.mu.Lock()
	ta, ok := s.accounts[name]
	if ok {
		ta.used.Store(time.Now().UnixNano())
	}
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return nil, engine.ErrClosed
	}
	if ok {
		return ta, nil
	}
	if s.o.Engine.Clustered() {
		// A new account is registered on every node first, which waits for all of them:
		// done outside the lock, so that other tenant-environments are not held up.
		if _, err := s.o.Engine.Account(ctx, name); err != nil {
			return nil, err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, engine.ErrClosed
	}
	if ta, ok = s.accounts[name]; ok {
		ta.used.Store(time.Now().UnixNano())
		return ta, nil
	}
	if s.o.Engine.Embedded() || s.o.Engine.Operator() {
		// Only Penstock connects to a tenant-environment's account; native clients have
		// accounts of their own (see Grant), limited as they connect.
		err := s.o.Engine.SetLimits(name, engine.AccountLimits{Storage: s.cfg.MaxStorage})
		if err != nil {
			return nil, err
		}
	}
	acc, err := s.o.Engine.Account(ctx, name)
	if err != nil {
		return nil, err
	}
	tctx, cancel := context.WithCancel(s.ctx)
	ta = &tenantAccount{ctx: tctx, cancel: cancel, tenant: tenant, env: env, acc: acc, routers: map[string]context.CancelFunc{}, exchanges: map[string]Exchange{},
		consumers: map[string]jetstream.Consumer{}}
	ta.used.Store(time.Now().UnixNano())
	ta.sweepFirst = s.starting || s.o.Engine.Clustered()
	ta.lookups = rate.NewLimiter(ingestLookups, ingestLookups)
	if s.cfg.PublishRate > 0 {
		ta.limiter = rate.NewLimiter(rate.Limit(s.cfg.PublishRate), max(1, int(s.cfg.PublishRate)))
	}
	if s.cfg.PublishBytesRate > 0 {
		ta.bytes = rate.NewLimiter(rate.Limit(s.cfg.PublishBytesRate), max(s.cfg.MaxPayload, int(s.cfg.PublishBytesRate)))
	}
	if err := s.startDeadLetters(ta); err != nil {
		cancel()
		return nil, err
	}
	if _, err := s.bindingsOf(ctx, ta, false); err != nil {
		cancel()
		return nil, err
	}
	if err := s.startIngest(ta); err != nil {
		cancel()
		return nil, err
	}
	s.accounts[name] = ta
	select {
	case s.unswept <- ta: // swept first; a full queue leaves it to the next round, first in it
	default:
	}
	return ta, nil
}

// ResetAccount forgets what the fabric holds in memory of a tenant-environment (its routers,
// dead-letter mover, bindings, commit loops and consumer handles) and takes it up again from
// what the engine now stores: a restore replaced its streams under it. Publishes and consumes
// in progress in it fail.
func (s *Service) ResetAccount(ctx context.Context, tenant, env string) error {
	s.ForgetAccount(tenant, env)
	ta, err := s.account(ctx, tenant, env)
	if err != nil || !s.lazyConsumers() || s.openConns(tenant, env) == 0 {
		return err
	}
	// Native clients connected through it pull from the restored queues' consumers.
	return s.ensureConsumers(ctx, ta)
}

// ForgetAccount stops what the fabric runs for a tenant-environment (its routers, dead-letter
// mover, bindings watch and commit loops) and forgets its consumer handles, until the account
// is next used or reset.
func (s *Service) ForgetAccount(tenant, env string) {
	name := AccountName(tenant, env)
	s.mu.Lock()
	ta := s.accounts[name]
	drop := s.forgetLocked(name)
	s.mu.Unlock()
	s.stopForgotten(ta, drop)
}

// forgetLocked takes a tenant-environment and its commit loops out of the fabric's maps and
// returns the commit loops, for stopForgotten. s.mu is held.
func (s *Service) forgetLocked(name string) []*committer {
	delete(s.accounts, name)
	var drop []*committer
	for key, c := range s.committers {
		if strings.HasPrefix(key, name+"/") {
			drop = append(drop, c)
			delete(s.committers, key)
		}
	}
	return drop
}

// stopForgotten stops what ran for a forgotten tenant-environment (ta may be nil).
func (s *Service) stopForgotten(ta *tenantAccount, drop []*committer) {
	if ta != nil {
		ta.cancel()
		ta.stopIngest()
	}
	for _, c := range drop {
		c.cancel()
		<-c.stopped
	}
}

// streamName reports whether a stream name is one of an application's queues, dead-letter
// queues or exchanges, and which.
func parseStream(stream string) (kind, app, name string, ok bool) {
	kind, rest, ok := strings.Cut(stream, "_")
	if !ok || (kind != "Q" && kind != "D" && kind != "X") {
		return "", "", "", false
	}
	app, name, ok = strings.Cut(rest, "_")
	return kind, app, name, ok && names.Valid(app, "-") && names.Valid(name, "-")
}

// jsErr maps JetStream's errors to the fabric's.
func jsErr(err error, what string) error {
	var apiErr *jetstream.APIError
	switch {
	case err == nil:
		return nil
	case errors.Is(err, jetstream.ErrStreamNotFound), errors.Is(err, jetstream.ErrConsumerNotFound),
		errors.Is(err, jetstream.ErrMsgNotFound), errors.Is(err, jetstream.ErrNoStreamResponse):
		return fmt.Errorf("%s: %w", what, ErrNotFound)
	case errors.As(err, &apiErr):
		switch apiErr.ErrorCode {
		case 10077: // the store refused: a limit of the stream or of the account
			d := apiErr.Description
			switch {
			case strings.Contains(d, "maximum messages"), strings.Contains(d, "maximum bytes"):
				return fmt.Errorf("%s: %w", what, ErrQueueFull)
			case strings.Contains(d, "resource"):
				return fmt.Errorf("%s: %w", what, ErrStorageQuota)
			}
		case 10047, 10002: // insufficient storage resources; resource limits exceeded for account
			return fmt.Errorf("%s: %w", what, ErrStorageQuota)
		case 10054: // maximum payload exceeded
			return fmt.Errorf("%s: %w", what, ErrPayloadLimit)
		case 10058: // stream name already in use with a different configuration
			return fmt.Errorf("%s: %w", what, ErrExists)
		case 10059:
			return fmt.Errorf("%s: %w", what, ErrNotFound)
		}
	}
	return fmt.Errorf("%s: %w", what, err)
}

// StreamApplication names the application a tenant-environment's stream belongs to (its
// queues, dead-letter queues and exchanges), or reports false for the account's own streams.
func StreamApplication(stream string) (string, bool) {
	_, app, _, ok := parseStream(stream)
	return app, ok
}
