package engine

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/datadir"
	"github.com/penstock/penstock/internal/redact"
)

// TokenFile, inside the data directory, holds the credential that binds a connection to an
// account of the embedded server. Penstock uses it in-process; an operator who enabled
// engine.client_listen can use it with any NATS client as user "platform".
const TokenFile = "engine.token"

type embedded struct {
	ns        *server.Server
	opts      *server.Options
	token     redact.Secret
	listening bool
	native    Native
	auth      *authenticator
	// gsync, when set, makes writes durable: the server runs without its fsync per write.
	gsync *groupSync
	// cluster and accounts are set on a node of a cluster.
	cluster  *Cluster
	accounts *accountList
	// limits, in a cluster, are the tenant accounts' limits every node applies as it
	// registers an account (the fabric sets them with SetLimits).
	limitsMu sync.Mutex
	limits   *AccountLimits
}

var _ accounts = (*embedded)(nil)

func startEmbedded(o Options) (*embedded, error) {
	if o.StoreKey.IsZero() {
		return nil, errors.New("embedded engine: a store encryption key is required")
	}
	sync, err := config.ParseSyncInterval(o.Config.SyncInterval)
	if err != nil {
		return nil, fmt.Errorf("engine.sync_interval: %w", err)
	}
	token, err := datadir.LoadKey(o.DataDir, TokenFile, "the credential that binds Penstock's connections to the engine's "+
		"accounts (it protects no data: a new one can be written with `openssl rand -hex 32 > engine.token; chmod 600 engine.token`)")
	if err != nil {
		return nil, err
	}
	em := &embedded{token: token, native: o.Native}
	em.auth = &authenticator{token: token, platformPort: o.Config.ClientListen != "", wait: cmp.Or(o.Native.AuthWait, NativeAuthWait),
		nativeAuth: newNativeAuth()}

	opts := &server.Options{
		ServerName:         "penstock",
		JetStream:          true,
		StoreDir:           o.DataDir, // JetStream keeps its files in DataDir/jetstream
		JetStreamMaxStore:  o.Config.MaxStore,
		JetStreamMaxMemory: o.Config.MaxMemory,
		JetStreamCipher:    server.AES,
		JetStreamKey:       o.StoreKey.Reveal(),
		NoSigs:             true,
		// Open atomic batches are limited per server (1000 by default): tenants' native
		// clients can open batches on their own queues, so the server-wide limit is raised
		// beyond what they can hold, and each stream keeps its own (50).
		JetStreamLimits: server.JSLimitOpts{MaxBatchInflightTotal: 1 << 20},
		DontListen:      true,
		// Every account binding goes through authenticator; no connection lands in the
		// global account.
		CustomClientAuthentication: em.auth,
	}
	// Clients on the engine's own port (engine.client_listen) are answered by the engine with
	// no Penstock writer between: they keep the engine's fsync per write.
	// In a cluster a write is acknowledged once a majority of the nodes has it (each with its
	// own fsync): a sync of this node's disk alone would not make it durable.
	group := sync == 0 && o.Config.GroupSync && groupSyncSupported && o.Config.ClientListen == "" && o.Cluster == nil
	switch {
	case group:
		// The engine writes in place without syncing; Penstock's writers sync in groups
		// (groupSync) before anything is acknowledged, and the group sync's own second makes
		// what no Penstock writer waits for durable (a native client's acks, MQTT sessions).
		// The engine's timer is left to its other work (closing idle files, compacting): run
		// every second per stream it cost a core with ten thousand streams.
		opts.SyncInterval = 2 * time.Minute
	case sync == 0:
		opts.SyncAlways = true
		opts.SyncInterval = 2 * time.Minute // flush timer only; every write is synced anyway
	default:
		opts.SyncInterval = sync
	}
	if o.Config.MaxStore == 0 {
		opts.JetStreamMaxStore = -1
	}
	if o.Config.MaxMemory == 0 {
		opts.JetStreamMaxMemory = -1
	}
	if o.Config.ClientListen != "" {
		host, port, err := net.SplitHostPort(o.Config.ClientListen)
		if err != nil {
			return nil, fmt.Errorf("engine.client_listen: %w", err)
		}
		opts.DontListen = false
		opts.Host = host
		opts.Port, _ = strconv.Atoi(port)
		if opts.Port == 0 {
			opts.Port = server.RANDOM_PORT
		}
		em.listening = true
	}

	if o.Cluster != nil {
		if em.accounts, err = loadAccountList(o.DataDir); err != nil {
			return nil, fmt.Errorf("embedded engine: %w", err)
		}
		if err := applyCluster(opts, o.Cluster, em.accounts.names()); err != nil {
			return nil, err
		}
		em.cluster = o.Cluster
		em.limits = &o.Cluster.TenantLimits
		opts.LameDuckDuration = 5 * time.Second
		opts.LameDuckGracePeriod = time.Millisecond // 0 would mean the default, 10s
	}
	if err := applyNative(opts, o.Native); err != nil {
		return nil, err
	}
	em.listening = em.listening || o.Native.NATSListen != ""
	if o.Cluster != nil && opts.DontListen {
		// The engine starts its routes only once its client listener is up: a loopback one
		// that only a node certificate of the platform CA opens, used by nobody.
		opts.DontListen = false
		opts.Host, opts.Port = "127.0.0.1", server.RANDOM_PORT
		opts.TLSConfig = o.Cluster.TLS
		opts.TLS, opts.TLSVerify, opts.TLSTimeout = true, true, 5
	}
	em.opts = opts

	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded engine: %w", err)
	}
	ns.SetLoggerV2(&natsLogger{log: o.Logger.With("source", "nats")}, false, false, false)
	em.auth.srv = ns
	ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		ns.Shutdown()
		return nil, errors.New("embedded engine: not ready after 30s")
	}
	em.ns = ns
	if group {
		// The engine's own directory: it may be a mount of its own.
		g, err := newGroupSync(filepath.Join(o.DataDir, "jetstream"), o.Logger)
		if err != nil {
			ns.Shutdown()
			ns.WaitForShutdown()
			return nil, fmt.Errorf("embedded engine: %w", err)
		}
		em.gsync = g
	}
	return em, nil
}

// connect registers the account (enabling JetStream on it, which also recovers its streams
// from disk after a restart) and opens an in-process connection bound to it.
func (em *embedded) connect(ctx context.Context, name string) (*nats.Conn, error) {
	if err := em.enable(name); err != nil {
		return nil, err
	}
	return nats.Connect("",
		nats.InProcessServer(em.ns),
		nats.UserInfo(name, em.token.Reveal()),
		nats.Name("penstock/"+name),
		nats.MaxReconnects(-1),
	)
}

// enable registers the account and enables JetStream on it, which recovers its streams from
// disk after a restart, without connecting to it.
func (em *embedded) enable(name string) error {
	acc, _ := em.ns.LookupOrRegisterAccount(name)
	if !acc.JetStreamEnabled() {
		if err := acc.EnableJetStream(nil, nil); err != nil {
			return fmt.Errorf("enable jetstream: %w", err)
		}
	}
	return nil
}

func (em *embedded) close() {
	em.auth.stop()
	if em.cluster != nil {
		// Lame duck: hand this node's Raft leaderships to the others before going, so the
		// streams it led have a leader again at once rather than after an election timeout.
		em.ns.LameDuckShutdown()
	}
	em.ns.Shutdown()
	em.ns.WaitForShutdown()
	if em.gsync != nil {
		em.gsync.Close()
	}
}

// authenticator binds a connection to the account named as its user, if it presents the
// engine token and the account exists. Penstock's own in-process connections may bind to any
// account; a connection over the network (engine.client_listen) only to the platform account.
// Every other connection is a tenant's native client, decided by the fabric's NativeAuth.
// No connection is ever left in the global or system account.
type authenticator struct {
	token redact.Secret
	srv   *server.Server
	// platformPort: engine.client_listen is set, so the platform credential is accepted over
	// the network (its loopback port); otherwise only in process.
	platformPort bool
	// wait bounds a native login's wait for the fabric's decision (NativeAuthWait).
	wait time.Duration
	nativeAuth
}

func (a *authenticator) Check(c server.ClientAuthentication) bool {
	o := c.GetOpts()
	if o == nil {
		return false
	}
	if !a.token.Equal(redact.NewSecret(o.Password)) {
		return a.checkNative(c, o)
	}
	if !accountName.MatchString(o.Username) {
		return false
	}
	if !inProcess(c.RemoteAddress()) && (o.Username != PlatformAccount || !a.platformPort) {
		return false
	}
	acc, err := a.srv.LookupAccount(o.Username)
	if err != nil {
		return false
	}
	c.RegisterUser(&server.User{Username: o.Username, Account: acc})
	return true
}

// checkNative asks the fabric's decision for a tenant client and binds it to the account and
// subjects it grants. Publish and subscribe are deny by default: only the grant's subjects.
//
// The native listeners open with the server, before the fabric installs its decision, and
// stay open after it withdraws it at shutdown. A login in between waits for the decision; if
// none comes, the connection is closed before the server can answer it: the server then sends
// no "Authorization Violation" (nor MQTT "not authorized"), which clients take for a revoked
// key and stop reconnecting on.
func (a *authenticator) checkNative(c server.ClientAuthentication, o *server.ClientOpts) bool {
	if inProcess(c.RemoteAddress()) {
		return false
	}
	decide := a.decision(a.wait)
	if decide == nil {
		_ = a.srv.DisconnectClientByID(c.GetID())
		return false
	}
	g, ok := decide(NativeClient{ID: c.GetID(), User: o.Username, Password: o.Password, Token: o.Token, Remote: c.RemoteAddress()})
	if !ok || g.Account == PlatformAccount || g.DataAccount == PlatformAccount || g.Account == g.DataAccount ||
		!accountName.MatchString(g.Account) || !accountName.MatchString(g.DataAccount) {
		return false
	}
	acc, err := a.clientAccount(g)
	if err != nil {
		a.srv.Errorf("native client account %s: %v", g.Account, err)
		return false
	}
	perms := &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: nonNil(g.Publish)},
		Subscribe: &server.SubjectPermission{Allow: nonNil(g.Subscribe)},
	}
	c.RegisterUser(&server.User{Username: g.Username, Account: acc, Permissions: perms, ConnectionDeadline: g.Expires})
	return true
}

// nonNil keeps an empty allow list empty: a nil one would allow everything.
func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// inProcess reports whether a client connected through nats.InProcessServer, which uses an
// in-memory pipe rather than a socket.
func inProcess(addr net.Addr) bool {
	return addr != nil && addr.Network() == "pipe"
}

// natsLogger sends the NATS server's log lines to slog. Its notices (the start-up banner,
// "server is ready") are debug lines: Penstock logs its own start-up.
type natsLogger struct{ log *slog.Logger }

func (l *natsLogger) Noticef(format string, v ...any) { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l *natsLogger) Warnf(format string, v ...any)   { l.log.Warn(fmt.Sprintf(format, v...)) }
func (l *natsLogger) Fatalf(format string, v ...any)  { l.log.Error(fmt.Sprintf(format, v...)) }
func (l *natsLogger) Errorf(format string, v ...any) {
	if strings.Contains(format, "Unknown account %q for remote subject") {
		// In a cluster, a native client's login account exists only on the node it is
		// connected to (its imports are wired there); the other nodes are told of its
		// subscriptions and have nothing to deliver to it. Expected, so not an error.
		l.log.Debug(fmt.Sprintf(format, v...))
		return
	}
	l.log.Error(fmt.Sprintf(format, v...))
}
func (l *natsLogger) Debugf(format string, v ...any) { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l *natsLogger) Tracef(format string, v ...any) { l.log.Debug(fmt.Sprintf(format, v...)) }
