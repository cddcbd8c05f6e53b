package engine

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
)

// Native configures the embedded engine's listeners for tenants' own clients: NATS, MQTT 3.1.1
// and NATS over WebSocket, each with TLS. Who may connect, to which account and with which
// permissions is decided by the NativeAuth the fabric installs; until it does, a tenant's
// login waits for it (see SetNativeAuth).
type Native struct {
	NATSListen, MQTTListen, WebSocketListen string
	TLS                                     *tls.Config
	// MaxPayload is the server-wide ceiling on one message; accounts may set less.
	MaxPayload int32
	// AuthWait bounds how long a login waits for the decision to be installed (zero:
	// NativeAuthWait).
	AuthWait time.Duration
}

func (n Native) any() bool {
	return n.NATSListen != "" || n.MQTTListen != "" || n.WebSocketListen != ""
}

// NativeClient is what a client on a native listener presented.
type NativeClient struct {
	ID       uint64 // the server's connection id, for Disconnect
	User     string
	Password string
	Token    string
	Remote   net.Addr
}

// NativeGrant is what an authenticated native client gets. It lands in an account of its own
// (Account), which reaches the tenant's data account (DataAccount) only through the service
// imports listed: NATS does not check the reply subject a client sets, and the engine answers
// to it from inside the account, so a client must never be in the account that holds the
// queues. Across a service import, replies are rewritten to private subjects. Expires, if set,
// closes the connection then.
type NativeGrant struct {
	Account     string
	DataAccount string
	Imports     []NativeImport
	// Feeds are subjects of the data account whose messages the client account receives as
	// copies, under the prefix "feed.".
	Feeds              []string
	Publish, Subscribe []string
	// Username names the connection in the server's monitoring (never a credential).
	Username string
	Expires  time.Time
	// Limits apply to the client account when it is created.
	Limits AccountLimits
}

// NativeImport routes requests on Local in the client account to Remote in the data account.
type NativeImport struct {
	Local, Remote string
	// Streamed: the data account answers one request with several messages.
	Streamed bool
}

// FeedPrefix is where feeds arrive in a client account.
const FeedPrefix = "feed."

// NativeAuth decides a native client's grant; false refuses the connection.
type NativeAuth func(NativeClient) (NativeGrant, bool)

// AccountLimits are engine-enforced limits of one account; zero means no limit.
type AccountLimits struct {
	Connections   int
	Subscriptions int
	Payload       int
	Storage       int64
}

// ErrNotEmbedded is returned by operations only the embedded engine supports.
var ErrNotEmbedded = errors.New("only the embedded engine supports this")

func applyNative(opts *server.Options, n Native) error {
	if n.MaxPayload > 0 {
		opts.MaxPayload = n.MaxPayload
	}
	if !n.any() {
		return nil
	}
	if n.TLS == nil {
		return errors.New("native listeners need a TLS configuration")
	}
	hp := func(field, addr string) (string, int, error) {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return "", 0, fmt.Errorf("%s: %w", field, err)
		}
		p, err := strconv.Atoi(port)
		if err != nil {
			return "", 0, fmt.Errorf("%s: port: %w", field, err)
		}
		if p == 0 {
			p = server.RANDOM_PORT
		}
		return host, p, nil
	}
	var err error
	if n.NATSListen != "" {
		opts.DontListen = false
		if opts.Host, opts.Port, err = hp("fabric.nats_listen", n.NATSListen); err != nil {
			return err
		}
		opts.TLSConfig = n.TLS
		opts.TLS, opts.TLSVerify = true, false
		opts.TLSTimeout = 5
	}
	if n.MQTTListen != "" {
		if opts.MQTT.Host, opts.MQTT.Port, err = hp("fabric.mqtt_listen", n.MQTTListen); err != nil {
			return err
		}
		opts.MQTT.TLSConfig = n.TLS
		opts.MQTT.TLSTimeout = 5
	}
	if n.WebSocketListen != "" {
		if opts.Websocket.Host, opts.Websocket.Port, err = hp("fabric.websocket_listen", n.WebSocketListen); err != nil {
			return err
		}
		opts.Websocket.TLSConfig = n.TLS
	}
	return nil
}

// NativeAddrs are the addresses the native listeners are bound to ("" when off).
type NativeAddrs struct{ NATS, MQTT, WebSocket string }

// NativeAddrs reports where the native listeners are bound.
func (e *Engine) NativeAddrs() NativeAddrs {
	var out NativeAddrs
	if e.embedded == nil {
		return out
	}
	// The server writes the ports it bound (for port 0) back into its options.
	o, n := e.embedded.opts, e.embedded.native
	if n.NATSListen != "" {
		if a := e.embedded.ns.Addr(); a != nil {
			out.NATS = a.String()
		}
	}
	if n.MQTTListen != "" {
		out.MQTT = net.JoinHostPort(o.MQTT.Host, strconv.Itoa(o.MQTT.Port))
	}
	if n.WebSocketListen != "" {
		out.WebSocket = net.JoinHostPort(o.Websocket.Host, strconv.Itoa(o.Websocket.Port))
	}
	return out
}

// SetNativeAuth installs the decision for native clients; nil withdraws it (at shutdown).
// While there is none, a client that logs in waits for one (up to NativeAuthWait) and is then
// disconnected without an answer: a client must never read "not authorized" for a valid key
// because the server is starting or stopping, since clients give up on that answer.
func (e *Engine) SetNativeAuth(fn NativeAuth) {
	if e.embedded == nil {
		return
	}
	e.embedded.auth.setNative(fn)
}

// Disconnect closes a native client's connection.
func (e *Engine) Disconnect(id uint64) error {
	if e.embedded == nil {
		return ErrNotEmbedded
	}
	return e.embedded.ns.DisconnectClientByID(id)
}

// DisconnectNetwork closes every connection that came over the network (native clients and,
// with engine.client_listen, platform clients); Penstock's own in-process connections stay.
// With native logins stopped first, nothing they did can change the store after it returns.
func (e *Engine) DisconnectNetwork() error {
	if e.embedded == nil {
		return ErrNotEmbedded
	}
	conns, err := e.embedded.networkConns()
	if err != nil {
		return err
	}
	for _, c := range conns {
		if c.IP != "" {
			_ = e.embedded.ns.DisconnectClientByID(c.Cid)
		}
	}
	return nil
}

// ConnStat is one open connection's counters.
type ConnStat struct {
	ID              uint64
	InMsgs, InBytes int64
}

// Connections lists the open connections that came in through a native login, with their
// inbound counters.
func (e *Engine) Connections() ([]ConnStat, error) {
	if e.embedded == nil {
		return nil, ErrNotEmbedded
	}
	conns, err := e.embedded.networkConns()
	if err != nil {
		return nil, err
	}
	out := make([]ConnStat, 0, len(conns))
	for _, c := range conns {
		if c.IP != "" {
			out = append(out, ConnStat{ID: c.Cid, InMsgs: c.InMsgs, InBytes: c.InBytes})
		}
	}
	return out, nil
}

// networkConns lists the connections bound to the accounts a network login can reach: every
// native client account this process wired, and the platform account when engine.client_listen
// lets platform clients in over the network.
//
// It lists account by account, never the whole server: the server's listing reads each
// connection's login fields, which an MQTT connection still being parsed writes without a
// lock (nats-server 2.15.2, mqttParseConnect), while an account holds only connections that
// finished their login.
func (em *embedded) networkConns() ([]*server.ConnInfo, error) {
	a := em.auth
	a.wiring.Lock()
	accounts := make([]string, 0, len(a.loginAccounts)+1)
	for name := range a.loginAccounts {
		accounts = append(accounts, name)
	}
	a.wiring.Unlock()
	if a.platformPort {
		accounts = append(accounts, PlatformAccount)
	}
	var out []*server.ConnInfo
	for _, name := range accounts {
		cz, err := em.ns.Connz(&server.ConnzOptions{Account: name, Limit: 1 << 20})
		if err != nil {
			return nil, err
		}
		out = append(out, cz.Conns...)
	}
	return out, nil
}

// SetLimits applies engine-enforced limits to the named account (creating it if needed):
// connections, subscriptions and payload per message are refused beyond them by the server,
// storage by JetStream.
func (e *Engine) SetLimits(name string, l AccountLimits) error {
	if e.embedded == nil && e.operator == nil {
		return ErrNotEmbedded
	}
	if !accountName.MatchString(name) || name == PlatformAccount {
		return fmt.Errorf("account %q: limits apply to tenant accounts", name)
	}
	if e.operator != nil {
		// In the account's JWT, pushed as the account is opened. Only storage: the
		// connection and subscription limits are for the embedded engine's native clients.
		return e.operator.setLimits(name, l)
	}
	if e.embedded.cluster != nil {
		// Every node applies them as it registers the account: a stream's leader, on
		// whichever node, checks its account's limits.
		e.embedded.limitsMu.Lock()
		e.embedded.limits = &l
		e.embedded.limitsMu.Unlock()
	}
	return e.embedded.setLimits(name, l)
}

func (em *embedded) setLimits(name string, l AccountLimits) error {
	// Limits are applied once per process: applying claims again would drop the account's
	// exports, which native clients' imports point at.
	a := em.auth
	a.wiring.Lock()
	defer a.wiring.Unlock()
	if a.wired == nil {
		a.wired = map[string]bool{}
	}
	if a.wired["limits|"+name] {
		return nil
	}
	acc, _ := em.ns.LookupOrRegisterAccount(name)
	apply := applyLimits
	if l.Connections == 0 && l.Subscriptions == 0 && l.Payload == 0 {
		apply = applyStorageLimit
	}
	if err := apply(em.ns, acc, l); err != nil {
		return err
	}
	a.wired["limits|"+name] = true
	return nil
}

// applyStorageLimit gives an account the limits of applyLimits when only its storage is
// limited (a tenant-environment's account, which only Penstock connects to), through its
// JetStream limits. Claims would do the same, but every claims update walks every account of
// the server: with 10,000 tenant-environments, that made creating one, and starting, slow
// in proportion to how many there are.
func applyStorageLimit(_ *server.Server, acc *server.Account, l AccountLimits) error {
	store := int64(-1)
	if l.Storage > 0 {
		store = l.Storage
	}
	// No memory storage, as the claims' MemoryStorage 0: tenants' streams are on disk.
	limits := map[string]server.JetStreamAccountLimits{"": {MaxMemory: 0, MaxStore: store, MaxStreams: -1, MaxConsumers: -1,
		MaxAckPending: -1, MemoryMaxStreamBytes: -1, StoreMaxStreamBytes: -1}}
	var err error
	if acc.JetStreamEnabled() {
		err = acc.UpdateJetStreamLimits(limits)
	} else {
		err = acc.EnableJetStream(limits, nil)
	}
	if err != nil {
		return fmt.Errorf("account %q: jetstream limits: %w", acc.GetName(), err)
	}
	return nil
}

// applyLimits sets an account's limits through account claims, the only way the server
// offers without operator mode. It also enables JetStream on the account.
func applyLimits(ns *server.Server, acc *server.Account, l AccountLimits) error {
	name := acc.GetName()
	ac := jwt.NewAccountClaims(name)
	ac.Name = name
	lim := func(n int) int64 {
		if n <= 0 {
			return jwt.NoLimit
		}
		return int64(n)
	}
	ac.Limits.Conn = lim(l.Connections)
	ac.Limits.Subs = lim(l.Subscriptions)
	ac.Limits.Payload = lim(l.Payload)
	ac.Limits.LeafNodeConn = 0
	ac.Limits.Imports, ac.Limits.Exports, ac.Limits.WildcardExports = jwt.NoLimit, jwt.NoLimit, true
	ac.Limits.Data = jwt.NoLimit
	ac.Limits.JetStreamLimits = jwt.JetStreamLimits{
		MemoryStorage: 0, DiskStorage: jwt.NoLimit, Streams: jwt.NoLimit, Consumer: jwt.NoLimit,
		MaxAckPending: jwt.NoLimit, MemoryMaxStreamBytes: jwt.NoLimit, DiskMaxStreamBytes: jwt.NoLimit,
	}
	if l.Storage > 0 {
		ac.Limits.JetStreamLimits.DiskStorage = l.Storage
	}
	ns.UpdateAccountClaims(acc, ac)
	if !acc.JetStreamEnabled() {
		return fmt.Errorf("account %q: jetstream not enabled after applying limits", name)
	}
	return nil
}

// NativeAuthWait bounds how long a native login waits for the decision to be installed.
// Start-up installs it well within a second; a waiting login holds its connection (the engine
// stops its own authentication timer before it asks), and a client gives up on a login after
// its connect timeout (nats.go: 2 s) and tries again, so the wait is short.
const NativeAuthWait = 3 * time.Second

// maxNativeWaiters bounds the logins waiting at once; more are closed at once, unanswered,
// and their clients try again.
const maxNativeWaiters = 1024

// nativeAuth is the part of the authenticator that serves native clients.
type nativeAuth struct {
	mu     sync.RWMutex
	native NativeAuth
	// installed is closed while native is set; closing is closed when the engine stops, which
	// ends every wait.
	installed, closing chan struct{}
	closeOnce          sync.Once
	waiting            atomic.Int64 // logins waiting for a decision

	wiring sync.Mutex
	// wired records what this process set up: "limits|acct", "export|acct|subject",
	// "import|acct|local", "stream|acct|subject", "feed|acct|subject".
	wired map[string]bool
	// loginAccounts are the accounts native logins were bound to (never the platform's).
	loginAccounts map[string]bool
}

func newNativeAuth() nativeAuth {
	return nativeAuth{installed: make(chan struct{}), closing: make(chan struct{})}
}

func (a *nativeAuth) setNative(fn NativeAuth) {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case fn != nil && a.native == nil:
		close(a.installed)
	case fn == nil && a.native != nil:
		a.installed = make(chan struct{})
	}
	a.native = fn
}

// decision returns the installed decision, waiting up to wait for one; nil if there is none
// by then or the engine is stopping.
func (a *nativeAuth) decision(wait time.Duration) NativeAuth {
	a.mu.RLock()
	fn, installed := a.native, a.installed
	a.mu.RUnlock()
	if fn != nil {
		return fn
	}
	if a.waiting.Add(1) > maxNativeWaiters {
		a.waiting.Add(-1)
		return nil
	}
	defer a.waiting.Add(-1)
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-installed:
	case <-a.closing:
		return nil
	case <-t.C:
		return nil
	}
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.native
}

// stop ends every wait for a decision: the engine is shutting down.
func (a *nativeAuth) stop() { a.closeOnce.Do(func() { close(a.closing) }) }

// clientAccount returns the grant's client account, creating it and wiring its imports from
// the data account on first use. An account's imports never change: a different grant gets a
// different account.
func (a *authenticator) clientAccount(g NativeGrant) (*server.Account, error) {
	data, err := a.srv.LookupAccount(g.DataAccount)
	if err != nil || !data.JetStreamEnabled() {
		return nil, fmt.Errorf("data account %q not ready", g.DataAccount)
	}
	a.wiring.Lock()
	defer a.wiring.Unlock()
	if a.wired == nil {
		a.wired = map[string]bool{}
	}
	acc, _ := a.srv.LookupOrRegisterAccount(g.Account)
	if a.loginAccounts == nil {
		a.loginAccounts = map[string]bool{}
	}
	a.loginAccounts[g.Account] = true
	if !a.wired["limits|"+g.Account] {
		// Claims first: applying claims later would drop the imports.
		if err := applyLimits(a.srv, acc, g.Limits); err != nil {
			return nil, err
		}
		a.wired["limits|"+g.Account] = true
	}
	for _, im := range g.Imports {
		if k := "export|" + g.DataAccount + "|" + im.Remote; !a.wired[k] {
			rt := server.Singleton
			if im.Streamed {
				rt = server.Streamed
			}
			// Public within the engine: only Penstock creates imports.
			if err := data.AddServiceExportWithResponse(im.Remote, rt, nil); err != nil {
				return nil, fmt.Errorf("export %s: %w", im.Remote, err)
			}
			a.wired[k] = true
		}
		if k := "import|" + g.Account + "|" + im.Local; !a.wired[k] {
			if err := acc.AddServiceImport(data, im.Local, im.Remote); err != nil {
				return nil, fmt.Errorf("import %s: %w", im.Local, err)
			}
			a.wired[k] = true
		}
	}
	for _, f := range g.Feeds {
		if k := "stream|" + g.DataAccount + "|" + f; !a.wired[k] {
			if err := data.AddStreamExport(f, nil); err != nil {
				return nil, fmt.Errorf("export feed %s: %w", f, err)
			}
			a.wired[k] = true
		}
		if k := "feed|" + g.Account + "|" + f; !a.wired[k] {
			if err := acc.AddStreamImport(data, f, strings.TrimSuffix(FeedPrefix, ".")); err != nil {
				return nil, fmt.Errorf("import feed %s: %w", f, err)
			}
			a.wired[k] = true
		}
	}
	return acc, nil
}
