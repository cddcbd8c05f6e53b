// Package api owns Penstock's HTTPS API: routes, their OpenAPI description, the error body
// every failure uses, and the middleware between the edge and the handlers. It never opens a
// listener (the app does) and never stores anything itself (the domain packages do).
package api

import (
	"context"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/danielgtaylor/huma/v2"
	"github.com/danielgtaylor/huma/v2/adapters/humago"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/penstock/penstock/internal/activity"
	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/edge"
	"github.com/penstock/penstock/internal/fabric"
	"github.com/penstock/penstock/internal/identity"
	"github.com/penstock/penstock/internal/integrity"
	"github.com/penstock/penstock/internal/keyring"
	"github.com/penstock/penstock/internal/lifecycle"
	"github.com/penstock/penstock/internal/notify"
	"github.com/penstock/penstock/internal/pipeline"
	"github.com/penstock/penstock/internal/retention"
	"github.com/penstock/penstock/internal/secrets"
	"github.com/penstock/penstock/internal/signing"
)

// Readiness is what /readyz asks: can the engine be written to and read from now.
type Readiness interface {
	Ready(ctx context.Context) error
}

// Options are the API's dependencies.
type Options struct {
	Version string
	Logger  *slog.Logger
	Ready   Readiness
	// Damage lists damaged streams for readiness; nil when nothing checks the store.
	Damage   func() []integrity.Finding
	Limits   config.Limits
	Edge     *edge.Metrics
	Registry prometheus.Registerer

	Keyring  *keyring.Keyring
	Master   *keyring.Master
	Secrets  *secrets.Store
	Identity *identity.Store
	Lockout  *identity.Lockout
	Nonces   signing.NonceStore
	Audit    auditLog
	Fabric   *fabric.Service
	// Pipelines is nil where pipelines are not served.
	Pipelines *pipeline.Service
	// Lifecycle creates and deletes tenants, environments and applications; the tenancy routes
	// need it.
	Lifecycle *lifecycle.Service
	// Backups takes, lists, checks and restores backups; nil without backup.target.
	Backups Backups
	// Cluster answers the cluster routes; nil on a single node.
	Cluster Cluster
	// Notify holds channels, rules and alerts.
	Notify *notify.Service
	// Activity notes calls about an environment by its tenant's principals (retention).
	Activity *activity.Tracker
	// Retention answers the retention routes and warns in responses about a warned
	// environment.
	Retention *retention.Service
	// Directory checks directory users' passwords and finds their groups; nil when no
	// directory is configured (local users only).
	Directory identity.Authenticator
	// OIDC is the single sign-on relying party; nil without directory.oidc.issuer.
	OIDC OIDC
	// DirectoryConfig is the directory's configuration, for its status route.
	DirectoryConfig config.Directory
	// Recheck reads every directory user's groups again now (and audits what changed).
	Recheck func(ctx context.Context) ([]identity.DirectoryChange, error)
	// Now is the clock for signed requests; nil means time.Now.
	Now func() time.Time
}

// Handler builds the API's http.Handler: edge request limits, panic recovery, access log,
// metrics and authentication around the routes, each of which declares the action it needs. It
// also returns the routes, for the test that walks them.
func Handler(o Options) (http.Handler, []Route) {
	mux := http.NewServeMux()
	cfg := huma.DefaultConfig("Penstock API", o.Version)
	cfg.CreateHooks = nil // no $schema links in bodies
	cfg.DocsPath = ""     // huma's page loads scripts from a CDN; registerDocs serves ours at /docs
	cfg.Info.Description = "Penstock: secure multi-tenant message fabric and ETL pipelines."
	cfg.Components.SecuritySchemes = map[string]*huma.SecurityScheme{
		"session": {Type: "http", Scheme: "bearer", Description: "a session token from POST /v1/auth/login (or the penstock_session cookie)"},
		"apiKey":  {Type: "http", Scheme: "bearer", Description: "an API key, psk_<id>_<secret>"},
		"signature": {Type: "apiKey", In: "header", Name: "Authorization",
			Description: "PSK-HMAC-SHA256 Credential=<key id>, SignedHeaders=..., Signature=... (docs/access.md)"},
	}
	hapi := humago.New(mux, cfg)

	g := gate{o: o, reg: &routes{}, auditFailures: prometheus.NewCounter(prometheus.CounterOpts{
		Name: "penstock_audit_write_failures_total",
		Help: "Audit events the log could not take (a refused change, or an unrecorded outcome or denial): alert on any.",
	})}
	o.Registry.MustRegister(g.auditFailures)
	registerHealth(g, hapi, o)
	registerKeys(g, hapi, o)
	registerBackups(g, hapi, o)
	registerCluster(g, hapi, o)
	registerSecrets(g, hapi, o)
	registerAccount(g, hapi, o)
	registerTenancy(g, hapi, o)
	registerGrants(g, hapi, o)
	registerAudit(g, hapi, o)
	registerAuditExport(g, hapi, o)
	registerFabric(g, hapi, o)
	registerNotify(g, hapi, o)
	registerRetention(g, hapi, o)
	registerDirectory(g, hapi, o)
	registerOIDC(g, hapi, o)
	if o.Pipelines != nil {
		registerPipelines(g, hapi, o)
		registerWebhooks(g, hapi, o)
	}
	g.reg.check(hapi)
	registerDocs(g, hapi)

	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "penstock_http_requests_total",
		Help: "API requests served, by route pattern and status code.",
	}, []string{"route", "code"})
	latency := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "penstock_http_request_duration_seconds",
		Help:    "API request latency, by route pattern.",
		Buckets: prometheus.DefBuckets,
	}, []string{"route"})
	o.Registry.MustRegister(requests, latency)

	public := map[string]bool{}
	for _, r := range g.reg.list {
		if r.Action == Public {
			public[r.Method+" "+r.Path] = true
		}
	}
	var h http.Handler = strictJSONText(jsonMuxErrors(mux))
	h = authenticate(h, o, mux, public)
	h = withRequest(h)
	h = observe(h, o.Logger, requests, latency)
	h = recoverPanics(h, o.Logger)
	h = edge.Requests(o.Limits, o.Edge, func(w http.ResponseWriter, _ *http.Request, status int, code, msg string) {
		writeError(w, NewError(status, code, msg))
	})(h)
	return securityHeaders(h), g.reg.list
}

// jsonMuxErrors answers requests the mux has no route for (404) or no method for (405, with
// its Allow header) with the API's JSON error body instead of the mux's plain text.
func jsonMuxErrors(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h, pattern := mux.Handler(r)
		if holder, ok := r.Context().Value(routeKey{}).(*string); ok {
			*holder = pattern // for the metrics, which run outside the request copies made below them
		}
		if pattern != "" {
			mux.ServeHTTP(w, r)
			return
		}
		rec := &headerRecorder{header: http.Header{}}
		h.ServeHTTP(rec, r)
		if allow := rec.header.Get("Allow"); allow != "" {
			w.Header().Set("Allow", allow)
		}
		switch rec.status {
		case http.StatusMethodNotAllowed:
			writeError(w, NewError(rec.status, "method_not_allowed", "method "+r.Method+" is not allowed here"))
		case http.StatusNotFound, 0:
			writeError(w, NewError(http.StatusNotFound, "not_found", "no such route"))
		default: // the mux's redirects (cleaned paths)
			for k, v := range rec.header {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.status)
		}
	})
}

// headerRecorder keeps the status and headers the mux's fallback handlers write, and drops
// their plain-text bodies.
type headerRecorder struct {
	header http.Header
	status int
}

func (r *headerRecorder) Header() http.Header         { return r.header }
func (r *headerRecorder) Write(b []byte) (int, error) { return len(b), nil }
func (r *headerRecorder) WriteHeader(code int)        { r.status = code }

func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Strict-Transport-Security", "max-age=31536000")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Cache-Control", "no-store")
		next.ServeHTTP(w, r)
	})
}

// routeKey holds a *string the mux's route pattern is written to.
type routeKey struct{}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// observe logs one line per request and records its metrics. It logs the path, never the
// query string or headers, which can carry credentials.
func observe(next http.Handler, log *slog.Logger, requests *prometheus.CounterVec, latency *prometheus.HistogramVec) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		route := new(string)
		next.ServeHTTP(sw, r.WithContext(context.WithValue(r.Context(), routeKey{}, route)))
		if sw.status == 0 {
			sw.status = http.StatusOK
		}
		if *route == "" {
			*route = "unmatched"
		}
		d := time.Since(start)
		requests.WithLabelValues(*route, strconv.Itoa(sw.status)).Inc()
		latency.WithLabelValues(*route).Observe(d.Seconds())
		log.Info("request", "method", r.Method, "path", loggedPath(r.URL.Path), "status", sw.status,
			"duration_ms", float64(d.Microseconds())/1000, "remote", hostOfRemote(r.RemoteAddr), "proto", r.Proto)
	})
}

func recoverPanics(next http.Handler, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				log.Error("handler panic", "path", r.URL.Path, "panic", v, "stack", string(debug.Stack()))
				writeError(w, NewError(http.StatusInternalServerError, "internal", "internal error"))
			}
		}()
		next.ServeHTTP(w, r)
	})
}

func hostOfRemote(addr string) string {
	for i := len(addr) - 1; i >= 0; i-- {
		if addr[i] == ':' {
			return addr[:i]
		}
	}
	return addr
}
