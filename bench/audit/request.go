package main

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/penstock/penstock/internal/api"
	"github.com/penstock/penstock/internal/audit"
	"github.com/penstock/penstock/internal/authz"
	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/edge"
	"github.com/penstock/penstock/internal/identity"
	"github.com/penstock/penstock/internal/keyring/keyringtest"
	"github.com/penstock/penstock/internal/redact"
	"github.com/penstock/penstock/internal/secrets"
)

// noAudit stands in for the audit log to measure the same request unaudited. The server has
// no such switch: it is built here, for the comparison only.
type noAudit struct{}

func (noAudit) Append(_ context.Context, e audit.Event) (audit.Event, error) { return e, nil }
func (noAudit) Records(context.Context, uint64, func(audit.Record) bool) error {
	return nil
}
func (noAudit) VerifyAll(context.Context) (audit.Report, error) { return audit.Report{OK: true}, nil }
func (noAudit) PublicKey() ed25519.PublicKey                    { return nil }
func (noAudit) Export(context.Context, io.Writer, string, time.Time, time.Time) error {
	return nil
}

// requests measures an API change (storing a secret with an API key: authentication,
// authorization, sealing, a fsynced write) through the real handler, audited and not.
func requests(ctx context.Context, st *keyringtest.Stack, l *audit.Log, n int) {
	cfg := identity.DefaultConfig()
	cfg.Argon2 = identity.Argon2Params{Memory: 19 << 10, Time: 1, Threads: 1}
	ids, err := identity.Open(ctx, st.Platform, st.Keyring, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		log.Fatal(err)
	}
	defer ids.Close()
	store, err := secrets.New(ctx, st.Keyring)
	if err != nil {
		log.Fatal(err)
	}
	nonces, err := identity.OpenNonces(ctx, st.Platform)
	if err != nil {
		log.Fatal(err)
	}
	scope := authz.Scope{Tenant: "acme", Environment: "production", Application: "billing"}
	must(ids.CreateTenant(ctx, "acme"))
	must(ids.CreateApp(ctx, "acme", "production", "billing"))
	_, pw, err := ids.CreateUser(ctx, "alice", "", redact.Secret{})
	if err != nil {
		log.Fatal(err)
	}
	if err := ids.ChangePassword(ctx, identity.NewLockout(), "alice", pw, redact.NewSecret("Sturdy-Pass-Word-9"), ""); err != nil {
		log.Fatal(err)
	}
	must(ids.Grant(ctx, "user:alice", authz.Developer, scope))
	key, err := ids.CreateAPIKey(ctx, "user:alice", "", authz.Developer, scope, time.Time{}, nil)
	if err != nil {
		log.Fatal(err)
	}
	limits := config.Default().API.Limits
	limits.RequestRate, limits.RequestBurst = 1e9, 1e9

	measure := func(a any) (p50, p99 time.Duration, rate float64) {
		reg := prometheus.NewRegistry()
		o := api.Options{Version: "bench", Logger: slog.New(slog.DiscardHandler), Ready: st.Engine, Limits: limits,
			Edge: edge.NewMetrics(reg), Registry: reg, Keyring: st.Keyring, Master: st.Master, Secrets: store,
			Identity: ids, Lockout: identity.NewLockout(), Nonces: nonces}
		switch x := a.(type) {
		case *audit.Log:
			o.Audit = x
		case noAudit:
			o.Audit = x
		}
		h, _ := api.Handler(o)
		lat := make([]time.Duration, 0, n)
		start := time.Now()
		for i := range n {
			req := httptest.NewRequest(http.MethodPut, fmt.Sprintf("/v1/tenants/acme/environments/production/applications/billing/secrets/s%d", i%50),
				strings.NewReader(`{"value":"v"}`))
			req.RemoteAddr = "192.0.2.1:40000"
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Authorization", "Bearer "+key.Key.Reveal())
			rec := httptest.NewRecorder()
			t0 := time.Now()
			h.ServeHTTP(rec, req)
			lat = append(lat, time.Since(t0))
			if rec.Code != http.StatusOK {
				log.Fatalf("PUT secret: %d %s", rec.Code, rec.Body)
			}
		}
		rate = float64(n) / time.Since(start).Seconds()
		slices.Sort(lat)
		return lat[len(lat)/2].Round(time.Microsecond), lat[len(lat)*99/100].Round(time.Microsecond), rate
	}
	ap50, ap99, arate := measure(l)
	up50, up99, urate := measure(noAudit{})
	fmt.Printf("\nAPI change (PUT a secret with an API key, in-process handler, %d requests, one client)\n\n", n)
	fmt.Printf("%-12s %10s %10s %10s\n", "", "req/s", "p50", "p99")
	fmt.Printf("%-12s %10.0f %10s %10s\n", "audited", arate, ap50, ap99)
	fmt.Printf("%-12s %10.0f %10s %10s\n", "unaudited", urate, up50, up99)
	fmt.Printf("auditing adds %s at p50 and %s at p99 (two fsynced events per change)\n", ap50-up50, ap99-up99)
}

func must[T any](_ T, err error) {
	if err != nil {
		log.Fatal(err)
	}
}
