// Command audit measures what auditing costs: appending hash-chained events (fsynced, the
// engine's default) at 1 and 16 concurrent writers, beside publishing the same event bytes to
// a plain stream with the same storage in the same run. A change through the API appends two
// events (before and after), so the cost it adds is about twice the append latency.
//
//	go run ./bench/audit
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/penstock/penstock/internal/audit"
	"github.com/penstock/penstock/internal/keyring/keyringtest"
)

func main() {
	ctx := context.Background()
	st, closeStack, err := keyringtest.OpenTemp(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer closeStack()
	l, err := audit.Open(ctx, audit.Options{Platform: st.Platform, Keyring: st.Keyring})
	if err != nil {
		log.Fatal(err)
	}
	if _, err := st.Platform.Stream(ctx, jetstream.StreamConfig{Name: "PLAIN", Subjects: []string{"plain.>"}}); err != nil {
		log.Fatal(err)
	}
	ev := audit.Event{Actor: "user:alice", Tenant: "acme", Environment: "production", Application: "billing",
		Action: "secret.write", Target: "/v1/tenants/acme/environments/production/applications/billing/secrets/db",
		Result: "ok", Source: "192.0.2.1", RequestID: "0123456789abcdef", Details: map[string]string{"operation": "secret-put"}}
	payload, _ := json.Marshal(ev)
	const n = 2000

	fmt.Printf("%d events per case, 1 KiB-ish JSON, file storage, fsync every write\n\n", n)
	fmt.Printf("%-28s %7s %10s %10s %10s %10s\n", "", "writers", "events/s", "p50", "p99", "vs plain")
	for _, writers := range []int{1, 16} {
		a := run(n, writers, func() error { _, err := l.Append(ctx, ev); return err })
		p := run(n, writers, func() error { _, err := st.Platform.JetStream().Publish(ctx, "plain.x", payload); return err })
		fmt.Printf("%-28s %7d %10.0f %10s %10s %9.2fx\n", "audit append (chained)", writers, a.rate, a.p50, a.p99, a.rate/p.rate)
		fmt.Printf("%-28s %7d %10.0f %10s %10s %10s\n", "plain publish (peer)", writers, p.rate, p.p50, p.p99, "-")
	}
	requests(ctx, st, l, 1000)
}

type result struct {
	rate     float64
	p50, p99 time.Duration
}

func run(n, writers int, f func() error) result {
	lat := make([][]time.Duration, writers)
	var wg sync.WaitGroup
	start := time.Now()
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += writers {
				t0 := time.Now()
				if err := f(); err != nil {
					log.Fatal(err)
				}
				lat[w] = append(lat[w], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	all := slices.Concat(lat...)
	slices.Sort(all)
	return result{rate: float64(n) / el.Seconds(), p50: all[len(all)/2].Round(time.Microsecond), p99: all[len(all)*99/100].Round(time.Microsecond)}
}
