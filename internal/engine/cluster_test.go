package engine_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/penstock/penstock/internal/certs"
	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/datadir"
	"github.com/penstock/penstock/internal/engine"
	"github.com/penstock/penstock/internal/redact"
	"github.com/penstock/penstock/internal/testenv"
)

// freePorts returns n loopback addresses for the nodes to listen on.
func freePorts(t *testing.T, n int) []string {
	t.Helper()
	var out []string
	for range n {
		out = append(out, testenv.FreeAddr(t))
	}
	return out
}

// testCluster is three data directories sharing one CA, credential and store key, the way
// `penstock cluster join` leaves them.
type testCluster struct {
	t     *testing.T
	dirs  []string
	addrs []string
	key   redact.Secret
	cred  redact.Secret
	log   *slog.Logger
	// mutate changes a node's cluster options before it starts.
	mutate func(i int, c *engine.Cluster)
}

func newTestCluster(t *testing.T, n int) *testCluster {
	t.Helper()
	tc := &testCluster{t: t, addrs: freePorts(t, n), key: storeKey(t), log: slog.New(slog.NewTextHandler(testLogOut(), &slog.HandlerOptions{Level: slog.LevelDebug}))}
	cred, err := datadir.LoadOrCreateKey(filepath.Join(t.TempDir(), "cred"))
	if err != nil {
		t.Fatal(err)
	}
	tc.cred = cred
	for i := range n {
		dir := t.TempDir()
		if i > 0 {
			copyCA(t, tc.dirs[0], dir)
		} else if _, err := certs.NewManager(dir, config.TLS{}, tc.log); err != nil {
			t.Fatal(err)
		}
		tc.dirs = append(tc.dirs, dir)
	}
	return tc
}

func copyCA(t *testing.T, from, to string) {
	t.Helper()
	c, k, err := certs.CAFiles(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := certs.InstallCA(to, c, k); err != nil {
		t.Fatal(err)
	}
}

func (tc *testCluster) options(i int) engine.Options {
	t := tc.t
	m, err := certs.NewManager(tc.dirs[i], config.TLS{}, tc.log)
	if err != nil {
		t.Fatal(err)
	}
	node := fmt.Sprintf("n%d", i+1)
	rt, err := m.RouteTLS(node, []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	var peers []string
	for j, a := range tc.addrs {
		if j != i {
			peers = append(peers, a)
		}
	}
	c := &engine.Cluster{Name: "test", Node: node, Listen: tc.addrs[i], Peers: peers, TLS: rt, Credential: tc.cred}
	if tc.mutate != nil {
		tc.mutate(i, c)
	}
	return engine.Options{DataDir: tc.dirs[i], Config: config.Default().Engine, StoreKey: tc.key, Cluster: c, Logger: tc.log}
}

func (tc *testCluster) open(ctx context.Context, i int) (*engine.Engine, error) {
	return engine.Open(ctx, tc.options(i))
}

// start opens every node at once (each waits for a majority) and closes them at cleanup.
func (tc *testCluster) start() []*engine.Engine {
	t := tc.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	out := make([]*engine.Engine, len(tc.dirs))
	errs := make([]error, len(tc.dirs))
	var wg sync.WaitGroup
	for i := range tc.dirs {
		wg.Go(func() {
			if out[i], errs[i] = tc.open(ctx, i); errs[i] != nil {
				cancel() // the others would wait for it
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		for _, e := range out {
			if e != nil {
				e.Close()
			}
		}
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, e := range out {
			if e != nil {
				e.Close()
			}
		}
	})
	return out
}

func TestClusterReplicatesAndSurvivesANode(t *testing.T) {
	tc := newTestCluster(t, 3)
	nodes := tc.start()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// An account created on one node is known to every node before its first stream.
	a1, err := nodes[0].Account(ctx, "t1_production")
	if err != nil {
		t.Fatal(err)
	}
	s, err := a1.Stream(ctx, jetstream.StreamConfig{Name: "Q", Subjects: []string{"q"}, Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Config.Replicas != 3 || info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
		t.Fatalf("stream replicas: config %d, cluster %+v; want 3 replicas", info.Config.Replicas, info.Cluster)
	}
	// A stream created the way the fabric does it, straight on the account's JetStream
	// context, gets the cluster's replicas too.
	js1 := a1.JetStream()
	if _, err := js1.CreateStream(ctx, jetstream.StreamConfig{Name: "D", Subjects: []string{"d"}}); err != nil {
		t.Fatal(err)
	}
	if d, err := js1.Stream(ctx, "D"); err != nil || d.CachedInfo().Config.Replicas != 3 {
		t.Fatalf("stream D: %v, replicas %d", err, d.CachedInfo().Config.Replicas)
	}

	a2, err := nodes[1].Account(ctx, "t1_production")
	if err != nil {
		t.Fatal(err)
	}
	publish := func(js jetstream.JetStream, from, to int) {
		t.Helper()
		for i := from; i < to; i++ {
			if _, err := js.Publish(ctx, "q", fmt.Appendf(nil, "m%d", i)); err != nil {
				t.Fatalf("publish %d: %v", i, err)
			}
		}
	}
	publish(a2.JetStream(), 0, 100)

	// One node gone: the other two keep the stream writable.
	nodes[2].Close()
	publish(js1, 100, 200)

	// Back with the same directory: it knows the account from before and catches up.
	n3, err := tc.open(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	nodes[2] = n3
	a3, err := n3.Account(ctx, "t1_production")
	if err != nil {
		t.Fatal(err)
	}
	s3, err := a3.JetStream().Stream(ctx, "Q")
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		info, err := s3.Info(ctx)
		if err == nil && info.State.Msgs == 200 && info.Cluster != nil && allCurrent(info.Cluster) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stream after the node's return: %+v, %v", info, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for i := range 200 {
		m, err := s3.GetMsg(ctx, uint64(i+1))
		if err != nil || string(m.Data) != fmt.Sprintf("m%d", i) {
			t.Fatalf("message %d: %v %q", i+1, err, m.Data)
		}
	}
}

func allCurrent(c *jetstream.ClusterInfo) bool {
	if c.Leader == "" {
		return false
	}
	for _, r := range c.Replicas {
		if !r.Current {
			return false
		}
	}
	return true
}

// TestClusterRefusesStrangers: a node without the cluster credential, or with a certificate
// of another CA, or with the API's certificate instead of a node certificate, never joins.
func TestClusterRefusesStrangers(t *testing.T) {
	tc := newTestCluster(t, 3)
	nodes := tc.start()
	ctx := context.Background()

	cases := map[string]func(dir string, c *engine.Cluster){
		"wrong credential": func(_ string, c *engine.Cluster) { c.Credential = redact.NewSecret("not the cluster credential") },
		"another CA": func(dir string, c *engine.Cluster) {
			m, err := certs.NewManager(dir, config.TLS{}, tc.log)
			if err != nil {
				t.Fatal(err)
			}
			if c.TLS, err = m.RouteTLS(c.Node, nil); err != nil {
				t.Fatal(err)
			}
		},
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if name != "another CA" {
				copyCA(t, tc.dirs[0], dir)
			}
			addr := freePorts(t, 1)[0]
			m, err := certs.NewManager(dir, config.TLS{}, tc.log)
			if err != nil {
				t.Fatal(err)
			}
			rt, err := m.RouteTLS("stranger", nil)
			if err != nil {
				t.Fatal(err)
			}
			c := &engine.Cluster{Name: "test", Node: "stranger", Listen: addr, Peers: tc.addrs, TLS: rt, Credential: tc.cred}
			mutate(dir, c)
			octx, cancel := context.WithTimeout(ctx, 8*time.Second)
			defer cancel()
			e, err := engine.Open(octx, engine.Options{DataDir: dir, Config: config.Default().Engine, StoreKey: tc.key, Cluster: c, Logger: tc.log})
			if err == nil {
				e.Close()
				t.Fatal("a node with a " + name + " joined the cluster")
			}
			if !strings.Contains(err.Error(), "no JetStream leader") {
				t.Fatalf("error: %v", err)
			}
		})
	}
	// The members still count three nodes and accept writes.
	for _, n := range nodes {
		st, err := n.ClusterStatus()
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, p := range st.Nodes {
			names = append(names, p.Name)
		}
		if len(names) != 3 || strings.Contains(strings.Join(names, ","), "stranger") || st.Leader == "" {
			t.Fatalf("%s sees nodes %v, leader %q", st.Node, names, st.Leader)
		}
	}
	a, err := nodes[0].Account(ctx, engine.PlatformAccount)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Stream(ctx, jetstream.StreamConfig{Name: "after", Subjects: []string{"after"}}); err != nil {
		t.Fatal(err)
	}
}

func testLogOut() io.Writer {
	if os.Getenv("PENSTOCK_TEST_LOG") != "" {
		return os.Stderr
	}
	return io.Discard
}

// TestClusterMinorityRefusesWrites: a node left alone (the other two gone) accepts no write it
// cannot replicate, and is not ready. (The write it did not acknowledge may still appear
// once the others are back: a timed-out write has an unknown outcome in Raft, as anywhere.)
func TestClusterMinorityRefusesWrites(t *testing.T) {
	tc := newTestCluster(t, 3)
	nodes := tc.start()
	// Generous: CI runs this beside the process tests' clusters, and the two nodes' return
	// (opening their stores, electing, catching up) once took most of two minutes there.
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	a, err := nodes[0].Account(ctx, "t1_test")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Stream(ctx, jetstream.StreamConfig{Name: "Q", Subjects: []string{"q"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.JetStream().Publish(ctx, "q", []byte("before")); err != nil {
		t.Fatal(err)
	}
	nodes[1].Close()
	nodes[2].Close()
	wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
	_, err = a.JetStream().Publish(wctx, "q", []byte("alone"))
	wcancel()
	if err == nil {
		t.Fatal("a node alone acknowledged a write")
	}
	if err := nodes[0].Ready(ctx); err == nil {
		t.Fatal("a node alone says it is ready")
	}
	var wg sync.WaitGroup
	for _, i := range []int{1, 2} {
		wg.Go(func() {
			n, err := tc.open(ctx, i)
			if err != nil {
				t.Error(err)
				return
			}
			nodes[i] = n
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	s, err := nodes[1].Account(ctx, "t1_test")
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(3 * time.Minute)
	for {
		st, err := s.JetStream().Stream(ctx, "Q")
		if err == nil {
			info, err := st.Info(ctx)
			if err == nil && info.Cluster != nil && allCurrent(info.Cluster) {
				if info.State.Msgs < 1 || info.State.Msgs > 2 {
					t.Fatalf("stream holds %d messages, want the one acknowledged before (and at most the unacknowledged one)", info.State.Msgs)
				}
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("stream not current after the nodes' return: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestClusterPlacesEnvironmentsByTag: with nodes tagged production and non-production, a
// production account's streams are on production nodes only, another account's on
// non-production nodes only, and a placement no node can meet is refused.
func TestClusterPlacesEnvironmentsByTag(t *testing.T) {
	tc := newTestCluster(t, 3)
	tags := [][]string{{"production"}, {"production"}, {"non-production"}}
	placement := func(account string) []string {
		switch {
		case account == engine.PlatformAccount:
			return nil
		case strings.HasSuffix(account, "_production"):
			return []string{"production"}
		case strings.HasSuffix(account, "_nowhere"):
			return []string{"no-such-tag"}
		}
		return []string{"non-production"}
	}
	tc.mutate = func(i int, c *engine.Cluster) { c.Tags, c.Placement = tags[i], placement }
	nodes := tc.start()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	where := func(account string, replicas int) ([]string, error) {
		a, err := nodes[2].Account(ctx, account)
		if err != nil {
			return nil, err
		}
		s, err := a.JetStream().CreateStream(ctx, jetstream.StreamConfig{Name: "Q", Subjects: []string{"q"}, Replicas: replicas})
		if err != nil {
			return nil, err
		}
		info, err := s.Info(ctx)
		if err != nil {
			return nil, err
		}
		out := []string{info.Cluster.Leader}
		for _, r := range info.Cluster.Replicas {
			out = append(out, r.Name)
		}
		return out, nil
	}
	prod, err := where("t1_production", 2)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(sortedCopy(prod), ",") != "n1,n2" {
		t.Fatalf("production stream on %v, want n1 and n2", prod)
	}
	test, err := where("t1_test", 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(test) != 1 || test[0] != "n3" {
		t.Fatalf("test stream on %v, want n3", test)
	}
	if _, err := where("t1_nowhere", 1); err == nil {
		t.Fatal("a placement no node meets was accepted")
	}
	if _, err := where("t2_test", 2); err == nil {
		t.Fatal("two replicas on the one non-production node were accepted")
	}
}

func sortedCopy(s []string) []string {
	out := append([]string{}, s...)
	slices.Sort(out)
	return out
}

// Buckets defined by all nodes at once are usable on each at once and read through their
// stream's leader (a replica may not have applied the last writes: every node must read what
// any node wrote once it was acknowledged), and compare-and-set conflicts on a replicated
// stream are recognised as such: with writes in flight the engine reports them with another
// code than on a single node, and an audit chain written from several nodes retries on it.
func TestClusterReadsItsWritesAndKnowsConflicts(t *testing.T) {
	tc := newTestCluster(t, 3)
	nodes := tc.start()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	kvs := make([]jetstream.KeyValue, 3)
	accs := make([]*engine.Account, 3)
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i, n := range nodes {
		wg.Go(func() {
			acc, err := n.Account(ctx, engine.PlatformAccount)
			if err == nil {
				accs[i] = acc
				kvs[i], err = acc.KeyValue(ctx, jetstream.KeyValueConfig{Bucket: "rw_test", History: 1})
			}
			errs[i] = err
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("the same bucket defined by three nodes at once: %v", err)
	}
	st, err := kvs[0].Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info := st.(*jetstream.KeyValueBucketStatus).StreamInfo(); info.Config.AllowDirect || info.Config.Replicas != 3 {
		t.Fatalf("bucket stream: allow_direct %v, replicas %d; want reads from the leader of 3 replicas", info.Config.AllowDirect, info.Config.Replicas)
	}
	// A bucket an earlier version made (the client library's definition, direct gets on)
	// keeps them: nodes of that version still read it so during a rolling upgrade.
	raw, err := jetstream.New(accs[0].Conn())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := raw.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "old_bucket", Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	old, err := accs[1].KeyValue(ctx, jetstream.KeyValueConfig{Bucket: "old_bucket"})
	if err != nil {
		t.Fatal(err)
	}
	if st, err := old.Status(ctx); err != nil || !st.(*jetstream.KeyValueBucketStatus).StreamInfo().Config.AllowDirect {
		t.Fatalf("a bucket with direct gets lost them when a new node defined it: %v", err)
	}
	for i := range 300 {
		key := fmt.Sprintf("k%d", i)
		rev, err := kvs[i%3].Create(ctx, key, []byte(key))
		if err != nil {
			t.Fatal(err)
		}
		for j, r := range kvs {
			if e, err := r.GetRevision(ctx, key, rev); err != nil || string(e.Value()) != key {
				t.Fatalf("write %d on n%d, read at once on n%d: %v", i, i%3+1, j+1, err)
			}
		}
	}

	if _, err := accs[1].Stream(ctx, jetstream.StreamConfig{Name: "CAS", Subjects: []string{"cas.>"}}); err != nil {
		t.Fatal(err)
	}
	// Rounds of writers on every node, each expecting the same last sequence: one wins a
	// round, every other is told it lost, by whichever code.
	var last uint64
	other := 0
	for round := range 20 {
		var won atomic.Int64
		var mu sync.Mutex
		var unexpected []error
		expect := last // read before the writers start: the winner moves last under mu
		for w := range 9 {
			wg.Go(func() {
				ack, err := accs[w%3].JetStream().Publish(ctx, "cas.a", []byte(fmt.Sprint(round, w)), jetstream.WithExpectLastSequencePerSubject(expect))
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					won.Add(1)
					last = max(last, ack.Sequence)
				case !engine.WrongLastSequence(err):
					unexpected = append(unexpected, err)
				default:
					var api *jetstream.APIError
					if errors.As(err, &api) && api.ErrorCode != jetstream.JSErrCodeStreamWrongLastSequence {
						other++
					}
				}
			})
		}
		wg.Wait()
		if len(unexpected) > 0 || won.Load() != 1 {
			t.Fatalf("round %d: %d writers won; errors not recognised as conflicts: %v", round, won.Load(), unexpected)
		}
	}
	t.Logf("20 rounds of 9 writers on 3 nodes: %d conflicts reported with code 10164", other)
}
