package fabric

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/penstock/penstock/internal/activity"
	"github.com/penstock/penstock/internal/audit"
	"github.com/penstock/penstock/internal/authz"
	"github.com/penstock/penstock/internal/engine"
	"github.com/penstock/penstock/internal/identity"
	"github.com/penstock/penstock/internal/names"
)

// nativeConn is a tenant's native client as it was let in: what it must still hold to stay.
type nativeConn struct {
	keyID           string
	tenant, env     string
	source          netip.Addr
	grant           string // the permissions it was given, to notice a change of role
	inMsgs, inBytes int64
	seen            bool
	misses          int // sweeps in a row that did not list it
	added           time.Time
}

// APIPrefix replaces "$JS.API" for native clients: their account has its own JetStream (for
// MQTT sessions), and their queue consumers are reached under this prefix
// (jetstream.NewWithAPIPrefix(nc, fabric.APIPrefix)).
const APIPrefix = "penstock.js"

// Grant computes what a key may do in a tenant-environment: for each application in it where
// its role allows publishing, the application's queue and exchange subjects; where it allows
// consuming, the application's queue consumers (pull and acknowledge) and live copies of its
// queue traffic under "feed.". The client gets an account of its own, named after the key and
// exactly this grant, whose imports are the grant. It returns false when the key may do
// neither anywhere.
func Grant(p authz.Principal, keyID, tenant, env string, apps []string) (engine.NativeGrant, bool) {
	g := engine.NativeGrant{DataAccount: AccountName(tenant, env), Username: "apikey:" + keyID}
	for _, app := range apps {
		sc := authz.Scope{Tenant: tenant, Environment: env, Application: app}
		if authz.Decide(p, authz.QueuePublish, sc).Allow {
			for _, subj := range []string{app + ".q.*", app + ".x.>"} {
				g.Imports = append(g.Imports, engine.NativeImport{Local: subj, Remote: subj})
				g.Publish = append(g.Publish, subj)
			}
		}
		if authz.Decide(p, authz.QueueConsume, sc).Allow {
			g.Imports = append(g.Imports,
				engine.NativeImport{Local: APIPrefix + ".CONSUMER.MSG.NEXT.*." + app, Remote: "$JS.API.CONSUMER.MSG.NEXT.*." + app, Streamed: true},
				engine.NativeImport{Local: APIPrefix + ".CONSUMER.INFO.*." + app, Remote: "$JS.API.CONSUMER.INFO.*." + app},
				engine.NativeImport{Local: "$JS.ACK.*." + app + ".>", Remote: "$JS.ACK.*." + app + ".>"})
			g.Publish = append(g.Publish,
				APIPrefix+".CONSUMER.MSG.NEXT.*."+app,
				APIPrefix+".CONSUMER.INFO.*."+app,
				"$JS.ACK.*."+app+".*.*.*.*.*") // the 9-token acknowledgement form only
			g.Feeds = append(g.Feeds, app+".q.*")
			g.Subscribe = append(g.Subscribe, engine.FeedPrefix+app+".q.*")
		}
	}
	if len(g.Imports) == 0 {
		return engine.NativeGrant{}, false
	}
	g.Subscribe = append(g.Subscribe, "_INBOX.>")
	// One account per key and tenant-environment: a grant that grows adds imports to it; one
	// that shrinks leaves imports the client's permissions no longer reach. "__" never occurs
	// in a tenant-environment account name.
	h := sha256.Sum256(fmt.Appendf(nil, "%s\x00%s\x00%s", tenant, env, keyID))
	g.Account = "n__" + hex.EncodeToString(h[:16])
	return g, true
}

// authNative lets a native client in: user "<tenant>/<environment>", password (or token) a
// Penstock API key. The key must be valid from the client's address, the tenant's allow-list
// must admit it, and its role must allow publishing or consuming somewhere in the environment.
func (s *Service) authNative(c engine.NativeClient) (engine.NativeGrant, bool) {
	key := c.Password
	if key == "" {
		key = c.Token
	}
	src := addrOf(c.Remote)
	tenant, env, _ := strings.Cut(c.User, "/")
	refuse := func(reason string) (engine.NativeGrant, bool) {
		s.m.nativeAuth.WithLabelValues(reason).Inc()
		if s.firstDenialThisMinute(src) {
			s.auditNative(tenant, env, "", src, "denied", reason)
		}
		return engine.NativeGrant{}, false
	}
	if !names.Valid(tenant, "-") || !names.Valid(env, "-") {
		// The user names the account: checked at this door like any name.
		tenant, env = "", ""
		return refuse("bad_user")
	}
	k, err := s.o.Identity.VerifyAPIKey(key, src)
	if err != nil {
		return refuse("bad_key")
	}
	t, ok := s.o.Identity.Tenant(tenant)
	if !ok || !slices.Contains(t.Environments, env) {
		return refuse("unknown_environment")
	}
	if !identity.AllowedFrom(t.AllowList, src) {
		return refuse("ip_not_allowed")
	}
	var apps []string
	for _, a := range s.o.Identity.Apps(tenant, env) {
		apps = append(apps, a.Name)
	}
	g, ok := Grant(identity.KeyPrincipal(k), k.ID, tenant, env, apps)
	if !ok {
		return refuse("no_queue_role")
	}
	// The account must exist with its limits before the client lands in it.
	ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
	defer cancel()
	ta, err := s.account(ctx, tenant, env)
	if err != nil {
		s.log.Error("native client: account unavailable", "tenant", tenant, "environment", env, "error", err)
		return refuse("unavailable")
	}
	// It pulls from the queues' consumers directly: where they come and go with use, they are
	// made now (elsewhere every queue has its own from its creation). A failure is not a
	// refusal (clients take one for a revoked key and stop trying): the idle loop tries again
	// while the client is connected (readyNative).
	if s.lazyConsumers() {
		if err := s.ensureConsumers(ctx, ta); err != nil {
			s.log.Error("native client: queue consumers unavailable", "tenant", tenant, "environment", env, "error", err)
		}
	}
	// Count and take the slot at once, so simultaneous logins cannot pass the limit together.
	s.mu.Lock()
	if s.cfg.MaxConnections > 0 && s.openConnsLocked(tenant, env) >= s.cfg.MaxConnections {
		s.mu.Unlock()
		s.m.quotaExceeded.WithLabelValues("max_connections", "native").Inc()
		return refuse("max_connections")
	}
	s.conns[c.ID] = nativeConn{keyID: k.ID, tenant: tenant, env: env, source: src, grant: grantKey(g), added: time.Now()}
	s.mu.Unlock()
	s.m.nativeAuth.WithLabelValues("ok").Inc()
	s.o.Activity.Touch(tenant, env, activity.Native)
	s.auditNative(tenant, env, k.ID, src, "ok", "")
	if s.groupNative {
		g = throughIngest(g)
	}
	g.Expires = k.Expires
	g.Limits = engine.AccountLimits{Connections: s.cfg.MaxConnections, Subscriptions: s.cfg.MaxSubscriptions,
		Payload: s.cfg.MaxPayload, Storage: clientStorage}
	return g, true
}

// clientStorage bounds a native client account's own JetStream storage (MQTT sessions and
// retained messages; queue data is in the tenant-environment's account). The engine reserves
// it when the account is created, so it is kept small.
const clientStorage = 8 << 20

// openConns counts the native connections of a tenant-environment.
func (s *Service) openConns(tenant, env string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.openConnsLocked(tenant, env)
}

func (s *Service) openConnsLocked(tenant, env string) int {
	n := 0
	for _, c := range s.conns {
		if c.tenant == tenant && c.env == env {
			n++
		}
	}
	return n
}

// firstDenialThisMinute limits audit events for refused native connections to one a minute per
// source address, so that unauthenticated clients cannot flood the audit log; the metric
// counts every refusal.
func (s *Service) firstDenialThisMinute(src netip.Addr) bool {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.denials) > 10000 {
		s.denials = map[netip.Addr]time.Time{}
	}
	if last, ok := s.denials[src]; ok && now.Sub(last) < time.Minute {
		return false
	}
	s.denials[src] = now
	return true
}

func addrOf(a net.Addr) netip.Addr {
	if a == nil {
		return netip.Addr{}
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

func (s *Service) auditNative(tenant, env, keyID string, src netip.Addr, result, reason string) {
	if s.o.Audit == nil {
		return
	}
	actor := "anonymous"
	if keyID != "" {
		actor = "apikey:" + keyID
	}
	e := audit.Event{Actor: actor, Action: "fabric.connect", Target: "native", Result: result, Source: src.String()}
	if result == "ok" {
		e.Tenant, e.Environment = tenant, env
	}
	if reason != "" {
		e.Details = map[string]string{"reason": reason}
	}
	ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
	defer cancel()
	if _, err := s.o.Audit.Append(ctx, e); err != nil {
		s.log.Error("audit native connection", "error", err)
	}
}

// sweep closes, every SweepInterval, the native connections whose key was revoked or expired,
// whose owner lost the role, or whose tenant-environment went over its publish-rate quota.
func (s *Service) sweep() { s.every(s.o.SweepInterval, s.sweepOnce) }

// every runs fn every d until the fabric closes; the caller added it to s.wg.
func (s *Service) every(d time.Duration, fn func()) {
	defer s.wg.Done()
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		fn()
	}
}

func (s *Service) sweepOnce() {
	listed := time.Now()
	open, err := s.o.Engine.Connections()
	if err != nil {
		return
	}
	type usage struct{ msgs, bytes int64 }
	perAccount := map[string]usage{}
	active := map[string][]uint64{}
	var closeIDs []uint64
	s.mu.Lock()
	for id := range s.conns {
		c := s.conns[id]
		c.seen = false
		s.conns[id] = c
	}
	for _, cs := range open {
		c, ok := s.conns[cs.ID]
		if !ok {
			continue
		}
		dm, db := cs.InMsgs-c.inMsgs, cs.InBytes-c.inBytes
		c.inMsgs, c.inBytes, c.seen = cs.InMsgs, cs.InBytes, true
		s.conns[cs.ID] = c
		acct := AccountName(c.tenant, c.env)
		u := perAccount[acct]
		perAccount[acct] = usage{u.msgs + dm, u.bytes + db}
		if dm > 0 {
			active[acct] = append(active[acct], cs.ID)
		}
		if !s.stillAllowed(c) {
			closeIDs = append(closeIDs, cs.ID)
		}
	}
	for id, c := range s.conns {
		// Not in the list: closed, unless it was let in after the list was taken, or is
		// still being registered (the engine lists a client only some time after letting it
		// in, longer on a busy machine): forgotten when two sweeps in a row miss it.
		switch {
		case c.seen:
			c.misses = 0
			s.conns[id] = c
		case c.added.Before(listed):
			if c.misses++; c.misses >= 2 {
				delete(s.conns, id)
			} else {
				s.conns[id] = c
			}
		}
	}
	s.mu.Unlock()

	for _, id := range closeIDs {
		if s.o.Engine.Disconnect(id) == nil {
			s.m.revoked.Inc()
		}
	}
	secs := s.o.SweepInterval.Seconds()
	for acct, u := range perAccount {
		over := ""
		switch {
		case s.cfg.PublishRate > 0 && float64(u.msgs) > s.cfg.PublishRate*secs:
			over = "publish_rate"
		case s.cfg.PublishBytesRate > 0 && float64(u.bytes) > s.cfg.PublishBytesRate*secs:
			over = "publish_bytes_rate"
		}
		if over == "" {
			continue
		}
		tenant, env, _ := strings.Cut(acct, "_")
		s.m.quotaExceeded.WithLabelValues(over, "native").Inc()
		s.auditQuota(tenant, env, over, "native", fmt.Sprintf("%d messages, %d bytes in %s; %d publishing connections closed",
			u.msgs, u.bytes, s.o.SweepInterval, len(active[acct])))
		for _, id := range active[acct] {
			_ = s.o.Engine.Disconnect(id)
		}
	}
}

// stillAllowed reports whether a native connection's key still lets it in with the same
// permissions.
func (s *Service) stillAllowed(c nativeConn) bool {
	k, err := s.o.Identity.StillValid(c.keyID, c.source)
	if err != nil {
		return false
	}
	t, ok := s.o.Identity.Tenant(c.tenant)
	if !ok || !slices.Contains(t.Environments, c.env) || !identity.AllowedFrom(t.AllowList, c.source) {
		return false
	}
	var apps []string
	for _, a := range s.o.Identity.Apps(c.tenant, c.env) {
		apps = append(apps, a.Name)
	}
	g, ok := Grant(identity.KeyPrincipal(k), k.ID, c.tenant, c.env, apps)
	// Any change of grant (a role taken away, an application added or deleted) closes the
	// connection: the client reconnects with the permissions of its new grant.
	return ok && grantKey(g) == c.grant
}

// grantKey identifies a grant's permissions.
func grantKey(g engine.NativeGrant) string {
	return strings.Join(g.Publish, ",") + ";" + strings.Join(g.Subscribe, ",")
}

// quota applies a tenant-environment's publish-rate quotas to an HTTPS publish.
func (s *Service) quota(ctx context.Context, ta *tenantAccount, r Ref, msgs, size int, path string) error {
	var over string
	now := time.Now()
	if ta.limiter != nil && !ta.limiter.AllowN(now, msgs) {
		over = "publish_rate"
	} else if ta.bytes != nil && size > 0 && !ta.bytes.AllowN(now, size) {
		over = "publish_bytes_rate"
	}
	if over == "" {
		return nil
	}
	s.m.quotaExceeded.WithLabelValues(over, path).Inc()
	ta.mu.Lock()
	report := now.Sub(ta.lastQuota) > time.Minute
	if report {
		ta.lastQuota = now
	}
	ta.mu.Unlock()
	if report { // one audit event a minute per tenant-environment, the metric counts them all
		s.auditQuota(r.Tenant, r.Environment, over, path, "publish of "+strconv.Itoa(msgs)+" messages refused")
	}
	return fmt.Errorf("%w: %s", ErrRateLimited, over)
}

func (s *Service) auditQuota(tenant, env, quota, path, detail string) {
	if s.o.Audit == nil {
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
	defer cancel()
	_, err := s.o.Audit.Append(ctx, audit.Event{Actor: "penstock", Tenant: tenant, Environment: env, Action: "fabric.quota",
		Target: quota, Result: "denied", Details: map[string]string{"path": path, "detail": detail}})
	if err != nil {
		s.log.Error("audit quota event", "error", err)
	}
}

// NativeEnvs lists the tenant-environments with a native client connected to this node:
// retention counts a connected client as use, however quiet.
func (s *Service) NativeEnvs() [][2]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := map[[2]string]bool{}
	var out [][2]string
	for _, c := range s.conns {
		k := [2]string{c.tenant, c.env}
		if !seen[k] {
			seen[k] = true
			out = append(out, k)
		}
	}
	return out
}
