// Command engine measures acknowledged-publish throughput and latency of Penstock's engine:
// the embedded JetStream with engine.sync_interval "always" (the default) and "1s", against
// the peer, a standalone nats-server with JetStream (its default 2-minute fsync), in one run
// on one machine.
//
//	go run ./bench/engine                       # peer at nats://127.0.0.1:4222
//	go run ./bench/engine -peer "" -n 5000      # embedded only
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/datadir"
	"github.com/penstock/penstock/internal/engine"
)

type result struct {
	name     string
	writers  int
	msgs     int
	elapsed  time.Duration
	p50, p99 time.Duration
}

func (r result) rate() float64 { return float64(r.msgs) / r.elapsed.Seconds() }

func main() {
	peer := flag.String("peer", "nats://127.0.0.1:4222", "external NATS JetStream server to compare with; empty skips it")
	n := flag.Int("n", 4000, "messages per case")
	size := flag.Int("size", 1024, "payload bytes")
	flag.Parse()

	type target struct {
		name string
		open func() (*engine.Engine, func(), error)
	}
	embedded := func(sync string) func() (*engine.Engine, func(), error) {
		return func() (*engine.Engine, func(), error) {
			dir, err := os.MkdirTemp("", "penstock-bench")
			if err != nil {
				return nil, nil, err
			}
			key, err := datadir.LoadOrCreateKey(dir + "/store.key")
			if err != nil {
				return nil, nil, err
			}
			cfg := config.Default().Engine
			cfg.SyncInterval = sync
			e, err := engine.Open(context.Background(), engine.Options{DataDir: dir, Config: cfg, StoreKey: key})
			return e, func() { e.Close(); os.RemoveAll(dir) }, err
		}
	}
	targets := []target{
		{"embedded sync=always (default)", embedded("always")},
		{"embedded sync=1s", embedded("1s")},
	}
	if *peer != "" {
		targets = append(targets, target{"peer nats-server (default sync)", func() (*engine.Engine, func(), error) {
			cfg := config.Default().Engine
			cfg.NATSURL = *peer
			e, err := engine.Open(context.Background(), engine.Options{Config: cfg})
			return e, func() { e.Close() }, err
		}})
	}

	var results []result
	for _, writers := range []int{1, 32} {
		for _, tg := range targets {
			r, err := run(tg.name, tg.open, writers, *n, *size)
			if err != nil {
				log.Fatalf("%s: %v", tg.name, err)
			}
			results = append(results, r)
		}
	}

	fmt.Printf("acknowledged publishes, %d B payloads, %d messages per case, file storage, store encryption on for embedded\n\n", *size, *n)
	fmt.Printf("%-34s %7s %12s %10s %10s %14s\n", "engine", "writers", "msgs/s", "p50", "p99", "vs peer")
	for _, r := range results {
		ratio := "-"
		for _, p := range results {
			if p.writers == r.writers && p.name != r.name && len(p.name) > 4 && p.name[:4] == "peer" {
				ratio = fmt.Sprintf("%.2fx", r.rate()/p.rate())
			}
		}
		fmt.Printf("%-34s %7d %12.0f %10s %10s %14s\n", r.name, r.writers, r.rate(),
			r.p50.Round(time.Microsecond), r.p99.Round(time.Microsecond), ratio)
	}
}

func run(name string, open func() (*engine.Engine, func(), error), writers, n, size int) (result, error) {
	e, closeFn, err := open()
	if err != nil {
		return result{}, err
	}
	defer closeFn()
	ctx := context.Background()
	acc, err := e.Account(ctx, engine.PlatformAccount)
	if err != nil {
		return result{}, err
	}
	stream := fmt.Sprintf("BENCH_%d", time.Now().UnixNano())
	if _, err := acc.Stream(ctx, jetstream.StreamConfig{Name: stream, Subjects: []string{stream + ".>"}}); err != nil {
		return result{}, err
	}
	defer acc.JetStream().DeleteStream(ctx, stream)

	payload := make([]byte, size)
	lat := make([][]time.Duration, writers)
	var wg sync.WaitGroup
	var firstErr error
	var mu sync.Mutex
	start := time.Now()
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += writers {
				t0 := time.Now()
				if _, err := acc.JetStream().Publish(ctx, stream+".x", payload); err != nil {
					mu.Lock()
					firstErr = err
					mu.Unlock()
					return
				}
				lat[w] = append(lat[w], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if firstErr != nil {
		return result{}, firstErr
	}
	all := slices.Concat(lat...)
	slices.Sort(all)
	return result{name: name, writers: writers, msgs: n, elapsed: elapsed,
		p50: all[len(all)/2], p99: all[len(all)*99/100]}, nil
}
