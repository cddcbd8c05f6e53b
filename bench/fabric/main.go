// Command fabric measures Penstock's message fabric beside its peers, in one run on one
// machine: raw JetStream (nats.go against a plain embedded nats-server) with lazy fsync,
// fsync per message, and fsync per atomic batch of 500; Penstock's native NATS access with a
// tenant API key at the same settings; Penstock's HTTPS API in its durable mode with 64
// clients publishing batches or single messages; and RabbitMQ (quorum queue, publisher
// confirms, manual acks) on 127.0.0.1:5672. Each run publishes and consumes at once, stamping
// every message, so the figures are end-to-end: messages/s through the queue, MB/s of
// payload, and publish-to-deliver latency.
//
//	go run ./bench/fabric [-n 20000] [-sizes 128,1024] [-skip-rabbitmq] [-only https -commit-window 5ms -max-commit 1000]
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/penstock/penstock/internal/api"
	"github.com/penstock/penstock/internal/audit"
	"github.com/penstock/penstock/internal/authz"
	"github.com/penstock/penstock/internal/certs"
	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/edge"
	"github.com/penstock/penstock/internal/engine"
	"github.com/penstock/penstock/internal/fabric"
	"github.com/penstock/penstock/internal/identity"
	"github.com/penstock/penstock/internal/keyring/keyringtest"
	"github.com/penstock/penstock/internal/secrets"
)

var (
	ctx          = context.Background()
	commitWindow *time.Duration
	maxCommit    *int
	inFlight     *int
	groupSync    *bool
)

type result struct {
	name    string
	msgs    int
	size    int
	elapsed time.Duration
	// pubElapsed is when the last publish was acknowledged (at most elapsed).
	pubElapsed time.Duration
	p50, p99   time.Duration
	note       string
}

func (r result) pubRate() float64 { return float64(r.msgs) / r.pubElapsed.Seconds() }

func (r result) rate() float64 { return float64(r.msgs) / r.elapsed.Seconds() }
func (r result) mbs() float64  { return r.rate() * float64(r.size) / 1e6 }

// payload is size bytes: the send time in nanoseconds, then padding.
func payload(size int) []byte {
	b := make([]byte, size)
	for i := range b {
		b[i] = 'x'
	}
	stamp(b)
	return b
}

func stamp(b []byte) {
	s := strconv.FormatInt(time.Now().UnixNano(), 10)
	copy(b, s+"|")
}

func sentAt(b []byte) time.Time {
	s, _, _ := bytes.Cut(b, []byte("|"))
	n, _ := strconv.ParseInt(string(s), 10, 64)
	return time.Unix(0, n)
}

// latencies collects publish-to-deliver times.
type latencies struct {
	mu  sync.Mutex
	all []time.Duration
}

func (l *latencies) add(d time.Duration) {
	l.mu.Lock()
	l.all = append(l.all, d)
	l.mu.Unlock()
}

func (l *latencies) pct() (time.Duration, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.all) == 0 {
		return 0, 0
	}
	slices.Sort(l.all)
	return l.all[len(l.all)/2], l.all[len(l.all)*99/100]
}

func main() {
	n := flag.Int("n", 20000, "messages per run")
	sizesFlag := flag.String("sizes", "128,1024", "payload sizes in bytes")
	skipRabbit := flag.Bool("skip-rabbitmq", false, "leave out the RabbitMQ peer")
	only := flag.String("only", "", "run only the HTTPS runs (https), the native ones (native), the closed-loop single-message runs (closed-loop), the engine's commit cost (commit-cost), or what retention's activity tracking costs a publish (activity)")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the run here")
	commitWindow = flag.Duration("commit-window", -1, "fabric.commit_window for the HTTPS runs (default: the configuration default)")
	maxCommit = flag.Int("max-commit", 0, "fabric.max_commit for the HTTPS runs (default: the configuration default)")
	inFlight = flag.Int("commits-in-flight", 0, "fabric.commits_in_flight for the HTTPS runs (default: the configuration default)")
	groupSync = flag.Bool("group-sync", true, "engine.group_sync for Penstock's runs at sync always (false: the engine's fsync per write)")
	clients := flag.Int("clients", 64, "closed-loop publishers (-only closed-loop)")
	cluster := flag.Int("cluster", 0, "run the cluster figures instead: this many nodes (3) beside one, for 1 queue and for -cluster-queues queues")
	clusterQueues := flag.Int("cluster-queues", 6, "-cluster: the second run spreads the load over this many queues")
	flag.Parse()
	if *loadFlag != "" {
		loadMain(*loadFlag)
		return
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			log.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			log.Fatal(err)
		}
		defer pprof.StopCPUProfile()
	}
	if *cluster > 0 {
		if *cluster < 2 {
			log.Fatal("-cluster: at least 2 nodes")
		}
		if err := clusterRuns(*cluster, *n, 1024, []int{1, *clusterQueues}, *skipRabbit); err != nil {
			log.Fatal(err)
		}
		return
	}
	if *only == "closed-loop" {
		if err := closedLoop(*n, 1024, *clients, *skipRabbit); err != nil {
			log.Fatal(err)
		}
		return
	}
	if *only == "activity" {
		if err := activityCost(*n); err != nil {
			log.Fatal(err)
		}
		return
	}
	if *only == "commit-cost" {
		if err := commitCost(1024); err != nil {
			log.Fatal(err)
		}
		return
	}
	if *only == "native" {
		for _, mode := range []string{"lazy", "always", "batch"} {
			r, err := penstockNative(*n, 1024, mode)
			if err != nil {
				log.Fatal(err)
			}
			fmt.Printf("%-58s %10.0f msgs/s end to end, %10.0f published/s, p50 %s p99 %s\n", r.name, r.rate(), r.pubRate(), r.p50, r.p99)
		}
		return
	}
	if *only == "https" {
		for _, size := range []int{1024} {
			b, s, err := penstockHTTPS(*n, size)
			if err != nil {
				log.Fatal(err)
			}
			for _, r := range []result{b, s} {
				fmt.Printf("%-58s %10.0f msgs/s end to end, %10.0f published/s, p50 %s p99 %s; %s\n", r.name, r.rate(), r.pubRate(), r.p50, r.p99, r.note)
			}
		}
		return
	}
	var sizes []int
	for _, s := range strings.Split(*sizesFlag, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || v < 32 {
			log.Fatalf("-sizes: %q", s)
		}
		sizes = append(sizes, v)
	}
	fmt.Printf("bench/fabric: %d messages per run, publish and consume concurrently, end to end\n", *n)
	for _, size := range sizes {
		var rs []result
		add := func(r result, err error) result {
			if err != nil {
				log.Fatalf("%s: %v", r.name, err)
			}
			rs = append(rs, r)
			return r
		}
		aLazy := add(rawJetStream(*n, size, "lazy"))
		aAlways := add(rawJetStream(*n/4, size, "always"))
		aBatch := add(rawJetStream(*n, size, "batch"))
		bLazy := add(penstockNative(*n, size, "lazy"))
		bAlways := add(penstockNative(*n/4, size, "always"))
		bBatch := add(penstockNative(*n, size, "batch"))
		cBatch, cSingle, err := penstockHTTPS(*n, size)
		add(cBatch, err)
		add(cSingle, err)
		var d result
		if !*skipRabbit {
			d = add(rabbitMQ(*n, size))
		}
		fmt.Printf("\n%d-byte messages\n\n", size)
		fmt.Printf("%-58s %10s %8s %10s %10s %12s\n", "", "msgs/s", "MB/s", "p50", "p99", "publish/s")
		for _, r := range rs {
			fmt.Printf("%-58s %10.0f %8.2f %10s %10s %12.0f\n", r.name, r.rate(), r.mbs(), r.p50.Round(10*time.Microsecond), r.p99.Round(10*time.Microsecond), r.pubRate())
		}
		fmt.Printf("\nratios\n")
		ratio := func(label string, a, b result, target float64) {
			mark := "meets"
			if a.rate()/b.rate() < target {
				mark = "BELOW"
			}
			fmt.Printf("  %-62s %6.2f  (target >= %.1f: %s)\n", label, a.rate()/b.rate(), target, mark)
		}
		ratio("(b) native / (a) raw, lazy fsync", bLazy, aLazy, 0.9)
		ratio("(b) native / (a) raw, fsync per message", bAlways, aAlways, 0.9)
		ratio("(b) native / (a) raw, fsync per batch of 500", bBatch, aBatch, 0.9)
		ratio("(c) HTTPS durable batches / (a) raw lazy fsync", cBatch, aLazy, 0.6)
		ratio("(c) HTTPS durable single, 64 clients / (a) raw fsync per message", cSingle, aAlways, 10)
		if !*skipRabbit {
			ratio("(c) HTTPS durable batches / (d) RabbitMQ", cBatch, d, 2)
			ratio("(c) HTTPS durable single, 64 clients / (d) RabbitMQ", cSingle, d, 2)
		}
	}
}

// pipeline runs publish and consume at once until n messages are consumed.
func pipeline(name string, n, size int, pub func(stop <-chan struct{}) error, con func(lat *latencies, done func(int) bool) error) (result, error) {
	lat := &latencies{}
	var got atomic.Int64
	stop := make(chan struct{})
	finished := make(chan struct{})
	var once sync.Once
	done := func(k int) bool {
		if got.Add(int64(k)) >= int64(n) {
			once.Do(func() { close(finished) })
			return true
		}
		return false
	}
	start := time.Now()
	perr := make(chan error, 1)
	var pubElapsed atomic.Int64
	go func() {
		err := pub(stop)
		pubElapsed.Store(int64(time.Since(start)))
		perr <- err
	}()
	cerr := make(chan error, 1)
	go func() { cerr <- con(lat, done) }()
	var pubDone error
	published := false
	select {
	case <-finished:
	case err := <-cerr:
		close(stop)
		return result{name: name}, fmt.Errorf("consumer: %w", err)
	case pubDone = <-perr:
		published = true
		if pubDone != nil {
			close(stop)
			return result{name: name}, fmt.Errorf("publisher: %w", pubDone)
		}
		// Published everything: wait for the consumer.
		select {
		case <-finished:
		case err := <-cerr:
			return result{name: name}, fmt.Errorf("consumer: %w", err)
		case <-time.After(5 * time.Minute):
			return result{name: name}, errors.New("timed out consuming")
		}
	case <-time.After(10 * time.Minute):
		close(stop)
		return result{name: name}, errors.New("timed out")
	}
	elapsed := time.Since(start)
	close(stop)
	if !published {
		if err := <-perr; err != nil {
			return result{name: name}, fmt.Errorf("publisher: %w", err)
		}
	}
	p50, p99 := lat.pct()
	pe := time.Duration(pubElapsed.Load())
	if pe == 0 || pe > elapsed {
		pe = elapsed
	}
	return result{name: name, msgs: n, size: size, elapsed: elapsed, pubElapsed: pe, p50: p50, p99: p99}, nil
}

// asyncFailed stops the run: an asynchronous publish the engine did not acknowledge would
// leave the consumer waiting for it.
func asyncFailed(_ jetstream.JetStream, m *nats.Msg, err error) {
	log.Fatalf("async publish to %s not acknowledged: %v", m.Subject, err)
}

// natsPublisher publishes n messages to subject: asynchronously (lazy and always), or as
// atomic batches of 500 (batch), each batch committed before the next.
func natsPublisher(nc *nats.Conn, js jetstream.JetStream, subject string, n, size int, mode string) func(<-chan struct{}) error {
	return func(stop <-chan struct{}) error {
		if mode == "batch" {
			for sent := 0; sent < n; {
				k := min(500, n-sent)
				id := nuid.Next()
				for i := range k {
					m := nats.NewMsg(subject)
					m.Data = payload(size)
					m.Header.Set("Nats-Batch-Id", id)
					m.Header.Set("Nats-Batch-Sequence", strconv.Itoa(i+1))
					if i == k-1 {
						m.Header.Set("Nats-Batch-Commit", "1")
						resp, err := nc.RequestMsg(m, 30*time.Second)
						if err != nil {
							return err
						}
						if bytes.Contains(resp.Data, []byte(`"error"`)) {
							return fmt.Errorf("batch: %s", resp.Data)
						}
					} else if err := nc.PublishMsg(m); err != nil {
						return err
					}
				}
				sent += k
			}
			return nil
		}
		for i := range n {
			select {
			case <-stop:
				return nil
			default:
			}
			if _, err := js.PublishAsync(subject, payload(size), jetstream.WithStallWait(time.Minute)); err != nil {
				return fmt.Errorf("message %d: %w", i, err)
			}
		}
		select {
		case <-js.PublishAsyncComplete():
			return nil
		case <-time.After(5 * time.Minute):
			return errors.New("async publishes not acknowledged")
		}
	}
}

func natsConsumer(cons jetstream.Consumer) func(*latencies, func(int) bool) error {
	return func(lat *latencies, done func(int) bool) error {
		for {
			b, err := cons.Fetch(500, jetstream.FetchMaxWait(2*time.Second))
			if err != nil {
				return err
			}
			k := 0
			for m := range b.Messages() {
				lat.add(time.Since(sentAt(m.Data())))
				if err := m.Ack(); err != nil {
					return err
				}
				k++
			}
			if k > 0 && done(k) {
				return nil
			}
		}
	}
}

func streamConfig(name, subject string) jetstream.StreamConfig {
	return jetstream.StreamConfig{Name: name, Subjects: []string{subject}, Retention: jetstream.WorkQueuePolicy,
		Storage: jetstream.FileStorage, AllowAtomicPublish: true}
}

// rawJetStream is the peer: a plain embedded nats-server (no store encryption, no auth), over
// loopback TCP.
func rawJetStream(n, size int, mode string) (result, error) {
	name := map[string]string{"lazy": "(a) raw JetStream, lazy fsync (2 min)", "always": "(a) raw JetStream, fsync per message",
		"batch": "(a) raw JetStream, fsync per atomic batch of 500"}[mode]
	dir, _ := os.MkdirTemp("", "bench-fabric")
	defer os.RemoveAll(dir)
	opts := &server.Options{JetStream: true, StoreDir: dir, Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true,
		SyncInterval: 2 * time.Minute, SyncAlways: mode != "lazy"}
	ns, err := server.NewServer(opts)
	if err != nil {
		return result{name: name}, err
	}
	ns.Start()
	defer ns.Shutdown()
	if !ns.ReadyForConnections(10 * time.Second) {
		return result{name: name}, errors.New("server not ready")
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		return result{name: name}, err
	}
	defer nc.Close()
	js, _ := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096), jetstream.WithPublishAsyncErrHandler(asyncFailed))
	if _, err := js.CreateStream(ctx, streamConfig("Q", "q")); err != nil {
		return result{name: name}, err
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, "Q", jetstream.ConsumerConfig{Durable: "c", AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: -1})
	if err != nil {
		return result{name: name}, err
	}
	return pipeline(name, n, size, natsPublisher(nc, js, "q", n, size, mode), natsConsumer(cons))
}

// penstockStack is an embedded Penstock engine with native listeners, identity and fabric,
// and tenant acme's application shop with queue jobs.
type penstockStack struct {
	stack *keyringtest.Stack
	ids   *identity.Store
	fab   *fabric.Service
	cm    *certs.Manager
	roots *x509.CertPool
	key   string
	keyID string
	dir   string
	reg   *prometheus.Registry
	// syncs0 is the engine's group sync count when the measured load began.
	syncs0 uint64
}

// commits reports the group commits made: how many, messages per commit, and mean time.
func (p *penstockStack) commits() string {
	mfs, err := p.reg.Gather()
	if err != nil {
		return ""
	}
	var n, msgs, secs float64
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			h := m.GetHistogram()
			switch mf.GetName() {
			case "penstock_fabric_commit_messages":
				n, msgs = float64(h.GetSampleCount()), h.GetSampleSum()
			case "penstock_fabric_commit_seconds":
				secs = h.GetSampleSum()
			}
		}
	}
	if n == 0 {
		return "no group commits"
	}
	if p.stack.Engine.GroupSync() {
		syncs := float64(p.stack.Engine.Syncs() - p.syncs0)
		return fmt.Sprintf("%.0f group syncs, %.1f messages each; %.0f engine commits, %.1f messages and %.1f ms each (with the sync)",
			syncs, msgs/max(syncs, 1), n, msgs/n, secs/n*1000)
	}
	return fmt.Sprintf("%.0f group commits, %.1f messages each, %.1f ms each", n, msgs/n, secs/n*1000)
}

// mark starts the count of group syncs commits reports.
func (p *penstockStack) mark() { p.syncs0 = p.stack.Engine.Syncs() }

func openPenstock(sync string, fcfg config.Fabric) (*penstockStack, error) {
	dir, _ := os.MkdirTemp("", "bench-penstock")
	cm, err := certs.NewManager(dir, config.TLS{}, slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, err
	}
	pem, _ := os.ReadFile(cm.CAPath())
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	ecfg := config.Default().Engine
	ecfg.SyncInterval = sync
	ecfg.GroupSync = *groupSync
	st, err := keyringtest.OpenEngine(ctx, filepath.Join(dir, "data"), ecfg, engine.Native{NATSListen: "127.0.0.1:0", TLS: cm.TLSConfig()})
	if err != nil {
		return nil, err
	}
	icfg := identity.DefaultConfig()
	icfg.Argon2 = identity.Argon2Params{Memory: 19 << 10, Time: 1, Threads: 1}
	ids, err := identity.Open(ctx, st.Platform, st.Keyring, icfg, slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, err
	}
	if _, err := ids.CreateTenant(ctx, "acme"); err != nil {
		return nil, err
	}
	if _, err := ids.CreateApp(ctx, "acme", "production", "shop"); err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	fab, err := fabric.Open(ctx, fabric.Options{Engine: st.Engine, Identity: ids, Config: fcfg, Registry: reg, Activity: tracking})
	if err != nil {
		return nil, err
	}
	q := fabric.Ref{Tenant: "acme", Environment: "production", Application: "shop", Name: "jobs"}
	if _, err := fab.CreateQueue(ctx, q, fabric.QueueSpec{MaxDeliveries: 5}); err != nil {
		return nil, err
	}
	nk, err := ids.CreateAPIKey(ctx, "app:acme/production/shop", "bench", authz.Developer,
		authz.Scope{Tenant: "acme", Environment: "production", Application: "shop"}, time.Time{}, nil)
	if err != nil {
		return nil, err
	}
	return &penstockStack{stack: st, ids: ids, fab: fab, cm: cm, roots: roots, key: nk.Key.Reveal(), keyID: nk.Record.ID, dir: dir, reg: reg}, nil
}

func (p *penstockStack) close() {
	p.fab.Close()
	p.ids.Close()
	p.stack.Close()
	os.RemoveAll(p.dir)
}

// penstockNative: the same load through Penstock's native NATS listener (TLS, API key,
// store encryption, the tenant's account and permissions).
func penstockNative(n, size int, mode string) (result, error) {
	name := map[string]string{"lazy": "(b) Penstock native NATS, lazy fsync (2 min)", "always": "(b) Penstock native NATS, fsync per message",
		"batch": "(b) Penstock native NATS, fsync per atomic batch of 500"}[mode]
	sync := "always"
	if mode == "lazy" {
		sync = "2m"
	}
	p, err := openPenstock(sync, config.Default().Fabric)
	if err != nil {
		return result{name: name}, err
	}
	defer p.close()
	nc, err := nats.Connect("tls://"+p.stack.Engine.NativeAddrs().NATS, nats.UserInfo("acme/production", p.key),
		nats.Secure(&tls.Config{RootCAs: p.roots, ServerName: "localhost", MinVersion: tls.VersionTLS12}))
	if err != nil {
		return result{name: name}, err
	}
	defer nc.Close()
	js, _ := jetstream.NewWithAPIPrefix(nc, fabric.APIPrefix, jetstream.WithPublishAsyncMaxPending(4096), jetstream.WithPublishAsyncErrHandler(asyncFailed))
	cons, err := js.Consumer(ctx, "Q_shop_jobs", "shop")
	if err != nil {
		return result{name: name}, err
	}
	return pipeline(name, n, size, natsPublisher(nc, js, "shop.q.jobs", n, size, mode), natsConsumer(cons))
}

// serveAPI serves Penstock's HTTPS API over the stack (with its audit log, limits raised out
// of the way) on a loopback port, and returns the queue's base URL.
func (p *penstockStack) serveAPI() (string, func(), error) {
	store, err := secrets.New(ctx, p.stack.Keyring)
	if err != nil {
		return "", nil, err
	}
	nonces, err := identity.OpenNonces(ctx, p.stack.Platform)
	if err != nil {
		return "", nil, err
	}
	al, err := audit.Open(ctx, audit.Options{Platform: p.stack.Platform, Keyring: p.stack.Keyring, Retention: time.Hour})
	if err != nil {
		return "", nil, err
	}
	limits := config.Default().API.Limits
	limits.RequestRate, limits.RequestBurst, limits.ConnRate, limits.ConnBurst = 1e9, 1e9, 1e9, 1e9
	limits.MaxBodyBytes = 16 << 20
	reg := prometheus.NewRegistry()
	h, _ := api.Handler(api.Options{Version: "bench", Logger: slog.New(slog.DiscardHandler), Ready: p.stack.Engine, Limits: limits,
		Edge: edge.NewMetrics(reg), Registry: reg, Keyring: p.stack.Keyring, Master: p.stack.Master, Secrets: store,
		Identity: p.ids, Lockout: identity.NewLockout(), Nonces: nonces, Audit: al, Fabric: p.fab})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: h, TLSConfig: p.cm.TLSConfig()}
	go srv.ServeTLS(ln, "", "")
	return "https://" + ln.Addr().String() + "/v1/tenants/acme/environments/production/applications/shop/queues/jobs",
		func() { srv.Close(); al.Close(ctx) }, nil
}

// commitConfig is the fabric configuration with the group commit settings of the flags.
func commitConfig() config.Fabric {
	fcfg := config.Default().Fabric
	if *commitWindow >= 0 {
		fcfg.CommitWindow = *commitWindow
	}
	if *maxCommit > 0 {
		fcfg.MaxCommit = *maxCommit
	}
	if *inFlight > 0 {
		fcfg.CommitsInFlight = *inFlight
	}
	return fcfg
}

// penstockHTTPS: Penstock's HTTPS API in durable mode (fsync always, group commit), 64
// clients publishing batches of 100, then 64 clients publishing one message per request;
// 4 clients consume 500 at a time and acknowledge.
func penstockHTTPS(n, size int) (result, result, error) {
	run := func(name string, perReq int) (result, error) {
		p, err := openPenstock("always", commitConfig())
		if err != nil {
			return result{name: name}, err
		}
		defer p.close()
		base, stopAPI, err := p.serveAPI()
		if err != nil {
			return result{name: name}, err
		}
		defer stopAPI()
		client := &http.Client{Transport: &http.Transport{
			TLSClientConfig:     &tls.Config{RootCAs: p.roots, ServerName: "localhost"},
			MaxIdleConnsPerHost: 128, MaxConnsPerHost: 128,
		}}
		post := func(path string, body any) ([]byte, error) { return postTo(client, base+path, p.key, body) }
		var next atomic.Int64
		pub := func(stop <-chan struct{}) error {
			var wg sync.WaitGroup
			errs := make(chan error, 64)
			for range 64 {
				wg.Go(func() {
					for {
						start := next.Add(int64(perReq)) - int64(perReq)
						if start >= int64(n) {
							return
						}
						k := min(int64(perReq), int64(n)-start)
						msgs := make([]map[string]string, k)
						for i := range msgs {
							msgs[i] = map[string]string{"data": string(payload(size))}
						}
						if _, err := post("/messages", map[string]any{"messages": msgs}); err != nil {
							errs <- err
							return
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			return <-errs
		}
		con := func(lat *latencies, done func(int) bool) error {
			var wg sync.WaitGroup
			errs := make(chan error, 4)
			var finished atomic.Bool
			for range 4 {
				wg.Go(func() {
					for !finished.Load() {
						body, err := post("/consume", map[string]any{"max": 500, "wait_ms": 200})
						if err != nil {
							errs <- err
							return
						}
						var out struct {
							Messages []struct {
								AckToken string `json:"ack_token"`
								Data     string `json:"data"`
							} `json:"messages"`
						}
						if err := json.Unmarshal(body, &out); err != nil {
							errs <- err
							return
						}
						if len(out.Messages) == 0 {
							continue
						}
						tokens := make([]string, len(out.Messages))
						for i, m := range out.Messages {
							lat.add(time.Since(sentAt([]byte(m.Data))))
							tokens[i] = m.AckToken
						}
						if _, err := post("/ack", map[string]any{"tokens": tokens}); err != nil {
							errs <- err
							return
						}
						if done(len(tokens)) {
							finished.Store(true)
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			return <-errs
		}
		r, err := pipeline(name, n, size, pub, con)
		r.note = p.commits()
		return r, err
	}
	b, err := run("(c) Penstock HTTPS durable, 64 clients x batches of 100", 100)
	if err != nil {
		return b, result{}, err
	}
	s, err := run("(c) Penstock HTTPS durable, 64 clients x single messages", 1)
	return b, s, err
}

// rabbitMQ is the broker peer: a quorum queue on the machine's RabbitMQ, publisher confirms
// (up to 1000 unconfirmed), manual acknowledgements with prefetch 500.
func rabbitMQ(n, size int) (result, error) {
	name := "(d) RabbitMQ quorum queue, confirms, manual acks"
	conn, err := amqp.Dial("amqp://guest:guest@127.0.0.1:5672/")
	if err != nil {
		return result{name: name}, fmt.Errorf("%w (start it with: rabbitmq-server -detached, or run with -skip-rabbitmq)", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return result{name: name}, err
	}
	qname := "penstock-bench-" + nuid.Next()
	if _, err := ch.QueueDeclare(qname, true, false, false, false, amqp.Table{"x-queue-type": "quorum"}); err != nil {
		return result{name: name}, err
	}
	defer func() {
		if c, err := conn.Channel(); err == nil {
			_, _ = c.QueueDelete(qname, false, false, false)
		}
	}()
	pubCh, err := conn.Channel()
	if err != nil {
		return result{name: name}, err
	}
	if err := pubCh.Confirm(false); err != nil {
		return result{name: name}, err
	}
	pub := func(stop <-chan struct{}) error {
		window := make(chan *amqp.DeferredConfirmation, 1000)
		errc := make(chan error, 1)
		go func() {
			for dc := range window {
				if ok, err := dc.WaitContext(ctx); err != nil || !ok {
					errc <- fmt.Errorf("publish not confirmed: %v", err)
					return
				}
			}
			errc <- nil
		}()
		for range n {
			dc, err := pubCh.PublishWithDeferredConfirmWithContext(ctx, "", qname, false, false,
				amqp.Publishing{DeliveryMode: amqp.Persistent, Body: payload(size)})
			if err != nil {
				close(window)
				return err
			}
			window <- dc
		}
		close(window)
		return <-errc
	}
	con := func(lat *latencies, done func(int) bool) error {
		cc, err := conn.Channel()
		if err != nil {
			return err
		}
		if err := cc.Qos(500, 0, false); err != nil {
			return err
		}
		deliveries, err := cc.Consume(qname, "", false, false, false, false, nil)
		if err != nil {
			return err
		}
		for d := range deliveries {
			lat.add(time.Since(sentAt(d.Body)))
			if err := d.Ack(false); err != nil {
				return err
			}
			if done(1) {
				return nil
			}
		}
		return errors.New("delivery channel closed")
	}
	return pipeline(name, n, size, pub, con)
}
