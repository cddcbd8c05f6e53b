package main

import (
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/penstock/penstock/internal/pipeline"
)

// testCluster is three `penstock serve` processes on loopback, each with its own data
// directory, prepared as docs/cluster.md says: cluster init on the first, a join token, cluster
// join on the others, then all three started together.
type testCluster struct {
	t      *testing.T
	dirs   []string
	routes []string
	natsLn []string
	env    []string
	mu     sync.Mutex
	nodes  []*proc
}

func (tc *testCluster) node(i int) *proc {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	return tc.nodes[i]
}

func newTestCluster(t *testing.T) *testCluster {
	t.Helper()
	mk := make([]byte, 32)
	if _, err := rand.Read(mk); err != nil {
		t.Fatal(err)
	}
	tc := &testCluster{t: t, nodes: make([]*proc, 3)}
	tc.env = append([]string{"PENSTOCK_KEYRING_MASTER_KEY=" + hex.EncodeToString(mk),
		"PENSTOCK_PIPELINES_FILES_ROOT=" + t.TempDir(), "PENSTOCK_CLUSTER_NAME=test"}, fabricEnv...)
	for range 3 {
		tc.dirs = append(tc.dirs, t.TempDir())
		tc.routes = append(tc.routes, freePort(t))
		tc.natsLn = append(tc.natsLn, freePort(t))
	}
	if code, out := tc.run(0, "cluster", "init"); code != 0 {
		t.Fatalf("cluster init: %d\n%s", code, out)
	}
	code, token := tc.run(0, "cluster", "join-token")
	if code != 0 || !strings.HasPrefix(token, "penstock-join-1.") {
		t.Fatalf("cluster join-token: %d\n%s", code, token)
	}
	tokenFile := filepath.Join(t.TempDir(), "join.token")
	if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	for i := 1; i < 3; i++ {
		if code, out := tc.run(i, "cluster", "join", "--token-file", tokenFile); code != 0 {
			t.Fatalf("cluster join: %d\n%s", code, out)
		}
	}
	return tc
}

// flags are node i's serve flags (and those of the commands run on its directory).
func (tc *testCluster) flags(i int) []string {
	var peers []string
	for j, r := range tc.routes {
		if j != i {
			peers = append(peers, r)
		}
	}
	return []string{"--data-dir", tc.dirs[i], "--node-name", fmt.Sprintf("n%d", i+1), "--cluster-listen", tc.routes[i],
		"--cluster-peers", strings.Join(peers, ",")}
}

func (tc *testCluster) run(i int, args ...string) (int, string) {
	tc.t.Helper()
	cmd := exec.Command(binary, append(args, tc.flags(i)...)...)
	cmd.Env = append(os.Environ(), tc.env...)
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), string(out)
	} else if err != nil {
		tc.t.Fatal(err)
	}
	return 0, string(out)
}

func (tc *testCluster) serveEnv(i int) []string {
	// Last: it replaces fabricEnv's random port, which clients could not find again.
	return append(append([]string{}, tc.env...), "PENSTOCK_FABRIC_NATS_LISTEN="+tc.natsLn[i])
}

// start starts the nodes given (all when none) together and waits until each serves.
func (tc *testCluster) start(which ...int) {
	tc.t.Helper()
	if len(which) == 0 {
		which = []int{0, 1, 2}
	}
	chans := map[int]<-chan map[string]any{}
	procs := map[int]*proc{}
	for _, i := range which {
		args := tc.flags(i)[2:] // serve passes --data-dir itself
		procs[i], chans[i] = startServe(tc.t, tc.dirs[i], tc.serveEnv(i), args...)
	}
	for _, i := range which {
		procs[i].waitServing(chans[i], 3*time.Minute)
		tc.mu.Lock()
		tc.nodes[i] = procs[i]
		tc.mu.Unlock()
	}
}

// admin finds the node that made the first administrator, logs in there and returns it.
func (tc *testCluster) admin() *proc {
	tc.t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		for _, p := range tc.nodes {
			if strings.Contains(p.stdout.String(), "one-time password:") {
				return p
			}
		}
	}
	tc.t.Fatal("no node printed the first administrator's password")
	return nil
}

// A cluster of three under HTTPS and native publishers and consumers on every node; one
// node is killed with kill -9, its clients move to the others; nothing acknowledged is lost,
// and the node comes back and catches up. Then a rolling restart with drain, node by node,
// under the same load.
func TestClusterKill9AndRollingRestartLoseNothing(t *testing.T) {
	tc := newTestCluster(t)
	tc.start()
	admin := tc.admin()
	key := setupQueue(t, admin)
	base := "/v1/tenants/acme/environments/production/applications/shop/queues/orders"

	// The queue is replicated on all three nodes.
	code, out := admin.cli("", "cluster", "status", "--output", "json")
	var st struct {
		Leader  string `json:"meta_leader"`
		Nodes   []struct{ Name string }
		Streams []struct {
			Account, Stream string
			Replicas        []struct{ Name string }
		}
	}
	if err := firstJSON(out, &st); code != 0 || err != nil || len(st.Nodes) != 3 || st.Leader == "" {
		t.Fatalf("cluster status: %d %v\n%s", code, err, out)
	}
	replicated := false
	for _, s := range st.Streams {
		if s.Account == "acme_production" && strings.HasPrefix(s.Stream, "Q_") && len(s.Replicas) == 2 {
			replicated = true
		}
	}
	if !replicated {
		t.Fatalf("the queue's stream is not on three nodes:\n%s", out)
	}

	var mu sync.Mutex
	published := map[string]bool{}
	consumed := map[string]bool{}
	unsure := map[string]bool{}
	deliveries := map[string]int{}
	var errorsSeen atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	down := make([]atomic.Bool, 3) // set from the kill or drain until the node serves again
	// node picks, for a client that started on home, the node it uses now: home while it
	// answers, else the next live one (the documented client retry: try another node).
	post := func(home *int, path string, body any) (int, []byte) {
		for try := 0; try < 6; try++ {
			i := *home
			if p := tc.node(i); !down[i].Load() {
				st, b, err := p.post(clientFor(p), key, path, body)
				if err == nil && st < 500 {
					return st, b
				}
			}
			errorsSeen.Add(1)
			*home = (i + 1) % 3
			time.Sleep(50 * time.Millisecond)
		}
		return 0, nil
	}
	for w := range 6 {
		wg.Go(func() {
			home := w % 3
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				id := fmt.Sprintf("h%d-%d", w, i)
				// Retried with the same id until acknowledged: a retry is stored once.
				for {
					st, _ := post(&home, base+"/messages", map[string]any{"messages": []map[string]string{{"id": id, "data": id}}})
					if st == 200 {
						mu.Lock()
						published[id] = true
						mu.Unlock()
						break
					}
					select {
					case <-stop:
						return
					default:
					}
				}
			}
		})
	}
	// Native publishers, one per node, each given every node's address to reconnect to.
	servers := make([]string, 3)
	for i := range 3 {
		servers[i] = "tls://" + tc.natsLn[i]
	}
	for n := range 3 {
		order := append(append([]string{}, servers[n:]...), servers[:n]...)
		nc, err := nats.Connect(strings.Join(order, ","), nats.UserInfo("acme/production", key), nats.DontRandomize(),
			nats.Secure(&tls.Config{RootCAs: tc.nodes[0].caPool(), ServerName: "localhost"}), nats.MaxReconnects(-1),
			nats.ReconnectWait(100*time.Millisecond), nats.PingInterval(time.Second), nats.MaxPingsOutstanding(2))
		if err != nil {
			t.Fatalf("native connect to %v: %v\n%s", order, err, grepLines(tc.node(n).logs.String(), "nats"))
		}
		defer nc.Close()
		js, _ := jetstream.New(nc)
		wg.Go(func() {
			for i := 0; ; i++ {
				id := fmt.Sprintf("n%d-%d", n, i)
				for {
					select {
					case <-stop:
						return
					default:
					}
					_, err := js.Publish(t.Context(), "shop.q.orders", []byte(id), jetstream.WithMsgID(id))
					if err == nil {
						mu.Lock()
						published[id] = true
						mu.Unlock()
						break
					}
					errorsSeen.Add(1)
					time.Sleep(50 * time.Millisecond)
				}
			}
		})
	}
	consume := func(home *int) int {
		st, body := post(home, base+"/consume", map[string]any{"max": 100, "wait_ms": 200})
		if st != 200 {
			return -1
		}
		var got struct {
			Messages []struct {
				AckToken string `json:"ack_token"`
				Data     string `json:"data"`
			} `json:"messages"`
		}
		_ = json.Unmarshal(body, &got)
		if len(got.Messages) == 0 {
			return 0
		}
		var tokens []string
		mu.Lock()
		for _, m := range got.Messages {
			tokens = append(tokens, m.AckToken)
			deliveries[m.Data]++
		}
		mu.Unlock()
		if st, _ := post(home, base+"/ack", map[string]any{"tokens": tokens}); st != 204 {
			mu.Lock()
			for _, m := range got.Messages {
				unsure[m.Data] = true
			}
			mu.Unlock()
			return -1
		}
		mu.Lock()
		for _, m := range got.Messages {
			consumed[m.Data] = true
		}
		mu.Unlock()
		return len(tokens)
	}
	for c := range 3 {
		wg.Go(func() {
			home := c
			for {
				select {
				case <-stop:
					return
				default:
				}
				consume(&home)
			}
		})
	}
	counts := func() (int, int) {
		mu.Lock()
		defer mu.Unlock()
		return len(published), len(consumed)
	}
	progress := func(what string, pub, con int) {
		t.Helper()
		p0, c0 := counts()
		waitUntil(t, 3*time.Minute, what, func() bool { p, c := counts(); return p >= p0+pub && c >= c0+con })
	}
	progress("load on three nodes", 300, 100)

	// kill -9 a node that did not set the platform up.
	victim := 2
	if tc.node(victim) == admin {
		victim = 1
	}
	killedAt := time.Now()
	_ = tc.node(victim).cmd.Process.Kill()
	<-tc.node(victim).exited
	down[victim].Store(true)
	progress("load after kill -9 of a node", 200, 100)
	recovered := time.Since(killedAt)
	tc.start(victim)
	down[victim].Store(false)
	progress("load after the node's return", 200, 100)
	killErrors := errorsSeen.Load()

	// A node cut off: SIGSTOP for 30 s. The other two keep serving; it acknowledges nothing
	// meanwhile, and after SIGCONT it catches up.
	frozen := tc.node(victim)
	if err := frozen.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stoppedAt := time.Now()
	pStop, _ := counts()
	progress("load while a node is stopped", 200, 100)
	for time.Since(stoppedAt) < 30*time.Second {
		time.Sleep(100 * time.Millisecond) // the cut lasts 30 s, as in the scenario it stands for
	}
	p0, _ := counts()
	if err := frozen.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 2*time.Minute, "every stream's replicas current again, as each node's leaders see them", func() bool {
		for i := range 3 {
			code, out := adminCLI(t, admin, tc.node(i).api, "cluster", "status", "--output", "json")
			var st struct {
				Streams []struct {
					Account, Stream string
					Lagging         bool
				}
			}
			if code != 0 || firstJSON(out, &st) != nil || len(st.Streams) == 0 {
				return false
			}
			for _, s := range st.Streams {
				if s.Lagging {
					return false
				}
			}
		}
		return true
	})
	t.Logf("while a node was stopped for 30 s the others took %d acknowledged publishes; every stream current on every node %v after SIGCONT",
		p0-pStop, time.Since(stoppedAt.Add(30*time.Second)).Round(time.Millisecond))
	stopErrors := errorsSeen.Load() - killErrors

	// Rolling restart: each node in turn is drained (it exits 0) and started again.
	before := errorsSeen.Load()
	for i := range 3 {
		p := tc.node(i)
		// The session of the administrator's login holds on every node.
		if code, out := adminCLI(t, admin, p.api, "node", "drain"); code != 0 || !strings.Contains(out, "draining") {
			t.Fatalf("node drain n%d: %d\n%s", i+1, code, out)
		}
		down[i].Store(true)
		select {
		case err := <-p.exited:
			if err != nil {
				t.Fatalf("drained node n%d exited with %v\n%s", i+1, err, p.logs.String())
			}
			p.exited <- err
		case <-time.After(2 * time.Minute):
			t.Fatalf("drained node n%d did not exit", i+1)
		}
		tc.start(i)
		down[i].Store(false)
		progress(fmt.Sprintf("load after the restart of n%d", i+1), 100, 50)
	}
	rollingErrors := errorsSeen.Load() - before
	close(stop)
	wg.Wait()

	// Drain the queue from any node; everything acknowledged is there or was consumed.
	home := 0
	deadline := time.Now().Add(3 * time.Minute)
	for {
		n := consume(&home)
		if n == 0 {
			req, _ := http.NewRequest("GET", tc.node(home).api+base, nil)
			req.Header.Set("Authorization", "Bearer "+key)
			resp, err := clientFor(tc.node(home)).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			var q struct {
				Stats struct {
					Depth int `json:"depth"`
				} `json:"stats"`
			}
			_ = json.NewDecoder(resp.Body).Decode(&q)
			resp.Body.Close()
			if q.Stats.Depth == 0 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the queue did not drain")
		}
	}
	missing, dups := 0, 0
	for id := range published {
		if !consumed[id] && !unsure[id] {
			missing++
			if missing < 5 {
				t.Errorf("acknowledged message %s is gone", id)
			}
		}
	}
	for _, n := range deliveries {
		if n > 1 {
			dups++
		}
	}
	if missing > 0 {
		t.Fatalf("%d of %d acknowledged messages lost", missing, len(published))
	}
	shredded := shredEverywhere(t, tc, admin)
	t.Logf("3 nodes: %d acknowledged publishes (HTTPS and native NATS on every node), %d consumed, 0 lost; "+
		"after kill -9 of n%d, 200 more publishes and 100 consumptions within %v; %d messages delivered more than once; "+
		"client requests failed and retried on another node: %d around the kill, %d around the 30 s stop, %d in the rolling restart with drain; "+
		"a tenant's keys destroyed on one node were refused by all three within %v",
		len(published), len(consumed), victim+1, recovered.Round(time.Millisecond), dups, killErrors, stopErrors, rollingErrors, shredded.Round(time.Millisecond))
}

// shredEverywhere stores a secret for tenant globex, reads it through every node, destroys
// the tenant's keys on one node and returns how long until every node refuses to read it
// (each node's keyring caches keys: the destruction must reach the caches of the others).
func shredEverywhere(t *testing.T, tc *testCluster, admin *proc) time.Duration {
	t.Helper()
	app := "globex/production/etl"
	// The nodes were restarted: each has a new address, which admin's own does not follow.
	api := tc.node(0).api
	for _, s := range [][]string{{"tenant", "create", "globex"}, {"app", "create", "--env", "globex/production", "etl"}} {
		if code, out := adminCLI(t, admin, api, s...); code != 0 {
			t.Fatalf("penstock %s: %d\n%s", strings.Join(s, " "), code, out)
		}
	}
	if code, out := adminCLIStdin(t, admin, api, "s3cret-value-for-shredding\n", "secrets", "put", "--app", app, "db-password"); code != 0 {
		t.Fatalf("secrets put: %d\n%s", code, out)
	}
	for i := range 3 {
		if code, out := adminCLI(t, admin, tc.node(i).api, "secrets", "list", "--app", app); code != 0 || !strings.Contains(out, "db-password") {
			t.Fatalf("secrets list on n%d: %d\n%s", i+1, code, out)
		}
	}
	destroyer := tc.node(2)
	if code, out := adminCLI(t, admin, destroyer.api, "keys", "destroy", "--scope", "globex", "--confirm", "globex"); code != 0 {
		t.Fatalf("keys destroy on n3: %d\n%s", code, out)
	}
	t0 := time.Now()
	for i := range 3 {
		waitUntil(t, time.Minute, fmt.Sprintf("n%d to refuse the destroyed tenant's secrets", i+1), func() bool {
			code, out := adminCLI(t, admin, tc.node(i).api, "secrets", "list", "--app", app)
			return code == 1 && strings.Contains(out, "scope.deleted")
		})
	}
	return time.Since(t0)
}

var clients sync.Map // *proc -> *http.Client

func clientFor(p *proc) *http.Client {
	if c, ok := clients.Load(p); ok {
		return c.(*http.Client)
	}
	c := p.client()
	clients.Store(p, c)
	return c
}

// adminCLI runs the CLI as the administrator logged in on admin, against the node at api:
// the login's session is the platform's, so its token is copied into a session saved for that
// node.
func adminCLI(t *testing.T, admin *proc, api string, args ...string) (int, string) {
	t.Helper()
	return adminCLIStdin(t, admin, api, "", args...)
}

// adminCLIStdin is adminCLI with standard input.
func adminCLIStdin(t *testing.T, admin *proc, api, stdin string, args ...string) (int, string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(admin.home, "penstock", "session.json"))
	if err != nil {
		t.Fatal(err)
	}
	var sess map[string]any
	if err := json.Unmarshal(b, &sess); err != nil {
		t.Fatal(err)
	}
	sess["server"] = api
	home := t.TempDir()
	if err := os.MkdirAll(filepath.Join(home, "penstock"), 0o700); err != nil {
		t.Fatal(err)
	}
	b, _ = json.Marshal(sess)
	if err := os.WriteFile(filepath.Join(home, "penstock", "session.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary, append(args, "--server", api, "--data-dir", admin.dataDir)...)
	cmd.Env = append(os.Environ(), "HOME="+home, "XDG_CONFIG_HOME="+home)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), string(out)
	} else if err != nil {
		t.Fatal(err)
	}
	return 0, string(out)
}

// A continuous pipeline in a cluster runs on one node, the holder of its lease. kill -9 of that
// node: another takes the lease over once it lapses, marks the dead node's run interrupted and
// goes on from the last checkpoint; every message acknowledged to the publishers reaches the
// sink queue (at least once), and there is never more than one run going.
func TestClusterPipelineFailsOver(t *testing.T) {
	tc := newTestCluster(t)
	tc.start()
	admin := tc.admin()
	key := setupQueue(t, admin)
	const app = "acme/production/shop"
	if code, out := adminCLI(t, admin, tc.node(0).api, "queue", "create", "--app", app, "copied"); code != 0 {
		t.Fatalf("queue create: %d\n%s", code, out)
	}
	spec := filepath.Join(t.TempDir(), "relay.yaml")
	if err := os.WriteFile(spec, []byte("name: relay\nsource: {type: queue, queue: orders}\n"+
		"transforms:\n  - map: '{n: n, relayed: true}'\nsink: {type: queue, queue: copied}\nschedule: continuous\n"+
		"batch: {size: 20, flush_interval: 100ms}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out := adminCLI(t, admin, tc.node(0).api, "pipeline", "apply", "--app", app, "-f", spec); code != 0 {
		t.Fatalf("pipeline apply: %d\n%s", code, out)
	}
	type run struct {
		ID, Status, Node string
		Out              int64 `json:"records_out"`
	}
	var down [3]atomic.Bool
	runsFrom := func() []run {
		for i := range 3 {
			if down[i].Load() {
				continue
			}
			code, out := adminCLI(t, admin, tc.node(i).api, "pipeline", "runs", "--app", app, "relay")
			var got struct{ Runs []run }
			if code == 0 && firstJSON(out, &got) == nil {
				return got.Runs
			}
		}
		return nil
	}
	running := func(runs []run) []run {
		var r []run
		for _, x := range runs {
			if x.Status == "running" {
				r = append(r, x)
			}
		}
		return r
	}

	// Publishers: one message at a time, to whichever node answers.
	var mu sync.Mutex
	published := map[int]bool{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	const base = "/v1/tenants/acme/environments/production/applications/shop/queues/"
	wg.Go(func() {
		home := 0
		for n := 0; ; n++ {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if p := tc.node(home); !down[home].Load() {
					body := map[string]any{"messages": []map[string]string{{"id": fmt.Sprint("m-", n), "data": fmt.Sprintf(`{"n":%d}`, n)}}}
					if st, _, err := p.post(clientFor(p), key, base+"orders/messages", body); err == nil && st == 200 {
						mu.Lock()
						published[n] = true
						mu.Unlock()
						break
					}
				}
				home = (home + 1) % 3
				time.Sleep(50 * time.Millisecond)
			}
		}
	})
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}()
	copied := map[int]int{}
	consume := func() {
		for i := range 3 {
			if down[i].Load() {
				continue
			}
			p := tc.node(i)
			st, b, err := p.post(clientFor(p), key, base+"copied/consume", map[string]any{"max": 100, "wait_ms": 200})
			if err != nil || st != 200 {
				continue
			}
			var got struct {
				Messages []struct {
					AckToken string `json:"ack_token"`
					Data     string `json:"data"`
				} `json:"messages"`
			}
			_ = json.Unmarshal(b, &got)
			var tokens []string
			for _, m := range got.Messages {
				var rec struct {
					N       int  `json:"n"`
					Relayed bool `json:"relayed"`
				}
				if err := json.Unmarshal([]byte(m.Data), &rec); err != nil || !rec.Relayed {
					t.Fatalf("copied message %q is not the transformed record", m.Data)
				}
				copied[rec.N]++
				tokens = append(tokens, m.AckToken)
			}
			if len(tokens) > 0 {
				_, _, _ = p.post(clientFor(p), key, base+"copied/ack", map[string]any{"tokens": tokens})
			}
			return
		}
	}

	var holder run
	waitUntil(t, 3*time.Minute, "the pipeline running on one node with records copied", func() bool {
		consume()
		r := running(runsFrom())
		if len(r) == 1 && r[0].Node != "" && r[0].Out >= 20 {
			holder = r[0]
			return true
		}
		return false
	})
	victim := -1
	for i := range 3 {
		if fmt.Sprintf("n%d", i+1) == holder.Node {
			victim = i
		}
	}
	if victim < 0 {
		t.Fatalf("run %s names node %q", holder.ID, holder.Node)
	}
	killedAt := time.Now()
	down[victim].Store(true)
	_ = tc.node(victim).cmd.Process.Kill()
	<-tc.node(victim).exited

	var next run
	waitUntil(t, 2*time.Minute, "another node running the pipeline", func() bool {
		consume()
		runs := runsFrom()
		r := running(runs)
		if len(r) > 1 {
			t.Fatalf("two runs going at once: %+v", r)
		}
		for _, x := range runs {
			if x.ID == holder.ID && x.Status != "interrupted" {
				return false // the next holder marks the dead node's run first
			}
		}
		if len(r) == 1 && r[0].Node != holder.Node {
			next = r[0]
			return true
		}
		return false
	})
	tookOver := time.Since(killedAt)

	// The dead node comes back; the lease stays where it is, and one run goes on.
	tc.start(victim)
	down[victim].Store(false)
	mu.Lock()
	p0 := len(published)
	mu.Unlock()
	waitUntil(t, 2*time.Minute, "more publishes after the node's return", func() bool {
		consume()
		mu.Lock()
		defer mu.Unlock()
		return len(published) >= p0+20
	})
	close(stop)
	wg.Wait()
	waitUntil(t, 3*time.Minute, "every acknowledged message copied", func() bool {
		consume()
		for n := range published {
			if copied[n] == 0 {
				return false
			}
		}
		return true
	})
	if r := running(runsFrom()); len(r) != 1 || r[0].ID != next.ID {
		t.Fatalf("after the node's return: running %+v, want only %s on %s", r, next.ID, next.Node)
	}
	dups := 0
	for _, c := range copied {
		if c > 1 {
			dups++
		}
	}
	t.Logf("pipeline relay ran on %s; kill -9 of it: %s ran it %v later (lease TTL %v); %d acknowledged messages all copied, %d of them more than once",
		holder.Node, next.Node, tookOver.Round(time.Millisecond), pipeline.LeaseTTL, len(published), dups)
}
