package engine

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/penstock/penstock/internal/redact"
)

// Cluster joins the embedded engine to the engines of other Penstock nodes: one NATS cluster
// whose routes use mutual TLS and the cluster credential, with JetStream clustered (Raft).
type Cluster struct {
	Name      string
	Node      string // this node's server name; the engine's Raft peer is derived from it
	Tags      []string
	Listen    string // host:port for routes
	Advertise string // host:port the others reach this node at ("" = Listen)
	Peers     []string
	// TLS is the route configuration: this node's certificate, and the platform CA both to
	// verify the nodes that dial in (client certificates are required) and the nodes dialed.
	TLS *tls.Config
	// Credential is the password every route presents, as user RouteUser.
	Credential redact.Secret
	// Placement, when set, names the placement tags of an account's streams and buckets.
	Placement func(account string) []string
	// TenantLimits are applied to every tenant account as this node registers it.
	TenantLimits AccountLimits
}

// RouteUser is the user name routes present with the cluster credential.
const RouteUser = "penstock-node"

// AccountsFile, in the data directory, lists the accounts this node has registered in its
// cluster's engine. They are declared to the engine before it starts, so the Raft log it
// replays never names an account the engine does not know.
const AccountsFile = "engine-accounts.json"

// accountSubject, in the platform account, is where a node asks every node to register an
// account before the account's first stream exists.
const accountSubject = "penstock.engine.account"

// registerWait bounds how long an account's registration waits for every node to answer.
const registerWait = 10 * time.Second

// ErrNodesMissing means an account cannot be created: not every node of the cluster answered
// its registration, and a stream placed on a node that does not know its account would never
// start there.
var ErrNodesMissing = errors.New("not every node of the cluster registered the account")

func (c *Cluster) size() int { return 1 + len(c.Peers) }

// applyCluster sets the server options of a clustered node.
func applyCluster(opts *server.Options, c *Cluster, known []string) error {
	host, port, err := net.SplitHostPort(c.Listen)
	if err != nil {
		return fmt.Errorf("cluster.listen: %w", err)
	}
	if c.TLS == nil || c.Credential.IsZero() {
		return errors.New("cluster: routes need the platform CA's node certificate and the cluster credential (penstock cluster join)")
	}
	// Accounts are declared the way a configuration file declares them: the only way to give
	// the engine accounts with JetStream before it starts replaying its Raft log.
	var conf strings.Builder
	conf.WriteString("accounts {\n")
	for _, name := range known {
		if !accountName.MatchString(name) {
			return fmt.Errorf("%s: account %q is not an account name", AccountsFile, name)
		}
		fmt.Fprintf(&conf, "  %q: { jetstream: enabled }\n", name)
	}
	conf.WriteString("}\n")
	if err := opts.ProcessConfigString(conf.String()); err != nil {
		return fmt.Errorf("declare accounts: %w", err)
	}
	opts.ServerName = c.Node
	opts.Tags = append(opts.Tags[:0], c.Tags...)
	opts.Cluster = server.ClusterOpts{
		Name:        c.Name,
		Host:        host,
		Username:    RouteUser,
		Password:    c.Credential.Reveal(),
		AuthTimeout: 5,
		TLSConfig:   c.TLS,
		TLSTimeout:  5,
		Advertise:   c.Advertise,
		// Clients are not told about the other nodes' client ports: they are given each
		// node's address by their operator.
		NoAdvertise: true,
	}
	opts.Cluster.Port, _ = strconv.Atoi(port)
	if opts.Cluster.Port == 0 {
		opts.Cluster.Port = server.RANDOM_PORT
	}
	// The routes name this node too, as the engine's own configurations do: it counts them to
	// know the size of the cluster it bootstraps (and ignores the route to itself).
	self := c.Advertise
	if self == "" {
		self = c.Listen
	}
	for _, p := range append([]string{self}, c.Peers...) {
		u := &url.URL{Scheme: "nats-route", Host: p, User: url.UserPassword(RouteUser, c.Credential.Reveal())}
		opts.Routes = append(opts.Routes, u)
	}
	return nil
}

// accountList is the accounts a clustered node has registered, kept in AccountsFile.
type accountList struct {
	path string
	mu   sync.Mutex
	set  map[string]bool
}

func loadAccountList(dataDir string) (*accountList, error) {
	l := &accountList{path: filepath.Join(dataDir, AccountsFile), set: map[string]bool{PlatformAccount: true}}
	b, err := os.ReadFile(l.path)
	if errors.Is(err, os.ErrNotExist) {
		return l, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	if err := json.Unmarshal(b, &names); err != nil {
		return nil, fmt.Errorf("%s: %w", l.path, err)
	}
	for _, n := range names {
		l.set[n] = true
	}
	return l, nil
}

func (l *accountList) names() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]string, 0, len(l.set))
	for n := range l.set {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func (l *accountList) has(name string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.set[name]
}

// add records name, on disk before it returns.
func (l *accountList) add(name string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.set[name] {
		return nil
	}
	l.set[name] = true
	names := make([]string, 0, len(l.set))
	for n := range l.set {
		names = append(names, n)
	}
	sort.Strings(names)
	b, _ := json.Marshal(names)
	if err := writeFileSynced(l.path, b); err != nil {
		delete(l.set, name)
		return err
	}
	return nil
}

func writeFileSynced(path string, b []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// register makes the account known to this node's engine, with JetStream, and records it.
func (em *embedded) register(name string) error {
	if !accountName.MatchString(name) {
		return fmt.Errorf("account name %q", name)
	}
	em.limitsMu.Lock()
	l := em.limits
	em.limitsMu.Unlock()
	if l != nil && name != PlatformAccount {
		if err := em.setLimits(name, *l); err != nil { // enables JetStream too
			return fmt.Errorf("limits: %w", err)
		}
	}
	acc, _ := em.ns.LookupOrRegisterAccount(name)
	if !acc.JetStreamEnabled() {
		if err := acc.EnableJetStream(nil, nil); err != nil {
			return fmt.Errorf("enable jetstream: %w", err)
		}
	}
	return em.accounts.add(name)
}

// serveRegistrations answers other nodes' account registrations on the platform account.
func (em *embedded) serveRegistrations(nc *nats.Conn, node string) error {
	_, err := nc.Subscribe(accountSubject, func(m *nats.Msg) {
		answer := "ok " + node
		if err := em.register(string(m.Data)); err != nil {
			answer = "error " + node + ": " + err.Error()
		}
		_ = m.Respond([]byte(answer))
	})
	if err != nil {
		return err
	}
	return nc.Flush()
}

// accountsBucket, in the platform account, records every account whose registration every
// node confirmed. A node that starts and finds one it does not know missed it while it was
// away (or has a new disk): its engine skipped that account's stream assignments, so it
// restarts its engine once with the account declared.
const accountsBucket = "penstock_engine_accounts"

// registerEverywhere asks every node of the cluster to register the account and returns once
// all have, or ErrNodesMissing. An account the cluster confirmed before is only registered
// here.
func (em *embedded) registerEverywhere(ctx context.Context, plat *nats.Conn, confirmed jetstream.KeyValue, name string) error {
	if _, err := confirmed.Get(ctx, name); err == nil {
		return em.register(name)
	} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return err
	}
	want := em.cluster.size()
	inbox := plat.NewRespInbox()
	sub, err := plat.SubscribeSync(inbox)
	if err != nil {
		return err
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := plat.PublishRequest(accountSubject, inbox, []byte(name)); err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, registerWait)
	defer cancel()
	answered := map[string]bool{}
	var failures []string
	for len(answered) < want {
		m, err := sub.NextMsgWithContext(rctx)
		if err != nil {
			break
		}
		ans := string(m.Data)
		switch {
		case strings.HasPrefix(ans, "ok "):
			answered[strings.TrimPrefix(ans, "ok ")] = true
		case strings.HasPrefix(ans, "error "):
			failures = append(failures, strings.TrimPrefix(ans, "error "))
		}
	}
	if len(answered) < want {
		nodes := make([]string, 0, len(answered))
		for n := range answered {
			nodes = append(nodes, n)
		}
		slices.Sort(nodes)
		return fmt.Errorf("%w: %d of %d answered (%s)%s", ErrNodesMissing, len(answered), want,
			strings.Join(nodes, ", "), failureList(failures))
	}
	if _, err := confirmed.Put(ctx, name, []byte(em.cluster.Node)); err != nil {
		return fmt.Errorf("record the account's registration: %w", err)
	}
	return nil
}

// missedAccounts lists the accounts the cluster confirmed that this node has not registered.
func (em *embedded) missedAccounts(ctx context.Context, confirmed jetstream.KeyValue) ([]string, error) {
	lister, err := confirmed.ListKeys(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for k := range lister.Keys() {
		if accountName.MatchString(k) && !em.accounts.has(k) {
			out = append(out, k)
		}
	}
	return out, nil
}

func failureList(f []string) string {
	if len(f) == 0 {
		return ""
	}
	return "; " + strings.Join(f, "; ")
}

// clusterJS gives every stream and bucket an account creates the cluster's replication and
// the account's placement, unless the configuration names its own.
type clusterJS struct {
	jetstream.JetStream
	replicas  int
	placement []string
}

func (c clusterJS) stream(cfg jetstream.StreamConfig) jetstream.StreamConfig {
	if cfg.Replicas == 0 {
		cfg.Replicas = c.replicas
	}
	if cfg.Placement == nil && len(c.placement) > 0 {
		cfg.Placement = &jetstream.Placement{Tags: c.placement}
	}
	return cfg
}

func (c clusterJS) kv(cfg jetstream.KeyValueConfig) jetstream.KeyValueConfig {
	if cfg.Replicas == 0 {
		cfg.Replicas = c.replicas
	}
	if cfg.Placement == nil && len(c.placement) > 0 {
		cfg.Placement = &jetstream.Placement{Tags: c.placement}
	}
	return cfg
}

func (c clusterJS) CreateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	return c.JetStream.CreateStream(ctx, c.stream(cfg))
}

func (c clusterJS) UpdateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	return c.JetStream.UpdateStream(ctx, c.stream(cfg))
}

func (c clusterJS) CreateOrUpdateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	return retryLost(ctx, c.placement == nil, func(ctx context.Context) (jetstream.Stream, error) {
		return c.JetStream.CreateOrUpdateStream(ctx, c.stream(cfg))
	})
}

func (c clusterJS) CreateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	return c.JetStream.CreateKeyValue(ctx, c.kv(cfg))
}

func (c clusterJS) UpdateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	return c.JetStream.UpdateKeyValue(ctx, c.kv(cfg))
}

// CreateOrUpdateKeyValue defines the bucket's stream as the client library would, but
// without direct gets, and returns it once this node can use it. A direct get may be answered
// by any replica, which may not have applied the last writes yet: a node that wrote a key and
// read it back could miss its own write. Without direct gets every read goes to the stream's
// leader, which has applied everything it acknowledged.
func (c clusterJS) CreateOrUpdateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	cfg = c.kv(cfg)
	scfg, ok := leaderReadKV(cfg)
	if !ok {
		return retryLost(ctx, c.placement == nil, func(ctx context.Context) (jetstream.KeyValue, error) {
			return c.JetStream.CreateOrUpdateKeyValue(ctx, cfg)
		})
	}
	scfg.AllowDirect = keptDirect(ctx, c.JetStream, scfg.Name)
	if _, err := c.CreateOrUpdateStream(ctx, scfg); err != nil {
		return nil, err
	}
	return definedKeyValue(ctx, c.JetStream, cfg.Bucket)
}

// keptDirect is whether an existing bucket stream allows direct gets: such a bucket keeps
// them. Nodes of an earlier version read it with direct gets (the client decides from the
// stream's settings when it opens the bucket) and would fail every read, during a rolling
// upgrade, if a new node turned them off. Buckets created since read from their leader.
func keptDirect(ctx context.Context, js jetstream.JetStream, stream string) bool {
	ctx, cancel := context.WithTimeout(ctx, attemptWait)
	defer cancel()
	st, err := js.Stream(ctx, stream)
	if err != nil {
		return false
	}
	return st.CachedInfo().Config.AllowDirect
}

// definedKeyValue opens a bucket just defined. Right after a definition (this node's, or
// another's a moment before) the engine may not know the bucket yet here (or have no
// responder for it): it asks again. Only for a bucket known to exist: a
// lookup of one that may not exist must not wait.
func definedKeyValue(ctx context.Context, js jetstream.JetStream, bucket string) (jetstream.KeyValue, error) {
	// An answer lost (a node catching up after a restart) is asked again for as long as the
	// caller waits, as retryLost does; "not found" or "no responders" for up to peersWait.
	notYetUntil := time.Now().Add(peersWait)
	for {
		actx, acancel := context.WithTimeout(ctx, attemptWait)
		kv, err := js.KeyValue(actx, bucket)
		lost := err != nil && actx.Err() != nil && ctx.Err() == nil
		acancel()
		switch {
		case err == nil:
			return kv, nil
		case lost:
			continue
		case !notYet(err) || time.Now().After(notYetUntil) || ctx.Err() != nil:
			return kv, err
		}
		select {
		case <-ctx.Done():
			return kv, err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// WrongLastSequence tells a refused compare-and-set write (an expected last sequence that
// another writer moved): code 10071 from a stream of one replica, 10164 from a replicated one.
func WrongLastSequence(err error) bool {
	var api *jetstream.APIError
	return errors.As(err, &api) && (api.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		api.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// notYet tells the errors of a stream another node has just defined.
func notYet(err error) bool {
	return errors.Is(err, jetstream.ErrBucketNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout)
}

// leaderReadKV is the stream of a KV bucket as the client library defines it (limits, history,
// TTL, rollups, no deletes, discard new), with AllowDirect off. ok is false for settings it
// does not translate; the library's own definition is used then.
func leaderReadKV(cfg jetstream.KeyValueConfig) (jetstream.StreamConfig, bool) {
	if cfg.Mirror != nil || len(cfg.Sources) > 0 || cfg.RePublish != nil || cfg.LimitMarkerTTL != 0 || cfg.Compression || cfg.History > jetstream.KeyValueMaxHistory {
		return jetstream.StreamConfig{}, false
	}
	orNone := func(n int64) int64 {
		if n == 0 {
			return -1
		}
		return n
	}
	dup := 2 * time.Minute
	if cfg.TTL > 0 && cfg.TTL < dup {
		dup = cfg.TTL
	}
	return jetstream.StreamConfig{
		Name:              "KV_" + cfg.Bucket,
		Description:       cfg.Description,
		Subjects:          []string{"$KV." + cfg.Bucket + ".>"},
		MaxMsgsPerSubject: int64(max(cfg.History, 1)),
		MaxBytes:          orNone(cfg.MaxBytes),
		MaxAge:            cfg.TTL,
		MaxMsgSize:        int32(orNone(int64(cfg.MaxValueSize))),
		Storage:           cfg.Storage,
		Replicas:          cfg.Replicas,
		Placement:         cfg.Placement,
		AllowRollup:       true,
		DenyDelete:        true,
		Duplicates:        dup,
		MaxMsgs:           -1,
		MaxConsumers:      -1,
		AllowDirect:       false,
		Discard:           jetstream.DiscardNew,
		Metadata:          cfg.Metadata,
	}, true
}

// attemptWait bounds one attempt of a definition that may be retried.
const attemptWait = 5 * time.Second

// retryLost repeats an idempotent definition (create or update) whose answer did not come:
// when nodes define the same stream at once (every node opens the platform's buckets as it
// starts), the engine answers some of the requests only.
//
// "JetStream system temporarily unavailable" is retried for up to peersWait; with waitPeers
// (a definition without placement tags), "no suitable peers" too: while the nodes start
// together, the leader may not know yet that the others run JetStream, and the cluster's size
// is checked against the replicas at start.
func retryLost[T any](ctx context.Context, waitPeers bool, do func(context.Context) (T, error)) (T, error) {
	peersUntil := time.Now().Add(peersWait)
	for {
		actx, cancel := context.WithTimeout(ctx, attemptWait)
		v, err := do(actx)
		lost := err != nil && actx.Err() != nil && ctx.Err() == nil
		cancel()
		if !lost && (waitPeers && noPeers(err) || unavailable(err)) && time.Now().Before(peersUntil) {
			select {
			case <-ctx.Done():
				return v, err
			case <-time.After(250 * time.Millisecond):
			}
			continue
		}
		if !lost {
			return v, err
		}
	}
}

// peersWait bounds how long a definition waits for the engine to know enough peers.
const peersWait = 30 * time.Second

// unavailable tells the engine's "JetStream system temporarily unavailable" (10008), which a
// node answers while its JetStream catches up with the cluster (at start, after a leader
// change): asked again, the same request succeeds.
func unavailable(err error) bool {
	var api *jetstream.APIError
	return errors.As(err, &api) && api.ErrorCode == 10008
}

// noPeers tells the engine's "no suitable peers for placement".
func noPeers(err error) bool {
	var api *jetstream.APIError
	return errors.As(err, &api) && api.ErrorCode == 10005 // JSClusterNoPeersErrF
}

// joinWait bounds how long a starting node waits for its cluster's JetStream to elect a
// leader (the other nodes may be starting too).
const joinWait = 2 * time.Minute

// joinCluster waits until this node's JetStream is current with the cluster's meta leader.
func (e *Engine) joinCluster(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, joinWait)
	defer cancel()
	ns := e.embedded.ns
	last := time.Now()
	for !ns.JetStreamIsCurrent() {
		if time.Since(last) > 5*time.Second {
			e.log.Info("waiting for the cluster's JetStream leader", "peers", e.embedded.cluster.Peers)
			last = time.Now()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster %s: no JetStream leader after %s: are a majority of the nodes (%s) started and reachable?",
				e.embedded.cluster.Name, joinWait, strings.Join(e.embedded.cluster.Peers, ", "))
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

// ClusterStatus is a node's view of its cluster.
type ClusterStatus struct {
	Name   string `json:"name"`
	Node   string `json:"node"`
	Leader string `json:"meta_leader"` // the node that places streams; "" without a majority
	// Nodes are the engine's peers as this node sees them, itself included.
	Nodes  []PeerStatus `json:"nodes"`
	Routes int          `json:"routes"` // route connections to other nodes
	// Streams lists every stream with a replica on this node. Lagging marks one without a
	// leader or, when led by this node, with a replica that is not current: only a stream's
	// leader knows that, so a whole picture takes every node's status.
	Streams []StreamReplicas `json:"streams"`
}

// PeerStatus is one node of the cluster.
type PeerStatus struct {
	Name    string        `json:"name"`
	Current bool          `json:"current"`
	Offline bool          `json:"offline,omitempty"`
	Lag     uint64        `json:"lag,omitempty"`
	Active  time.Duration `json:"active_ns,omitempty"`
}

// StreamReplicas is where one stream's replicas are and how current they are.
type StreamReplicas struct {
	Account  string       `json:"account"`
	Stream   string       `json:"stream"`
	Leader   string       `json:"leader"`
	Replicas []PeerStatus `json:"replicas"`
	Lagging  bool         `json:"lagging"`
}

// ErrNotClustered is returned by cluster operations on a single node.
var ErrNotClustered = errors.New("this node is not part of a cluster (cluster.listen is not set)")

// Clustered reports whether the engine is a node of a cluster.
func (e *Engine) Clustered() bool { return e.embedded != nil && e.embedded.cluster != nil }

// ClusterStatus reports the cluster as this node sees it.
func (e *Engine) ClusterStatus() (ClusterStatus, error) {
	if !e.Clustered() {
		return ClusterStatus{}, ErrNotClustered
	}
	ns := e.embedded.ns
	st := ClusterStatus{Name: e.embedded.cluster.Name, Node: e.embedded.cluster.Node, Routes: ns.NumRoutes()}
	jsz, err := ns.Jsz(&server.JSzOptions{Accounts: true, Streams: true, Limit: 1 << 30})
	if err != nil {
		return st, err
	}
	if m := jsz.Meta; m != nil {
		st.Leader = m.Leader
		st.Nodes = append(st.Nodes, PeerStatus{Name: st.Node, Current: ns.JetStreamIsCurrent()})
		for _, p := range m.Replicas {
			st.Nodes = append(st.Nodes, peerStatus(p))
		}
	}
	for _, a := range jsz.AccountDetails {
		for _, s := range a.Streams {
			r := StreamReplicas{Account: a.Name, Stream: s.Name}
			if c := s.Cluster; c != nil {
				r.Leader = c.Leader
				for _, p := range c.Replicas {
					ps := peerStatus(p)
					// Only a stream's leader knows how current its replicas are.
					r.Lagging = r.Lagging || (r.Leader == st.Node && !ps.Current)
					r.Replicas = append(r.Replicas, ps)
				}
			}
			r.Lagging = r.Lagging || r.Leader == ""
			st.Streams = append(st.Streams, r)
		}
	}
	sort.Slice(st.Streams, func(i, j int) bool {
		if st.Streams[i].Account != st.Streams[j].Account {
			return st.Streams[i].Account < st.Streams[j].Account
		}
		return st.Streams[i].Stream < st.Streams[j].Stream
	})
	return st, nil
}

func peerStatus(p *server.PeerInfo) PeerStatus {
	return PeerStatus{Name: p.Name, Current: p.Current, Offline: p.Offline, Lag: p.Lag, Active: p.Active}
}

// KnownAccounts lists the accounts the node with dataDir has registered (its AccountsFile).
func KnownAccounts(dataDir string) ([]string, error) {
	l, err := loadAccountList(dataDir)
	if err != nil {
		return nil, err
	}
	return l.names(), nil
}

// DeclareAccounts records names as accounts of the node with dataDir before its engine first
// starts (a node joining a cluster with a join token): its engine then knows them when it
// replays the cluster's log.
func DeclareAccounts(dataDir string, names []string) error {
	l, err := loadAccountList(dataDir)
	if err != nil {
		return err
	}
	for _, n := range names {
		if !accountName.MatchString(n) {
			return fmt.Errorf("account %q is not an account name", n)
		}
		if err := l.add(n); err != nil {
			return err
		}
	}
	return nil
}
