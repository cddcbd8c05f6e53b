// Package engine owns Penstock's connection to NATS JetStream: the embedded server (the
// default) or an external one, the accounts data lives in, and the KV buckets and streams
// inside them. Everything above it asks this package for an Account and never dials NATS or
// starts a server itself. It never decides who may use an account: that is authorization's job.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/redact"
)

// PlatformAccount holds control-plane state that no tenant can reach.
const PlatformAccount = "platform"

// healthBucket is where readiness probes write.
const healthBucket = "penstock_health"

// drainTimeout bounds how long Close waits for in-flight publishes and acknowledgements.
const drainTimeout = 10 * time.Second

// ErrClosed is returned by an engine after Close.
var ErrClosed = errors.New("engine closed")

// ErrAccountUnavailable means the engine cannot provide the named account (an external server
// whose accounts are fixed by its operator).
var ErrAccountUnavailable = errors.New("account not available on this engine")

var accountName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,127}$`)

// accounts maps a Penstock account name to a connection into the NATS account that holds it.
// The embedded engine creates accounts on first use; an external server offers the one
// account its credentials belong to. A clustered engine implements the same contract.
type accounts interface {
	connect(ctx context.Context, name string) (*nats.Conn, error)
	close()
}

// Options configure Open.
type Options struct {
	// DataDir is where the embedded engine keeps its store (DataDir/jetstream) and files.
	DataDir string
	Config  config.Engine
	// StoreKey encrypts the embedded JetStream store. Required for the embedded engine.
	StoreKey redact.Secret
	Logger   *slog.Logger
	// NodeID names this process in readiness records; defaults to the server's ID.
	NodeID string
	// Native opens the embedded engine's listeners for tenants' own clients.
	Native Native
	// Cluster, when set, makes the embedded engine a node of a cluster.
	Cluster *Cluster
	// restarted: Open started the engine again after finding accounts it missed.
	restarted bool
}

// Engine is an open JetStream engine.
type Engine struct {
	log      *slog.Logger
	accts    accounts
	embedded *embedded // nil with an external server
	operator *operator // an external deployment in operator mode, whose accounts Penstock signs
	replicas int
	nodeID   string
	dataDir  string

	mu     sync.Mutex
	cache  map[string]*Account
	closed bool

	health    jetstream.KeyValue
	closeOnce sync.Once
	// confirmed, in a cluster, records the accounts every node registered.
	confirmed jetstream.KeyValue
}

// Open starts the embedded engine or connects to the external one, then makes sure the
// platform account and its health bucket exist.
func Open(ctx context.Context, o Options) (*Engine, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	size := 1
	if o.Cluster != nil {
		size = o.Cluster.size()
		if o.NodeID == "" {
			o.NodeID = o.Cluster.Node
		}
	}
	e := &Engine{log: o.Logger, replicas: o.Config.ReplicasFor(size), nodeID: o.NodeID, dataDir: o.DataDir, cache: map[string]*Account{}}
	if o.Config.Embedded() {
		em, err := startEmbedded(o)
		if err != nil {
			return nil, err
		}
		e.embedded, e.accts = em, em
		if e.nodeID == "" {
			e.nodeID = em.ns.ID()
		}
	} else {
		if o.Config.Operator() {
			op, err := openOperator(ctx, o)
			if err != nil {
				return nil, err
			}
			e.operator, e.accts = op, op
		} else {
			e.accts = &external{opts: o}
		}
		if e.nodeID == "" {
			e.nodeID = nats.NewInbox()[len(nats.InboxPrefix):]
		}
	}
	if e.embedded != nil && e.embedded.cluster != nil {
		if err := e.joinCluster(ctx); err != nil {
			e.Close()
			return nil, err
		}
	}
	plat, err := e.Account(ctx, PlatformAccount)
	if err != nil {
		e.Close()
		return nil, err
	}
	if em := e.embedded; em != nil && em.cluster != nil {
		e.confirmed, err = plat.KeyValue(ctx, jetstream.KeyValueConfig{Bucket: accountsBucket, History: 1,
			Description: "accounts every node of the cluster registered"})
		if err != nil {
			e.Close()
			return nil, fmt.Errorf("accounts bucket: %w", err)
		}
		missed, err := em.missedAccounts(ctx, e.confirmed)
		if err != nil {
			e.Close()
			return nil, fmt.Errorf("accounts bucket: %w", err)
		}
		if len(missed) > 0 && !o.restarted {
			// The engine replayed its log without these accounts and skipped their
			// streams: declare them and start it again.
			e.log.Warn("this node missed accounts created while it was away: restarting its engine with them", "accounts", len(missed))
			for _, n := range missed {
				if err := em.accounts.add(n); err != nil {
					e.Close()
					return nil, err
				}
			}
			e.Close()
			o.restarted = true
			return Open(ctx, o)
		}
	}
	if e.embedded != nil {
		// Recover every account's streams now, not on first use: a store key rotation
		// converts only what is opened while the previous key is given.
		if err := e.openStoredAccounts(ctx, o.DataDir); err != nil {
			e.Close()
			return nil, err
		}
	}
	e.health, err = plat.KeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      healthBucket,
		Description: "readiness probes: one key per node",
		History:     1,
	})
	for e.embedded != nil && e.embedded.cluster != nil && err != nil && ctx.Err() == nil {
		// The cluster's JetStream may not have the nodes for its replicas yet.
		e.log.Info("waiting for the cluster's nodes", "error", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
		e.health, err = plat.KeyValue(ctx, jetstream.KeyValueConfig{
			Bucket: healthBucket, Description: "readiness probes: one key per node", History: 1,
		})
	}
	if err != nil {
		e.Close()
		return nil, fmt.Errorf("create health bucket: %w", err)
	}
	return e, nil
}

func (e *Engine) openStoredAccounts(ctx context.Context, dataDir string) error {
	entries, err := os.ReadDir(filepath.Join(dataDir, "jetstream"))
	if err != nil {
		return fmt.Errorf("list stored accounts: %w", err)
	}
	for _, de := range entries {
		if de.IsDir() && accountName.MatchString(de.Name()) && de.Name() != PlatformAccount {
			if err := e.enableAccount(ctx, de.Name()); err != nil {
				return fmt.Errorf("account %q: %w", de.Name(), err)
			}
		}
	}
	return nil
}

// enableAccount makes a stored account ready on this node (registered, its streams recovered)
// without connecting to it: a node holding thousands of accounts connects to one only when it
// is used (Account), and closes the connection once it is idle again (CloseAccount).
func (e *Engine) enableAccount(ctx context.Context, name string) error {
	em := e.embedded
	if em.cluster == nil {
		return em.enable(name)
	}
	e.mu.Lock()
	plat := e.cache[PlatformAccount]
	e.mu.Unlock()
	return em.registerEverywhere(ctx, plat.nc, e.confirmed, name) // registering enables JetStream
}

// HasAccount reports whether the named account exists: opened in this process, stored on
// disk by the embedded engine, or held by an operator-mode deployment's resolver.
func (e *Engine) HasAccount(name string) bool {
	e.mu.Lock()
	_, ok := e.cache[name]
	e.mu.Unlock()
	if ok || !accountName.MatchString(name) {
		return ok
	}
	if e.operator != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		has, err := e.operator.hasAccount(ctx, name)
		if err != nil {
			// Unknown counts as there: the caller opens it and fails with the reason, rather
			// than skip (and, deleting, leave behind) what it could not see.
			e.log.Warn("could not ask the resolver for an account", "account", name, "error", err)
			return true
		}
		return has
	}
	if e.embedded == nil {
		return false
	}
	if e.embedded.accounts != nil && e.embedded.accounts.has(name) {
		return true
	}
	_, err := os.Stat(filepath.Join(e.dataDir, "jetstream", name))
	return err == nil
}

// Embedded reports whether this process runs the NATS server.
func (e *Engine) Embedded() bool { return e.embedded != nil }

// Operator reports whether the engine is an external deployment in operator mode, whose
// accounts (one per tenant-environment) Penstock signs and pushes to its resolver.
func (e *Engine) Operator() bool { return e.operator != nil }

// NATSAccount is the NATS account that holds the named Penstock account: its public key in
// operator mode, the name itself on the embedded engine.
func (e *Engine) NATSAccount(name string) (string, error) {
	if e.operator != nil {
		return e.operator.accountPublicKey(name)
	}
	return name, nil
}

// ClientURL is the embedded server's NATS client URL, or "" when it has no network port.
func (e *Engine) ClientURL() string {
	if e.embedded == nil || e.embedded.ns.ClientURL() == "" || !e.embedded.listening {
		return ""
	}
	return e.embedded.ns.ClientURL()
}

// Durability is the fsync policy acknowledged writes get, as the running server reports it:
// "always", an interval such as "1s", or "external" when another server decides.
func (e *Engine) Durability() string {
	if e.embedded == nil {
		return "external"
	}
	jc := e.embedded.ns.JetStreamConfig()
	if jc == nil {
		return "unknown"
	}
	if jc.SyncAlways || e.embedded.gsync != nil {
		return "always"
	}
	return jc.SyncInterval.String()
}

// GroupSync tells whether acknowledged writes are made durable by Penstock's group syncfs
// rather than by the engine's fsync of every write.
func (e *Engine) GroupSync() bool { return e.embedded != nil && e.embedded.gsync != nil }

// Syncs is how many group syncs have made writes durable so far.
func (e *Engine) Syncs() uint64 {
	if !e.GroupSync() {
		return 0
	}
	return e.embedded.gsync.syncs.Load()
}

// Account returns the named account, creating it on the embedded engine if it is new.
func (e *Engine) Account(ctx context.Context, name string) (*Account, error) {
	if !accountName.MatchString(name) {
		return nil, fmt.Errorf("account name %q: must be 1-128 of a-z, 0-9, _ and -, starting with a letter or digit", name)
	}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil, ErrClosed
	}
	if a, ok := e.cache[name]; ok {
		// Under the lock: CloseIdleAccount checks it under the lock too.
		a.handedOut.Store(time.Now().UnixNano())
		e.mu.Unlock()
		return a, nil
	}
	plat := e.cache[PlatformAccount]
	e.mu.Unlock()
	if em := e.embedded; em != nil && em.cluster != nil && name != PlatformAccount {
		// Outside the lock: the round waits for every node (up to registerWait when one is
		// down), and other accounts must not wait with it. Registering twice is harmless.
		if plat == nil {
			return nil, fmt.Errorf("account %q: the platform account is not open", name)
		}
		if err := em.registerEverywhere(ctx, plat.nc, e.confirmed, name); err != nil {
			return nil, fmt.Errorf("account %q: %w", name, err)
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, ErrClosed
	}
	if a, ok := e.cache[name]; ok {
		a.handedOut.Store(time.Now().UnixNano())
		return a, nil
	}
	nc, err := e.accts.connect(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("account %q: %w", name, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("account %q: jetstream: %w", name, err)
	}
	if err := e.checkJetStream(ctx, js); err != nil {
		nc.Close()
		return nil, fmt.Errorf("account %q: jetstream not available: %w", name, err)
	}
	a := &Account{name: name, nc: nc, js: js, replicas: e.replicas, quietFrom: time.Now()}
	st := nc.Stats()
	a.seen = st.InMsgs + st.OutMsgs
	a.handedOut.Store(a.quietFrom.UnixNano())
	if em := e.embedded; em != nil && em.cluster != nil {
		a.clustered = true
		cj := clusterJS{JetStream: js, replicas: e.replicas}
		if em.cluster.Placement != nil {
			cj.placement = em.cluster.Placement(name)
		}
		a.js = cj
		if name == PlatformAccount {
			if err := em.serveRegistrations(nc, em.cluster.Node); err != nil {
				nc.Close()
				return nil, fmt.Errorf("account %q: serve registrations: %w", name, err)
			}
		}
	}
	if e.embedded != nil && e.embedded.gsync != nil {
		a.sync = e.embedded.gsync.Sync
		a.js = durableJS{JetStream: js, sync: a.sync}
	}
	e.cache[name] = a
	return a, nil
}

// CloseAccount closes this process's connection to a tenant account and forgets it; the next
// Account opens a new one. The account, its streams and its native clients stay: only
// Penstock's own connection goes, with every subscription made on it. Anyone still holding the
// old *Account gets "connection closed": CloseIdleAccount is for accounts nobody uses. The
// platform account is never closed.
func (e *Engine) CloseAccount(name string) {
	e.closeAccount(name, 0)
}

// CloseIdleAccount closes the account's connection (as CloseAccount) only if it has been idle
// for at least d (Account.IdleFor) and nobody holds it (HeldAccount), and reports whether it
// did, or was not open.
func (e *Engine) CloseIdleAccount(name string, d time.Duration) bool {
	return e.closeAccount(name, d)
}

func (e *Engine) closeAccount(name string, idle time.Duration) bool {
	if name == PlatformAccount {
		return false
	}
	e.mu.Lock()
	a, ok := e.cache[name]
	if ok && idle > 0 && (a.holds.Load() > 0 || a.IdleFor() < idle) {
		e.mu.Unlock()
		return false
	}
	delete(e.cache, name)
	e.mu.Unlock()
	if ok {
		a.nc.Close()
	}
	return true
}

// HeldAccount is Account for a user that may go a while without a message on the account's
// connection (a restore reading a large part from its bucket): the connection is not closed
// as idle until release is called.
func (e *Engine) HeldAccount(ctx context.Context, name string) (*Account, func(), error) {
	for {
		a, err := e.Account(ctx, name)
		if err != nil {
			return nil, nil, err
		}
		a.holds.Add(1)
		e.mu.Lock()
		current := e.cache[name] == a
		e.mu.Unlock()
		if current {
			var once sync.Once
			return a, func() { once.Do(func() { a.holds.Add(-1) }) }, nil
		}
		a.holds.Add(-1) // closed between the two: take the new one
	}
}

// IdleAccounts names the accounts (the platform account aside) whose connection has been idle
// for at least d (Account.IdleFor) and that nobody holds.
func (e *Engine) IdleAccounts(d time.Duration) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for name, a := range e.cache {
		if name != PlatformAccount && a.holds.Load() == 0 && a.IdleFor() >= d {
			out = append(out, name)
		}
	}
	return out
}

// OpenAccounts is how many accounts this process holds a connection to.
func (e *Engine) OpenAccounts() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.cache)
}

// checkJetStream asks for the account's JetStream information. A node of a cluster that has
// just (re)joined may not get its first answers in time while it catches up: it asks again,
// for up to joinWait.
func (e *Engine) checkJetStream(ctx context.Context, js jetstream.JetStream) error {
	if e.embedded == nil || e.embedded.cluster == nil {
		_, err := js.AccountInfo(ctx)
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, joinWait)
	defer cancel()
	_, err := retryLost(ctx, false, func(ctx context.Context) (*jetstream.AccountInfo, error) { return js.AccountInfo(ctx) })
	return err
}

// Ready proves the engine is reachable and writable: it writes this node's key in the health
// bucket and reads it back.
func (e *Engine) Ready(ctx context.Context) error {
	e.mu.Lock()
	closed := e.closed
	e.mu.Unlock()
	if closed {
		return ErrClosed
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	stamp := []byte(time.Now().UTC().Format(time.RFC3339Nano))
	rev, err := e.health.Put(ctx, "node."+e.nodeID, stamp)
	if err != nil {
		return fmt.Errorf("write: %w", err)
	}
	got, err := e.health.Get(ctx, "node."+e.nodeID)
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if got.Revision() < rev {
		return fmt.Errorf("read revision %d, wrote %d", got.Revision(), rev)
	}
	return nil
}

// Close drains every account connection, then shuts the embedded server down and waits for
// it to finish writing. It is safe to call more than once.
func (e *Engine) Close() {
	e.closeOnce.Do(func() {
		e.mu.Lock()
		e.closed = true
		for _, a := range e.cache {
			_ = a.nc.Drain()
		}
		deadline := time.Now().Add(drainTimeout)
		for _, a := range e.cache {
			for !a.nc.IsClosed() && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			a.nc.Close()
		}
		e.cache = nil
		e.mu.Unlock()
		e.accts.close()
	})
}
