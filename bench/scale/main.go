// Command scale measures one Penstock node holding many tenant-environments, each with its
// engine account, a queue and an API key, each used once (a message published, consumed and
// acknowledged over HTTPS; -use=false leaves them unused), beside a plain nats-server holding as many
// accounts with a stream and a consumer each, measured in the same run: the time to create them, the
// resident memory, goroutines and idle CPU with everything idle, the start-up time of a
// restart, and (from the node's profiles) what grows with the count.
//
//	go run ./bench/scale -n 10000
//
// Both servers run as child processes, so that their figures do not include this program.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/penstock/penstock/bench/internal/proc"
)

var (
	n        = flag.Int("n", 10000, "tenant-environments to create")
	workers  = flag.Int("workers", 8, "concurrent creators")
	idle     = flag.Duration("idle", time.Minute, "how long idle CPU is measured")
	settle   = flag.Duration("settle", 180*time.Second, "wait after creating, before measuring idle (longer than fabric.idle_close, 2m, plus one check)")
	binary   = flag.String("binary", "", "the penstock binary (default: built from ./cmd/penstock)")
	outDir   = flag.String("out", "", "keep the node's heap and goroutine profiles here")
	skipPeer = flag.Bool("skip-peer", false, "leave out the plain nats-server")
	useAll   = flag.Bool("use", true, "after creating, publish, consume and acknowledge one message in every tenant-environment, so that each has been used (its queue's consumer made) before it goes idle")
	peerDir  = flag.String("peer-serve", "", "internal: run the peer nats-server on this store")
	peerN    = flag.Int("peer-accounts", 0, "internal: the peer's account count")
)

func main() {
	flag.Parse()
	if *peerDir != "" {
		peerServe(*peerDir, *peerN)
		return
	}
	bin := *binary
	if bin == "" {
		b, cleanup, err := proc.Build()
		if err != nil {
			log.Fatal(err)
		}
		defer cleanup()
		bin = b
	}
	marks := checkpoints(*n)
	fmt.Printf("bench/scale: %d tenant-environments (account, queue, API key each), %d creators\n\n", *n, *workers)
	p := penstockRun(bin, marks)
	var q runFigures
	if !*skipPeer {
		q = peerRun(marks)
	}
	fmt.Printf("\n%-44s %16s %16s\n", "", "Penstock", "nats-server")
	row := func(label string, a, b string) { fmt.Printf("%-44s %16s %16s\n", label, a, b) }
	row("create all, s", secs(p.create), secs(q.create))
	row("created per second", perSec(*n, p.create), perSec(*n, q.create))
	row("RSS idle, MiB", mib(p.rss), mib(q.rss))
	row("RSS per tenant-environment, KiB", kib((p.rss-p.rss0)/int64(*n)), kib((q.rss-q.rss0)/int64(*n)))
	row("idle CPU, % of one core", pct(p.idleCPU), pct(q.idleCPU))
	row("goroutines", strconv.Itoa(p.goroutines), "-")
	row("threads", strconv.Itoa(p.threads), strconv.Itoa(q.threads))
	row("open files", strconv.Itoa(p.fds), strconv.Itoa(q.fds))
	row("start-up after restart, s", secs(p.startup), secs(q.startup))
	row("RSS after restart, MiB", mib(p.rssRestart), mib(q.rssRestart))
	row("store on disk, MiB", mib(p.disk), mib(q.disk))
	if q.rss > 0 {
		fmt.Printf("\nratios Penstock / nats-server: RSS %.2f, create time %.2f, start-up %.2f\n",
			float64(p.rss)/float64(q.rss), p.create.Seconds()/q.create.Seconds(), p.startup.Seconds()/q.startup.Seconds())
	}
	fmt.Printf("goals: RSS < 2 GiB: %v; idle CPU < 5 %%: %v\n", p.rss < 2<<30, p.idleCPU < 5)
}

// checkpoints are the counts at which the growth is sampled.
func checkpoints(n int) []int {
	var out []int
	for _, m := range []int{100, 1000, 2500, 5000, 10000, 20000} {
		if m < n {
			out = append(out, m)
		}
	}
	return append(out, n)
}

type runFigures struct {
	create, startup             time.Duration
	rss0, rss, rssRestart, disk int64
	idleCPU                     float64
	goroutines, threads, fds    int
}

// idleCPU is the process's CPU use over d, in percent of one core.
func idleCPU(pid int, d time.Duration) float64 {
	a := proc.StatsOf(pid).CPU
	time.Sleep(d)
	return float64(proc.StatsOf(pid).CPU-a) / float64(d) * 100
}

func dirSize(dir string) int64 {
	var n int64
	filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			n += fi.Size()
		}
		return nil
	})
	return n
}

// createOne makes tenant t<i> with application shop in production, queue jobs and a
// developer key for it, and returns the key.
func createOne(p *proc.Penstock, i int) (string, error) {
	return p.Queue(tenantName(i), "shop", "jobs")
}

func tenantName(i int) string { return fmt.Sprintf("t%05d", i) }

// roundTrip publishes one message to tenant i's queue with its key, consumes it and
// acknowledges it.
func roundTrip(p *proc.Penstock, i int, key string) error {
	q := "/v1/tenants/" + tenantName(i) + "/environments/production/applications/shop/queues/jobs"
	if _, err := p.Post(key, q+"/messages", map[string]any{"messages": []map[string]string{{"data": "ping " + tenantName(i)}}}); err != nil {
		return err
	}
	out, err := p.Post(key, q+"/consume", map[string]any{"max": 1, "wait_ms": 5000})
	if err != nil {
		return err
	}
	var got struct {
		Messages []struct {
			Data     string `json:"data"`
			AckToken string `json:"ack_token"`
		} `json:"messages"`
	}
	if err := json.Unmarshal(out, &got); err != nil || len(got.Messages) != 1 || got.Messages[0].Data != "ping "+tenantName(i) {
		return fmt.Errorf("tenant %s consumed %s", tenantName(i), out)
	}
	_, err = p.Post(key, q+"/ack", map[string]any{"tokens": []string{got.Messages[0].AckToken}})
	return err
}

// parallel runs fn for 0..n-1 on the creators, calling at(k, elapsed) as each checkpoint's
// count is reached.
func parallel(n int, marks []int, fn func(i int) error, at func(k int, elapsed time.Duration)) time.Duration {
	var next, done atomic.Int64
	t0 := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	mi := 0
	for range *workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := fn(i); err != nil {
					log.Fatalf("tenant-environment %d: %v", i, err)
				}
				d := int(done.Add(1))
				mu.Lock()
				for mi < len(marks) && d >= marks[mi] {
					at(marks[mi], time.Since(t0))
					mi++
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return time.Since(t0)
}

func penstockRun(bin string, marks []int) runFigures {
	dir, _ := os.MkdirTemp("", "bench-scale-penstock")
	defer os.RemoveAll(dir)
	p := &proc.Penstock{Bin: bin, Dir: dir, Env: []string{
		"PENSTOCK_METRICS_LISTEN=127.0.0.1:0", "PENSTOCK_METRICS_PPROF=true",
		"PENSTOCK_FABRIC_NATS_LISTEN=127.0.0.1:0",
		"PENSTOCK_API_LIMITS_REQUEST_RATE=1000000", "PENSTOCK_API_LIMITS_REQUEST_BURST=1000000",
		"PENSTOCK_API_LIMITS_CONN_RATE=1000000", "PENSTOCK_API_LIMITS_CONN_BURST=1000000",
	}}
	defer p.Close()
	var f runFigures
	first, err := p.Start(30 * time.Minute)
	if err != nil {
		log.Fatal(err)
	}
	if err := p.Login(); err != nil {
		log.Fatal(err)
	}
	pid := p.Child.Pid()
	f.rss0 = proc.StatsOf(pid).RSS
	fmt.Printf("Penstock: first start %s, RSS %s MiB before any tenant\n", first.Round(time.Millisecond), mib(f.rss0))
	fmt.Printf("%8s %10s %12s %10s %12s %10s %8s\n", "count", "elapsed", "created/s", "RSS MiB", "heap MiB", "goroutines", "files")
	keys := make([]string, *n)
	last, lastT := 0, time.Duration(0)
	f.create = parallel(*n, marks, func(i int) error {
		k, err := createOne(p, i)
		keys[i] = k
		return err
	}, func(k int, el time.Duration) {
		s := proc.StatsOf(pid)
		m := p.Scrape()
		fmt.Printf("%8d %10s %12.1f %10s %12s %10.0f %8d\n", k, el.Round(time.Second), float64(k-last)/(el-lastT).Seconds(), mib(s.RSS),
			mib(int64(m["go_memstats_heap_inuse_bytes"])), m["go_goroutines"], s.FDs)
		last, lastT = k, el
	})
	if *useAll {
		used := parallel(*n, nil, func(i int) error { return roundTrip(p, i, keys[i]) }, nil)
		s := proc.StatsOf(pid)
		fmt.Printf("used each once (publish, consume, ack): %s, RSS %s MiB, %.0f goroutines\n", used.Round(time.Second), mib(s.RSS), p.Scrape()["go_goroutines"])
	}
	sample := sampleOf(*n)
	for _, i := range sample {
		if err := roundTrip(p, i, keys[i]); err != nil {
			log.Fatalf("after creating: %v", err)
		}
	}
	time.Sleep(*settle)
	f.idleCPU = idleCPU(pid, *idle)
	s := proc.StatsOf(pid)
	f.rss, f.threads, f.fds = s.RSS, s.Threads, s.FDs
	m := p.Scrape()
	f.goroutines = int(m["go_goroutines"])
	fmt.Printf("idle: RSS %s MiB, heap in use %s MiB, stacks %s MiB, %d goroutines, %d threads, %d open files, CPU %.2f %% of one core over %s; %.0f tenant-environments let go as idle, %.0f queue consumers deleted with them\n",
		mib(f.rss), mib(int64(m["go_memstats_heap_inuse_bytes"])), mib(int64(m["go_memstats_stack_inuse_bytes"])), f.goroutines, f.threads, f.fds, f.idleCPU, *idle,
		m["penstock_fabric_idle_closed_total"], m["penstock_fabric_idle_consumers_deleted_total"])
	profiles(p)
	p.Child.Stop()
	f.disk = dirSize(dir)
	if f.startup, err = p.Start(30 * time.Minute); err != nil {
		log.Fatal(err)
	}
	pid = p.Child.Pid()
	for _, i := range sample {
		if err := roundTrip(p, i, keys[i]); err != nil {
			log.Fatalf("after the restart: %v", err)
		}
	}
	time.Sleep(*settle)
	f.rssRestart = proc.StatsOf(pid).RSS
	m = p.Scrape()
	cpu := idleCPU(pid, *idle)
	fmt.Printf("restart: serving after %s, RSS %s MiB after settling (heap in use %s MiB, stacks %s MiB, %.0f goroutines), then CPU %.2f %% of one core over %s; sample of %d tenants publish and consume\n",
		f.startup.Round(time.Millisecond), mib(f.rssRestart), mib(int64(m["go_memstats_heap_inuse_bytes"])),
		mib(int64(m["go_memstats_stack_inuse_bytes"])), m["go_goroutines"], cpu, *idle, len(sample))
	p.Child.Stop()
	return f
}

func sampleOf(n int) []int {
	out := []int{0, n - 1}
	for i := 1; i < 10; i++ {
		out = append(out, i*n/10)
	}
	return out
}

// profiles prints what holds the node's memory and goroutines, and keeps the profiles.
func profiles(p *proc.Penstock) {
	get := func(path string) []byte {
		resp, err := http.Get("http://" + p.Metrics + path)
		if err != nil {
			log.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return b
	}
	heap := get("/debug/pprof/heap")
	dir := *outDir
	if dir == "" {
		dir, _ = os.MkdirTemp("", "bench-scale-profiles")
		defer os.RemoveAll(dir)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		log.Fatal(err)
	}
	hp := filepath.Join(dir, "heap.pb.gz")
	os.WriteFile(hp, heap, 0o644)
	os.WriteFile(filepath.Join(dir, "goroutine.txt"), get("/debug/pprof/goroutine?debug=1"), 0o644)
	if out, err := exec.Command("go", "tool", "pprof", "-top", "-nodecount=15", "-sample_index=inuse_space", p.Bin, hp).CombinedOutput(); err == nil {
		fmt.Printf("\nheap in use, top 15 (go tool pprof -top %s):\n%s\n", hp, trimPprof(out))
	}
	cp := filepath.Join(dir, "cpu.pb.gz")
	os.WriteFile(cp, get("/debug/pprof/profile?seconds=20"), 0o644)
	if out, err := exec.Command("go", "tool", "pprof", "-top", "-cum", "-nodecount=25", p.Bin, cp).CombinedOutput(); err == nil {
		fmt.Printf("idle CPU over 20 s, top 25 by cumulative time (go tool pprof -top -cum %s):\n%s\n", cp, trimPprof(out))
	}
	fmt.Printf("goroutines by where they wait (top 10):\n")
	for _, g := range goroutineGroups(get("/debug/pprof/goroutine?debug=1"), 10) {
		fmt.Printf("%8d  %s\n", g.n, g.fn)
	}
	fmt.Println()
}

func trimPprof(out []byte) string {
	lines := strings.Split(string(out), "\n")
	for i, l := range lines {
		if strings.Contains(l, "flat%") {
			return strings.Join(lines[i:], "\n")
		}
	}
	return string(out)
}

type group struct {
	n  int
	fn string
}

var frame = regexp.MustCompile(`^#\s+0x[0-9a-f]+\s+(\S+)`)

// goroutineGroups sums a debug=1 goroutine profile by the first frame outside the runtime
// and the standard library's synchronisation.
func goroutineGroups(b []byte, top int) []group {
	sums := map[string]int{}
	var count int
	var found bool
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[1] == "@" {
			count, _ = strconv.Atoi(f[0])
			found = false
			continue
		}
		if m := frame.FindStringSubmatch(line); m != nil && !found {
			fn := m[1]
			if strings.HasPrefix(fn, "runtime.") || strings.HasPrefix(fn, "sync.") || strings.HasPrefix(fn, "internal/") ||
				strings.HasPrefix(fn, "time.Sleep") {
				continue
			}
			sums[fn] += count
			found = true
		}
	}
	var out []group
	for fn, c := range sums {
		out = append(out, group{c, fn})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].n > out[j].n })
	return out[:min(top, len(out))]
}

// peerServe runs a plain nats-server with JetStream (fsync always, as Penstock's default) and
// count accounts, each with a user, until SIGTERM.
func peerServe(dir string, count int) {
	var conf strings.Builder
	fmt.Fprintf(&conf, "jetstream { store_dir: %q, sync_interval: always }\naccounts {\n", dir)
	for i := range count {
		fmt.Fprintf(&conf, "  A%05d { jetstream: enabled, users: [{user: u%05d, password: p}] }\n", i, i)
	}
	conf.WriteString("}\n")
	opts := &server.Options{}
	if err := opts.ProcessConfigString(conf.String()); err != nil {
		log.Fatal(err)
	}
	opts.Host, opts.Port, opts.NoSigs, opts.NoLog = "127.0.0.1", -1, true, true
	ns, err := server.NewServer(opts)
	if err != nil {
		log.Fatal(err)
	}
	ns.Start()
	if !ns.ReadyForConnections(30 * time.Minute) {
		log.Fatal("not ready")
	}
	fmt.Fprintf(os.Stderr, "ready %s\n", ns.ClientURL())
	sig := make(chan os.Signal, 1)
	signalNotify(sig)
	<-sig
	ns.Shutdown()
	ns.WaitForShutdown()
}

func peerRun(marks []int) runFigures {
	dir, _ := os.MkdirTemp("", "bench-scale-nats")
	defer os.RemoveAll(dir)
	self, err := os.Executable()
	if err != nil {
		log.Fatal(err)
	}
	var url string
	start := func() (*proc.Child, time.Duration) {
		t0 := time.Now()
		c, err := proc.Start(exec.Command(self, "-peer-serve", dir, "-peer-accounts", strconv.Itoa(*n)), func(line []byte) (map[string]any, bool) {
			u, ok := strings.CutPrefix(string(line), "ready ")
			return map[string]any{"url": u}, ok
		})
		if err != nil {
			log.Fatal(err)
		}
		rec, err := c.WaitReady(30 * time.Minute)
		if err != nil {
			log.Fatal(err)
		}
		url = rec["url"].(string)
		return c, time.Since(t0)
	}
	c, first := start()
	var f runFigures
	pid := c.Pid()
	f.rss0 = proc.StatsOf(pid).RSS
	fmt.Printf("\nnats-server: first start with %d accounts configured %s, RSS %s MiB before any stream\n", *n, first.Round(time.Millisecond), mib(f.rss0))
	fmt.Printf("%8s %10s %12s %10s %8s\n", "count", "elapsed", "created/s", "RSS MiB", "files")
	ctx := context.Background()
	last, lastT := 0, time.Duration(0)
	f.create = parallel(*n, marks, func(i int) error {
		nc, err := nats.Connect(url, nats.UserInfo(fmt.Sprintf("u%05d", i), "p"))
		if err != nil {
			return err
		}
		defer nc.Close()
		js, _ := jetstream.New(nc)
		if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "Q", Subjects: []string{"q"}, Retention: jetstream.WorkQueuePolicy,
			Storage: jetstream.FileStorage}); err != nil {
			return err
		}
		_, err = js.CreateOrUpdateConsumer(ctx, "Q", jetstream.ConsumerConfig{Durable: "c", AckPolicy: jetstream.AckExplicitPolicy})
		return err
	}, func(k int, el time.Duration) {
		s := proc.StatsOf(pid)
		fmt.Printf("%8d %10s %12.1f %10s %8d\n", k, el.Round(time.Second), float64(k-last)/(el-lastT).Seconds(), mib(s.RSS), s.FDs)
		last, lastT = k, el
	})
	time.Sleep(*settle)
	f.idleCPU = idleCPU(pid, *idle)
	s := proc.StatsOf(pid)
	f.rss, f.threads, f.fds = s.RSS, s.Threads, s.FDs
	fmt.Printf("idle: RSS %s MiB, %d threads, %d open files, CPU %.2f %% of one core over %s\n", mib(f.rss), f.threads, f.fds, f.idleCPU, *idle)
	c.Stop()
	f.disk = dirSize(dir)
	c, f.startup = start()
	time.Sleep(*settle)
	f.rssRestart = proc.StatsOf(c.Pid()).RSS
	fmt.Printf("restart: ready after %s, RSS %s MiB after settling\n", f.startup.Round(time.Millisecond), mib(f.rssRestart))
	c.Stop()
	return f
}

func secs(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f", d.Seconds())
}

func perSec(n int, d time.Duration) string {
	if d == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f", float64(n)/d.Seconds())
}

func mib(b int64) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f", float64(b)/(1<<20))
}

func kib(b int64) string {
	if b <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f", float64(b)/(1<<10))
}

func pct(v float64) string { return fmt.Sprintf("%.2f", v) }

func signalNotify(c chan os.Signal) { signal.Notify(c, syscall.SIGTERM, os.Interrupt) }
