package fabric

import (
	"context"
	"errors"
	"runtime/debug"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/penstock/penstock/internal/engine"
)

// A node holding thousands of tenant-environments keeps an engine connection open only to
// those in use. Each open one costs the node a connection on both sides (buffers, a reader, a
// writer and a flusher), the ingest and dead-letter subscriptions with their goroutines, and
// the engine's periodic connection events: at 10,000 idle tenant-environments that was about a
// third of the node's memory and most of its idle CPU.
//
// A tenant-environment is let go (its connection closed, the fabric's state of it forgotten)
// once it has gone unused for fabric.idle_close and nothing needs it open on this node:
//   - no request through the fabric (s.account) and no message on its connection either way
//     (publishes, consumes, advisories, the ingest) for that long;
//   - no native client of it connected to this node: their publishes reach the fabric through
//     its ingest subscription (a login takes the tenant-environment up again, in authNative);
//   - no exchange: its routers move messages as they arrive, with nobody asking;
//   - no message delivered and waiting for its acknowledgement: when its ack wait ends on the
//     last delivery, the engine's "max deliveries" advisory arrives with nobody asking either,
//     and only a listener moves it to the dead-letter queue at once.
//
// The next use takes it up again as the first did: a connection, the subscriptions, a
// dead-letter sweep within a second. On a single node, its queues' consumers go with it when
// they hold nothing, and come back with use (queueconsumer.go).

// dueAtStart names the tenant-environments a starting node must take up at once, when it
// lets idle ones go and holds every stream itself (a single node): those with an exchange
// (its router resumes), a delivery waiting for its acknowledgement (the dead-letter listener),
// or messages a missed advisory may have left behind (delivered, none outstanding: the sweep).
// The others are taken up by their next use, as after an idle close; a node of 10,000
// tenant-environments then starts without opening 10,000 connections. nil: take up every one.
func (s *Service) dueAtStart() map[string]bool {
	if s.cfg.IdleClose <= 0 || !s.o.Engine.Embedded() {
		return nil
	}
	all, err := s.o.Engine.AccountStreams("")
	if err != nil {
		if !errors.Is(err, engine.ErrNotEmbedded) {
			s.log.Warn("list streams at start: taking every tenant-environment up", "error", err)
		}
		return nil
	}
	due := map[string]bool{}
	for acct, streams := range all {
		for _, st := range streams {
			kind, app, _, ok := parseStream(st.Stream)
			if st.Stream == "KV_"+bindingsBucket || ok && kind == "X" {
				due[acct] = true
			}
			if !ok || kind != "Q" {
				continue
			}
			for _, c := range st.Consumers {
				if c.Name != app {
					continue
				}
				if c.AckPending > 0 || st.Msgs > 0 && st.First <= c.Delivered {
					due[acct] = true
				}
			}
		}
	}
	return due
}

// idleCheckEvery bounds how often the idle close looks at the tenant-environments it holds.
func idleCheckEvery(idle time.Duration) time.Duration {
	return min(max(idle/4, 10*time.Millisecond), 30*time.Second)
}

// closeIdle lets go of idle tenant-environments until the fabric closes.
func (s *Service) closeIdle() {
	s.every(idleCheckEvery(s.cfg.IdleClose), func() { s.closeIdleOnce() })
}

// closeIdleOnce lets go of every tenant-environment idle now, and returns how many.
func (s *Service) closeIdleOnce() int {
	if s.lazyConsumers() {
		s.readyNative()
	}
	idle := s.cfg.IdleClose
	s.mu.Lock()
	var candidates []*tenantAccount
	for _, ta := range s.accounts {
		if s.mayClose(ta, idle) {
			candidates = append(candidates, ta)
		}
	}
	s.mu.Unlock()
	closed := 0
	for _, ta := range candidates {
		ctx, cancel := context.WithTimeout(ta.ctx, 10*time.Second)
		pending, err := s.awaitingAck(ctx, ta)
		cancel()
		if pending || err != nil {
			continue
		}
		name := ta.acc.Name()
		dropped := 0
		if s.lazyConsumers() {
			// Outside s.mu: engine round trips and syncs, while other tenants are served.
			ctx, cancel := context.WithTimeout(ta.ctx, 10*time.Second)
			dropped = s.dropConsumers(ctx, ta, idle)
			cancel()
		}
		s.mu.Lock()
		// Closed under the lock, and only if still idle and held by nobody: a take-up waiting
		// for the lock then opens a new connection, never this one. The deletions' own traffic
		// is not counted as use (dropConsumers), so a consume that began meanwhile is looked for
		// in the engine again, without traffic (a single node).
		if dropped < 0 || s.accounts[name] != ta || !s.mayClose(ta, idle) || dropped > 0 && s.inFlight(ta) || !s.o.Engine.CloseIdleAccount(name, idle) {
			s.mu.Unlock()
			continue
		}
		drop := s.forgetLocked(name)
		s.mu.Unlock()
		s.stopForgotten(ta, drop)
		s.m.idleClosed.Inc()
		closed++
	}
	// Connections opened without the fabric (a backup's) and idle since.
	for _, name := range s.o.Engine.IdleAccounts(idle) {
		s.mu.Lock()
		if _, held := s.accounts[name]; !held && s.o.Engine.CloseIdleAccount(name, idle) {
			s.m.idleClosed.Inc()
			closed++
		}
		s.mu.Unlock()
	}
	if closed >= freeAfterClosing {
		// Many let go at once (after a start or a burst of use): their buffers and goroutine
		// stacks go back to the system now. Left to the runtime, a node of 10,000 kept
		// about a gigabyte more for many minutes, and spent a third of its idle CPU giving it
		// back page by page.
		debug.FreeOSMemory()
	}
	return closed
}

// freeAfterClosing is how many tenant-environments one pass of the idle close lets go before
// it returns freed memory to the system at once.
const freeAfterClosing = 500

// mayClose tells whether a tenant-environment has been idle long enough and nothing on this
// node needs it open, as far as the fabric knows without asking the engine. s.mu is held.
func (s *Service) mayClose(ta *tenantAccount, idle time.Duration) bool {
	if ta.ctx.Err() != nil || time.Since(time.Unix(0, ta.used.Load())) < idle {
		return false
	}
	// Moving a dead letter (from an advisory, or a sweep), or an advisory not handled yet.
	if ta.busy.Load() > 0 || ta.advisories != nil && pendingMsgs(ta.advisories) > 0 {
		return false
	}
	// Taken up at start (or in a cluster, where another node may have missed advisories):
	// swept once first.
	if ta.sweepFirst && !ta.sweptOnce.Load() {
		return false
	}
	if s.openConnsLocked(ta.tenant, ta.env) > 0 {
		return false
	}
	ta.mu.RLock()
	exchanges := len(ta.exchanges) > 0 || len(ta.routers) > 0
	ta.mu.RUnlock()
	// In a cluster, a node watching the exchanges bucket routes an exchange another node
	// makes, also while its maker is down.
	if exchanges || s.o.Engine.Clustered() && ta.hasBindings.Load() {
		return false
	}
	return ta.acc.IdleFor() >= idle
}

func pendingMsgs(sub *nats.Subscription) int {
	n, _, err := sub.Pending()
	if err != nil {
		return 0 // closed
	}
	return n
}

// inFlight tells whether a queue of the tenant-environment has a delivery waiting for its
// acknowledgement or a pull request waiting, read from a single node's engine (true when it
// cannot tell).
func (s *Service) inFlight(ta *tenantAccount) bool {
	streams, err := s.o.Engine.AccountStreams(ta.acc.Name())
	return err != nil || deliveriesIn(streams[ta.acc.Name()])
}

// deliveriesIn tells whether a queue's consumer among streams has a delivery waiting for its
// acknowledgement or a pull request waiting.
func deliveriesIn(streams []engine.QueueState) bool {
	for _, st := range streams {
		if kind, app, _, ok := parseStream(st.Stream); ok && kind == "Q" {
			for _, c := range st.Consumers {
				if c.Name == app && (c.AckPending > 0 || c.Waiting > 0) {
					return true
				}
			}
		}
	}
	return false
}

// awaitingAck tells whether any queue of the tenant-environment has a message delivered and
// not yet acknowledged (or a pull request waiting). A single node reads it from the engine
// without a message on the account's connection; a node of a cluster asks through the
// connection, and that traffic is then not counted as use.
func (s *Service) awaitingAck(ctx context.Context, ta *tenantAccount) (bool, error) {
	if streams, err := s.o.Engine.AccountStreams(ta.acc.Name()); err == nil {
		return deliveriesIn(streams[ta.acc.Name()]), nil
	}
	defer ta.acc.Quiet()
	js := ta.acc.JetStream()
	names := js.StreamNames(ctx)
	for stream := range names.Name() {
		kind, app, _, ok := parseStream(stream)
		if !ok || kind != "Q" {
			continue
		}
		c, err := js.Consumer(ctx, stream, app)
		if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
			continue
		}
		if err != nil {
			return false, err
		}
		if c.CachedInfo().NumAckPending > 0 {
			return true, nil
		}
	}
	return false, names.Err()
}
