// Command backup measures taking and restoring a backup of queue data beside tar of the same
// data directory, in the same run: a full backup (every stream snapshotted by the engine,
// sealed chunk by chunk with the tenant's key, written to a file:// target) against
// `tar -cf` of the engine's store, and a full restore into a new data directory against
// `tar -xf`. Peak RSS is the process's high-water mark during each phase (the embedded
// engine runs in this process, so it is counted too).
//
//	go run ./bench/backup -size 1GiB
package main

import (
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"gocloud.dev/blob/fileblob"

	"github.com/penstock/penstock/internal/backup"
	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/datadir"
	"github.com/penstock/penstock/internal/engine"
	"github.com/penstock/penstock/internal/keyring"
	"github.com/penstock/penstock/internal/keyring/keyringtest"
)

func main() {
	sizeFlag := flag.String("size", "1GiB", "queue data to back up (MiB or GiB)")
	msgSize := flag.Int("msg", 16<<10, "message size in bytes")
	sync := flag.String("sync", "always", `engine sync_interval: "always" (Penstock's default) or a duration`)
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the backup create phase to this file")
	work := flag.String("dir", "", "working directory (default: a new one under $TMPDIR, removed at the end)")
	flag.Parse()
	total, err := parseSize(*sizeFlag)
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	dir := *work
	if dir == "" {
		if dir, err = os.MkdirTemp("", "penstock-bench-backup"); err != nil {
			log.Fatal(err)
		}
		defer os.RemoveAll(dir)
	}
	src, dst, target := filepath.Join(dir, "data"), filepath.Join(dir, "restored"), filepath.Join(dir, "target")
	ecfg := config.Default().Engine
	ecfg.SyncInterval = *sync
	if err := os.MkdirAll(src, 0o700); err != nil {
		log.Fatal(err)
	}
	st, err := keyringtest.OpenEngine(ctx, src, ecfg, engine.Native{})
	if err != nil {
		log.Fatal(err)
	}
	n := int(total / int64(*msgSize))
	fmt.Printf("loading %d messages of %d B (%s) into one queue, sync_interval %s ...\n", n, *msgSize, mib(total), *sync)
	t0 := time.Now()
	resetPeak()
	stopSampling := sampleRSS("load (publishing the same data)")
	if err := load(ctx, st, n, *msgSize); err != nil {
		log.Fatal(err)
	}
	stopSampling()
	loadRSS := peakRSS()
	fmt.Printf("loaded in %s\n\n", time.Since(t0).Round(time.Millisecond))

	bucket, err := fileblob.OpenBucket(target, &fileblob.Options{CreateDir: true, NoTempDir: true, Metadata: fileblob.MetadataDontWrite})
	if err != nil {
		log.Fatal(err)
	}
	tenants := func() []backup.Tenant {
		return []backup.Tenant{{Name: "acme", Environments: []string{"production"}, Account: func(env string) string { return "acme_" + env }}}
	}
	svc := backup.NewService(backup.ServiceOptions{Engine: st.Engine, Keyring: st.Keyring, Bucket: bucket, Tenants: tenants})

	// The peer first: tar of the engine's store as it is now (the engine idle).
	storeBytes := dirSize(filepath.Join(src, "jetstream"))
	dropCaches()
	tarCreate := timed(func() error {
		return exec.Command("tar", "-cf", filepath.Join(dir, "store.tar"), "-C", src, "jetstream").Run()
	})

	dropCaches()
	resetPeak()
	var m *backup.Manifest
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			log.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			log.Fatal(err)
		}
	}
	create := timed(func() error { m, err = svc.Backup(ctx, "", nil); return err })
	pprof.StopCPUProfile()
	createRSS := peakRSS()
	var sealed, plain int64
	for _, p := range m.Parts {
		sealed += p.Size
		plain += int64(p.State.Bytes)
	}
	st.Close()

	// Restore: a new data directory holding only the master key, as after losing the machine.
	if err := os.MkdirAll(dst, 0o700); err != nil {
		log.Fatal(err)
	}
	key, err := os.ReadFile(filepath.Join(src, keyring.MasterKeyFile))
	if err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dst, keyring.MasterKeyFile), key, 0o600); err != nil {
		log.Fatal(err)
	}
	if _, err := datadir.FirstStartWith(dst, keyring.MasterKeyFile); err != nil {
		log.Fatal(err)
	}
	st2, err := keyringtest.OpenEngine(ctx, dst, ecfg, engine.Native{})
	if err != nil {
		log.Fatal(err)
	}
	svc2 := backup.NewService(backup.ServiceOptions{Engine: st2.Engine, Keyring: st2.Keyring, Bucket: bucket, Tenants: tenants})
	dropCaches()
	resetPeak()
	var rep *backup.RestoreReport
	stopSampling = sampleRSS("restore")
	restore := timed(func() error { rep, err = svc2.RestoreAll(ctx, m.ID, nil, nil); return err })
	stopSampling()
	restoreRSS := peakRSS()
	st2.Close()
	untar := filepath.Join(dir, "untar")
	if err := os.MkdirAll(untar, 0o700); err != nil {
		log.Fatal(err)
	}
	dropCaches()
	tarExtract := timed(func() error {
		return exec.Command("tar", "-xf", filepath.Join(dir, "store.tar"), "-C", untar).Run()
	})

	rate := func(b int64, d time.Duration) float64 { return float64(b) / (1 << 20) / d.Seconds() }
	fmt.Printf("queue data %s in %d messages; engine store on disk %s; backup %s sealed in %d parts (%d messages restored)\n\n",
		mib(plain), n, mib(storeBytes), mib(sealed), len(m.Parts), rep.Messages)
	fmt.Printf("%-44s %10s %10s %12s\n", "", "time", "MB/s", "peak RSS")
	fmt.Printf("%-44s %10s %10.1f %12s\n", "backup create (snapshot, seal, write)", create.Round(time.Millisecond), rate(plain, create), mib(createRSS))
	fmt.Printf("%-44s %10s %10.1f %12s\n", "tar -cf of the store (peer)", tarCreate.Round(time.Millisecond), rate(storeBytes, tarCreate), "")
	fmt.Printf("%-44s %10s %10.1f %12s\n", "backup restore (read, open, engine restore)", restore.Round(time.Millisecond), rate(plain, restore), mib(restoreRSS))
	fmt.Printf("%-44s %10s %10.1f %12s\n", "tar -xf of the store (peer)", tarExtract.Round(time.Millisecond), rate(storeBytes, tarExtract), "")
	fmt.Printf("%-44s %10s %10.1f %12s\n", "publishing the same data (for its RSS)", "", 0.0, mib(loadRSS))
	fmt.Printf("\ncreate vs tar -cf: %.2fx; restore vs tar -xf: %.2fx (MB/s of queue data vs MB/s of store bytes)\n",
		rate(plain, create)/rate(storeBytes, tarCreate), rate(plain, restore)/rate(storeBytes, tarExtract))
}

// load fills acme's queue with n random (incompressible) messages of size bytes.
func load(ctx context.Context, st *keyringtest.Stack, n, size int) error {
	acc, err := st.Engine.Account(ctx, "acme_production")
	if err != nil {
		return err
	}
	js := acc.JetStream()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "Q_shop_orders", Subjects: []string{"q.shop.orders"},
		Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage, MaxMsgSize: int32(size) + 1024}); err != nil {
		return err
	}
	if _, err := js.CreateOrUpdateConsumer(ctx, "Q_shop_orders", jetstream.ConsumerConfig{Durable: "shop", AckPolicy: jetstream.AckExplicitPolicy}); err != nil {
		return err
	}
	payload := make([]byte, size)
	for i := 0; i < n; i++ {
		rand.Read(payload) // incompressible, as the engine's snapshot compresses
		if _, err := js.PublishAsync("q.shop.orders", payload); err != nil {
			return err
		}
		if i%1024 == 1023 {
			select {
			case <-js.PublishAsyncComplete():
			case <-time.After(5 * time.Minute):
				return fmt.Errorf("publishes not acknowledged")
			}
		}
	}
	select {
	case <-js.PublishAsyncComplete():
		return nil
	case <-time.After(5 * time.Minute):
		return fmt.Errorf("publishes not acknowledged")
	}
}

func timed(f func() error) time.Duration {
	t := time.Now()
	if err := f(); err != nil {
		log.Fatal(err)
	}
	return time.Since(t)
}

// dropCaches asks the kernel to drop clean pages, so each phase reads from disk; without
// the permission it does nothing, and the figures include the page cache.
func dropCaches() {
	_ = exec.Command("sync").Run()
	_ = os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0o200)
}

// resetPeak resets the process's peak resident set size (VmHWM).
func resetPeak() { _ = os.WriteFile("/proc/self/clear_refs", []byte("5\n"), 0o200) }

// peakRSS is the process's peak resident set size since resetPeak, in bytes.
func peakRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func dirSize(dir string) int64 {
	var n int64
	_ = filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			n += fi.Size()
		}
		return nil
	})
	return n
}

func parseSize(s string) (int64, error) {
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}} {
		if v, ok := strings.CutSuffix(s, u.suffix); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			return n * u.mult, err
		}
	}
	return 0, fmt.Errorf("-size %q: a number of MiB or GiB, such as 1GiB", s)
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// sampleRSS prints, when stopped, the largest anonymous and file-backed resident sizes seen.
func sampleRSS(phase string) func() {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		var anon, file int64
		for {
			b, _ := os.ReadFile("/proc/self/status")
			for _, line := range strings.Split(string(b), "\n") {
				for _, f := range []struct {
					name string
					max  *int64
				}{{"RssAnon:", &anon}, {"RssFile:", &file}} {
					if rest, ok := strings.CutPrefix(line, f.name); ok {
						kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
						*f.max = max(*f.max, kb<<10)
						if hp := os.Getenv("HEAPPROF"); hp != "" && f.name == "RssAnon:" && kb<<10 > 500<<20 {
							if fh, err := os.Create(hp); err == nil {
								_ = pprof.Lookup("heap").WriteTo(fh, 0)
								fh.Close()
								os.Setenv("HEAPPROF", "")
							}
						}
					}
				}
			}
			select {
			case <-done:
				fmt.Fprintf(os.Stderr, "%s: largest RssAnon %s, RssFile %s\n", phase, mib(anon), mib(file))
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	return func() { close(done); <-finished }
}
