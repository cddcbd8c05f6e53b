package fabric

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/penstock/penstock/internal/audit"
	"github.com/penstock/penstock/internal/authz"
	"github.com/penstock/penstock/internal/engine"
	"github.com/penstock/penstock/internal/identity"
)

// nativeConn is a tenant's native client as it was let in: what it must still hold to stay.
type nativeConn struct {
	keyID           string
	tenant, env     string
	source          netip.Addr
	grant           string // the permissions it was given, to notice a change of role
	inMsgs, inBytes int64
	seen            bool
}

// InboxPrefix is the reply-subject prefix a native client must use (nats.CustomInboxPrefix):
// replies to other clients of the same account are not visible to it.
func InboxPrefix(keyID string) string { return "_INBOX." + keyID }

// Grant computes the subjects a key may use in a tenant-environment: for each application in
// it where the key's role allows publishing, that application's queue and exchange subjects;
// where it allows consuming, the application's consumers, their acknowledgements, and live
// subscriptions to its subjects. It returns false when the key may do neither anywhere.
func Grant(p authz.Principal, keyID, tenant, env string, apps []string) (pub, sub []string, ok bool) {
	for _, app := range apps {
		sc := authz.Scope{Tenant: tenant, Environment: env, Application: app}
		if authz.Decide(p, authz.QueuePublish, sc).Allow {
			pub = append(pub, app+".q.*", app+".x.>")
		}
		if authz.Decide(p, authz.QueueConsume, sc).Allow {
			pub = append(pub,
				"$JS.API.CONSUMER.MSG.NEXT.*."+app,
				"$JS.API.CONSUMER.INFO.*."+app,
				"$JS.ACK.*."+app+".>")
			sub = append(sub, app+".q.*", app+".x.>")
		}
	}
	if len(pub) == 0 && len(sub) == 0 {
		return nil, nil, false
	}
	sub = append(sub, InboxPrefix(keyID)+".>")
	return pub, sub, true
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
		s.auditNative(tenant, env, "", src, "denied", reason)
		return engine.NativeGrant{}, false
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
	pub, sub, ok := Grant(identity.KeyPrincipal(k), k.ID, tenant, env, apps)
	if !ok {
		return refuse("no_queue_role")
	}
	// The account must exist with its limits before the client lands in it.
	ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
	defer cancel()
	if _, err := s.account(ctx, tenant, env); err != nil {
		s.log.Error("native client: account unavailable", "tenant", tenant, "environment", env, "error", err)
		return refuse("unavailable")
	}
	s.mu.Lock()
	s.conns[c.ID] = nativeConn{keyID: k.ID, tenant: tenant, env: env, source: src, grant: strings.Join(pub, ",") + ";" + strings.Join(sub, ",")}
	s.mu.Unlock()
	s.m.nativeAuth.WithLabelValues("ok").Inc()
	s.auditNative(tenant, env, k.ID, src, "ok", "")
	return engine.NativeGrant{Account: AccountName(tenant, env), Publish: pub, Subscribe: sub,
		Username: "apikey:" + k.ID, Expires: k.Expires}, true
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
func (s *Service) sweep() {
	defer s.wg.Done()
	t := time.NewTicker(s.o.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		s.sweepOnce()
	}
}

func (s *Service) sweepOnce() {
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
		if !c.seen {
			delete(s.conns, id) // closed
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
	pub, sub, ok := Grant(identity.KeyPrincipal(k), k.ID, c.tenant, c.env, apps)
	if !ok {
		return false
	}
	// A new application widens the grant; a narrower one means a role was taken away.
	now := strings.Join(pub, ",") + ";" + strings.Join(sub, ",")
	return now == c.grant || grantCovers(now, c.grant)
}

// grantCovers reports whether grant a contains every subject of grant b.
func grantCovers(a, b string) bool {
	ap, as, _ := strings.Cut(a, ";")
	bp, bs, _ := strings.Cut(b, ";")
	contains := func(x, y string) bool {
		have := strings.Split(x, ",")
		for _, s := range strings.Split(y, ",") {
			if s != "" && !slices.Contains(have, s) {
				return false
			}
		}
		return true
	}
	return contains(ap, bp) && contains(as, bs)
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
