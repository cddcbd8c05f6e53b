package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/penstock/penstock/bench/internal/proc"
	"github.com/penstock/penstock/internal/fabric"
)

// The cluster runs (-cluster 3): durable throughput of three nodes on this one machine beside
// one node and RabbitMQ, measured in the same run. Every message is on disk on a majority of
// the nodes before its publish is acknowledged: each node fsyncs what it stores (in a cluster
// Penstock's group sync is off, since a sync of one node's disk would not make a write durable).
// With all three nodes on one machine and one disk, this is a floor for real hosts.

// clusterRuns runs the cluster and single-node figures for 1 and spread queues.
func clusterRuns(nodes, n, size int, spread []int, skipRabbit bool) error {
	bin, cleanup, err := proc.Build()
	if err != nil {
		return err
	}
	defer cleanup()
	var rs []result
	add := func(r result, err error) error {
		if err != nil {
			return fmt.Errorf("%s: %w", r.name, err)
		}
		rs = append(rs, r)
		fmt.Printf("  %-72s %10.0f msgs/s\n", r.name, r.rate())
		return nil
	}
	fmt.Printf("bench/fabric -cluster %d: %d messages of %d bytes per run, async publishers (4096 pending), pull consumers acking each, end to end\n", nodes, n, size)
	for _, k := range spread {
		for _, run := range []func() (result, error){
			func() (result, error) { return rawCluster(1, n, size, k) },
			func() (result, error) { return rawCluster(nodes, n, size, k) },
			func() (result, error) { return penstockCluster(bin, 1, n, size, k) },
			func() (result, error) { return penstockCluster(bin, nodes, n, size, k) },
		} {
			if err := add(run()); err != nil {
				return err
			}
		}
	}
	var d result
	if !skipRabbit {
		if d, err = rabbitMQ(n, size); err != nil {
			return fmt.Errorf("rabbitmq: %w", err)
		}
	}
	fmt.Printf("\n%-76s %10s %8s %10s %10s %12s\n", "", "msgs/s", "MB/s", "p50", "p99", "publish/s")
	for _, r := range append(rs, d) {
		if r.msgs > 0 {
			fmt.Printf("%-76s %10.0f %8.2f %10s %10s %12.0f\n", r.name, r.rate(), r.mbs(), r.p50.Round(10*time.Microsecond), r.p99.Round(10*time.Microsecond), r.pubRate())
		}
	}
	fmt.Printf("\nratios\n")
	for i, k := range spread {
		raw1, rawN, p1, pN := rs[4*i], rs[4*i+1], rs[4*i+2], rs[4*i+3]
		line := func(label string, v float64) {
			fmt.Printf("  %-72s %6.2f\n", fmt.Sprintf("%s, %d queue%s", label, k, plural(k)), v)
		}
		line(fmt.Sprintf("raw JetStream %d nodes / 1 node", nodes), rawN.rate()/raw1.rate())
		line(fmt.Sprintf("Penstock %d nodes / 1 node", nodes), pN.rate()/p1.rate())
		line(fmt.Sprintf("Penstock %d nodes / raw JetStream %d nodes", nodes, nodes), pN.rate()/rawN.rate())
		if d.msgs > 0 {
			line(fmt.Sprintf("Penstock %d nodes / RabbitMQ quorum queue (1 queue)", nodes), pN.rate()/d.rate())
		}
	}
	return nil
}

// spreadLoad publishes n messages over k queues (one publisher and one consumer per queue,
// publishers on pubs[i%len], consumers on cons[i%len]) and returns the end-to-end result.
func spreadLoad(name string, n, size, k int, subject func(q int) string, pubs []jetstream.JetStream, cons func(q int) (jetstream.Consumer, error)) (result, error) {
	per := n / k
	var wg sync.WaitGroup
	results := make([]result, k)
	errs := make([]error, k)
	t0 := time.Now()
	for q := range k {
		c, err := cons(q)
		if err != nil {
			return result{name: name}, err
		}
		wg.Go(func() {
			js := pubs[q%len(pubs)]
			results[q], errs[q] = pipeline(name, per, size, natsPublisher(nil, js, subject(q), per, size, "always"), natsConsumer(c))
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return result{name: name}, err
	}
	elapsed := time.Since(t0)
	out := result{name: name, msgs: per * k, size: size, elapsed: elapsed}
	var pubMax time.Duration
	for _, r := range results {
		pubMax = max(pubMax, r.pubElapsed)
		out.p50, out.p99 = max(out.p50, r.p50), max(out.p99, r.p99) // the slowest queue's
	}
	out.pubElapsed = pubMax
	return out, nil
}

// rawCluster is the peer: plain embedded nats-servers (no TLS, no auth, no store encryption)
// routed into one cluster, fsync per write, work-queue streams with one replica per node (up to
// 3); clients connect over loopback TCP, publishers and consumers spread over the nodes.
func rawCluster(nodes, n, size, k int) (result, error) {
	name := fmt.Sprintf("(a) raw JetStream, %d node%s, fsync per write, %d queue%s", nodes, plural(nodes), k, plural(k))
	ports := freePorts(nodes)
	var servers []*server.Server
	defer func() {
		for _, s := range servers {
			s.Shutdown()
		}
	}()
	var dirs []string
	defer func() {
		for _, d := range dirs {
			os.RemoveAll(d)
		}
	}()
	for i := range nodes {
		dir, _ := os.MkdirTemp("", "bench-cluster")
		dirs = append(dirs, dir)
		opts := &server.Options{ServerName: fmt.Sprintf("n%d", i+1), JetStream: true, StoreDir: dir, Host: "127.0.0.1", Port: -1,
			NoSigs: true, NoLog: true, SyncAlways: true, SyncInterval: 2 * time.Minute}
		if nodes > 1 {
			opts.Cluster = server.ClusterOpts{Name: "bench", Host: "127.0.0.1", Port: ports[i]}
			for j := range nodes {
				if j != i {
					opts.Routes = append(opts.Routes, server.RoutesFromStr(fmt.Sprintf("nats://127.0.0.1:%d", ports[j]))...)
				}
			}
		}
		ns, err := server.NewServer(opts)
		if err != nil {
			return result{name: name}, err
		}
		ns.Start()
		servers = append(servers, ns)
	}
	var jss []jetstream.JetStream
	for _, ns := range servers {
		if !ns.ReadyForConnections(time.Minute) {
			return result{name: name}, errors.New("server not ready")
		}
		nc, err := nats.Connect(ns.ClientURL())
		if err != nil {
			return result{name: name}, err
		}
		defer nc.Close()
		js, _ := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096), jetstream.WithPublishAsyncErrHandler(asyncFailed))
		jss = append(jss, js)
	}
	for q := range k {
		cfg := streamConfig(fmt.Sprintf("Q%d", q), fmt.Sprintf("q.%d", q))
		cfg.Replicas = min(nodes, 3)
		if err := retry(time.Minute, func() error { _, err := jss[0].CreateStream(ctx, cfg); return err }); err != nil {
			return result{name: name}, err
		}
	}
	return spreadLoad(name, n, size, k, func(q int) string { return fmt.Sprintf("q.%d", q) }, jss, func(q int) (jetstream.Consumer, error) {
		return jss[(q+1)%len(jss)].CreateOrUpdateConsumer(ctx, fmt.Sprintf("Q%d", q), jetstream.ConsumerConfig{Durable: "c", AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: -1})
	})
}

// penstockCluster: `penstock serve` processes (one, or a cluster formed as docs/cluster.md
// says) in their default durable mode, the same load through their native NATS listeners (TLS,
// a tenant API key, the tenant's account and permissions, store encryption).
func penstockCluster(bin string, nodes, n, size, k int) (result, error) {
	name := fmt.Sprintf("(b) Penstock native NATS, %d node%s, durable default, %d queue%s", nodes, plural(nodes), k, plural(k))
	mk := make([]byte, 32)
	_, _ = rand.Read(mk)
	routes := freePorts(nodes)
	env := []string{"PENSTOCK_KEYRING_MASTER_KEY=" + hex.EncodeToString(mk), "PENSTOCK_FABRIC_NATS_LISTEN=127.0.0.1:0",
		"PENSTOCK_API_LIMITS_REQUEST_RATE=1000000", "PENSTOCK_API_LIMITS_REQUEST_BURST=1000000",
		"PENSTOCK_API_LIMITS_CONN_RATE=1000000", "PENSTOCK_API_LIMITS_CONN_BURST=1000000"}
	filesRoot, _ := os.MkdirTemp("", "bench-cluster-files")
	defer os.RemoveAll(filesRoot)
	env = append(env, "PENSTOCK_PIPELINES_FILES_ROOT="+filesRoot)
	ps := make([]*proc.Penstock, nodes)
	for i := range nodes {
		dir, _ := os.MkdirTemp("", "bench-penstock-node")
		defer os.RemoveAll(dir)
		ps[i] = &proc.Penstock{Bin: bin, Dir: dir, Env: env}
		defer ps[i].Close()
		if nodes > 1 {
			var peers []string
			for j := range nodes {
				if j != i {
					peers = append(peers, fmt.Sprintf("127.0.0.1:%d", routes[j]))
				}
			}
			ps[i].Args = []string{"--node-name", fmt.Sprintf("n%d", i+1), "--cluster-listen", fmt.Sprintf("127.0.0.1:%d", routes[i]),
				"--cluster-peers", strings.Join(peers, ",")}
		}
	}
	if nodes > 1 {
		if err := formCluster(ps); err != nil {
			return result{name: name}, err
		}
	}
	var wg sync.WaitGroup
	errs := make([]error, nodes)
	for i, p := range ps {
		wg.Go(func() { _, errs[i] = p.Start(5 * time.Minute) })
	}
	wg.Wait()
	defer func() {
		for _, p := range ps {
			if p.Child != nil {
				p.Child.Stop()
			}
		}
	}()
	if err := errors.Join(errs...); err != nil {
		return result{name: name}, err
	}
	var admin *proc.Penstock
	for deadline := time.Now().Add(time.Minute); admin == nil; time.Sleep(50 * time.Millisecond) {
		for _, p := range ps {
			if strings.Contains(p.Child.Stdout(), "one-time password:") {
				admin = p
			}
		}
		if time.Now().After(deadline) {
			return result{name: name}, errors.New("no node printed the first administrator's password")
		}
	}
	if err := admin.Login(); err != nil {
		return result{name: name}, err
	}
	key, err := admin.Queue("acme", "shop", "jobs0")
	if err != nil {
		return result{name: name}, err
	}
	for q := 1; q < k; q++ {
		if _, err := admin.Post(admin.Token, "/v1/tenants/acme/environments/production/applications/shop/queues", map[string]string{"name": fmt.Sprintf("jobs%d", q)}); err != nil {
			return result{name: name}, err
		}
	}
	var jss []jetstream.JetStream
	for _, p := range ps {
		tc, err := p.TLS()
		if err != nil {
			return result{name: name}, err
		}
		tc.ServerName = "localhost"
		url := p.NATS
		if !strings.Contains(url, "://") {
			url = "tls://" + url
		}
		nc, err := nats.Connect(url, nats.UserInfo("acme/production", key), nats.Secure(tc))
		if err != nil {
			return result{name: name}, err
		}
		defer nc.Close()
		js, _ := jetstream.NewWithAPIPrefix(nc, fabric.APIPrefix, jetstream.WithPublishAsyncMaxPending(4096), jetstream.WithPublishAsyncErrHandler(asyncFailed))
		jss = append(jss, js)
	}
	return spreadLoad(name, n, size, k, func(q int) string { return fmt.Sprintf("shop.q.jobs%d", q) }, jss, func(q int) (jetstream.Consumer, error) {
		return jss[(q+1)%len(jss)].Consumer(ctx, fmt.Sprintf("Q_shop_jobs%d", q), "shop")
	})
}

// formCluster prepares the data directories as docs/cluster.md says: cluster init on the
// first, a join token, cluster join on the others.
func formCluster(ps []*proc.Penstock) error {
	run := func(p *proc.Penstock, args ...string) (string, error) {
		cmd := exec.Command(p.Bin, append(args, append([]string{"--data-dir", p.Dir}, p.Args...)...)...)
		cmd.Env = append(os.Environ(), p.Env...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("penstock %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out), nil
	}
	if _, err := run(ps[0], "cluster", "init"); err != nil {
		return err
	}
	token, err := run(ps[0], "cluster", "join-token")
	if err != nil {
		return err
	}
	tf := filepath.Join(ps[0].Dir, "..", filepath.Base(ps[0].Dir)+".token")
	if err := os.WriteFile(tf, []byte(strings.TrimSpace(token)), 0o600); err != nil {
		return err
	}
	defer os.Remove(tf)
	for _, p := range ps[1:] {
		if _, err := run(p, "cluster", "join", "--token-file", tf); err != nil {
			return err
		}
	}
	return nil
}

func freePorts(k int) []int {
	var ls []net.Listener
	var out []int
	for range k {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			log.Fatal(err)
		}
		ls = append(ls, l)
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return out
}

func retry(d time.Duration, f func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}
