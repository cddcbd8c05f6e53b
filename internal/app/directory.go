package app

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/penstock/penstock/internal/audit"
	"github.com/penstock/penstock/internal/authz"
	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/directory"
	"github.com/penstock/penstock/internal/identity"
)

// dirState is the directory's client and what the last re-check found.
type dirState struct {
	ldap     *directory.LDAP // nil without directory.ldap.url
	oidc     *directory.OIDC // nil without directory.oidc.issuer
	mu       sync.Mutex      // one re-check at a time on this node
	down     bool            // the last re-check failed (its failure is audited once)
	rechecks *prometheus.CounterVec
}

// directoryConfig fills the identity settings of the directory and opens its clients (nil
// without directory.ldap.url and directory.oidc.issuer).
func directoryConfig(dc config.Directory, icfg *identity.Config) (*dirState, error) {
	icfg.DirectoryValidFor = dc.RolesValidFor
	for i, m := range dc.Mappings {
		g, r, sc, err := config.ParseMapping(m)
		if err != nil {
			return nil, fmt.Errorf("directory.mappings[%d]: %w", i, err)
		}
		icfg.DirectoryMappings = append(icfg.DirectoryMappings, identity.DirectoryMapping{
			ID: fmt.Sprintf("config-%d", i+1), Group: g, Role: r, Scope: sc, Source: "config"})
	}
	if dc.LDAP.URL == "" && dc.OIDC.Issuer == "" {
		return nil, nil
	}
	d := &dirState{rechecks: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "penstock_directory_rechecks_total",
		Help: "Re-checks of every directory user's groups, by result (ok, error).",
	}, []string{"result"})}
	var err error
	if dc.LDAP.URL != "" {
		if d.ldap, err = directory.New(dc.LDAP); err != nil {
			return nil, err
		}
	}
	if dc.OIDC.Issuer != "" {
		if d.oidc, err = directory.NewOIDC(dc.OIDC); err != nil {
			return nil, err
		}
	}
	icfg.Directory, icfg.BreakGlass = true, dc.BreakGlassUsers
	return d, nil
}

// authenticator is the LDAP client as identity takes it (nil, not a nil pointer, without one).
func (d *dirState) authenticator() identity.Authenticator {
	if d == nil || d.ldap == nil {
		return nil
	}
	return d.ldap
}

func (d *dirState) refresher() identity.Refresher {
	if d == nil || d.oidc == nil {
		return nil
	}
	return d.oidc
}

// recheckDirectory reads every directory user's groups again and audits what changed, and the
// directory going down or coming back.
func (a *App) recheckDirectory(ctx context.Context) ([]identity.DirectoryChange, error) {
	d := a.dir
	d.mu.Lock()
	defer d.mu.Unlock()
	changes, err := a.ident.RecheckDirectory(ctx, d.authenticator(), d.refresher())
	for _, c := range changes {
		details := map[string]string{"before": bindingsText(c.Before), "after": bindingsText(c.After)}
		switch {
		case c.Gone && c.Error != "":
			details["gone"] = "the directory no longer has this user (or two entries answer to it): everything it holds is withheld and its sessions ended until the entry is back"
		case c.Gone:
			details["gone"] = "another entry has this user's name: the old user's sessions ended, API keys revoked, grants and record removed"
		}
		if c.Error != "" {
			details["error"] = c.Error
		}
		if _, aerr := a.audit.Append(ctx, audit.Event{Actor: "system:directory", Action: "directory.roles_changed", Result: audit.ResultOK,
			Target: "user:" + c.User, Details: details}); aerr != nil {
			a.log.Error("audit log: directory role change not recorded", "user", c.User, "error", aerr)
		}
	}
	result := "ok"
	if err != nil {
		result = "error"
	}
	d.rechecks.WithLabelValues(result).Inc()
	switch {
	case err != nil && !d.down && ctx.Err() == nil:
		d.down = true
		a.log.Error("directory re-check failed: directory users keep their roles for directory.roles_valid_for, then lose them", "error", err)
		if _, aerr := a.audit.Append(ctx, audit.Event{Actor: "system:directory", Action: "directory.unavailable", Result: audit.ResultError,
			Code: "directory.unavailable", Details: map[string]string{"error": err.Error()}}); aerr != nil {
			a.log.Error("audit log: directory failure not recorded", "error", aerr)
		}
	case err == nil && d.down:
		d.down = false
		a.log.Info("directory re-check succeeded again")
		if _, aerr := a.audit.Append(ctx, audit.Event{Actor: "system:directory", Action: "directory.available", Result: audit.ResultOK}); aerr != nil {
			a.log.Error("audit log: directory recovery not recorded", "error", aerr)
		}
	}
	return changes, err
}

// directoryLoop re-checks every directory.recheck_every, on the node holding the lease.
func (a *App) directoryLoop(ctx context.Context) {
	t := time.NewTicker(a.cfg.Directory.RecheckEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_, _ = a.recheckDirectory(ctx)
		}
	}
}

func bindingsText(bs []authz.Binding) string {
	if len(bs) == 0 {
		return "none"
	}
	var parts []string
	for _, b := range bs {
		parts = append(parts, string(b.Role)+"@"+b.Scope.String())
	}
	return strings.Join(parts, ",")
}
