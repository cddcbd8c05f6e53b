// Command retention measures what retention costs a platform of many environments, beside a
// peer in the same run: the first run (which writes a record for every environment), a later
// run (one sealed read per environment and one per tenant), a flush after every environment
// was used, and, as the peer, the same number of plain reads and writes of a JetStream KV
// bucket in the same engine (no sealing, no JSON).
//
//	go run ./bench/retention [-tenants 1000]
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/penstock/penstock/internal/activity"
	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/identity"
	"github.com/penstock/penstock/internal/keyring/keyringtest"
	"github.com/penstock/penstock/internal/retention"
)

func main() {
	tenants := flag.Int("tenants", 1000, "tenants, each with the three default environments")
	flag.Parse()
	ctx := context.Background()
	st, closeStack, err := keyringtest.OpenTemp(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer closeStack()
	icfg := identity.DefaultConfig()
	icfg.Argon2 = identity.Argon2Params{Memory: 19 << 10, Time: 1, Threads: 1}
	ids, err := identity.Open(ctx, st.Platform, st.Keyring, icfg, slog.New(slog.DiscardHandler))
	if err != nil {
		log.Fatal(err)
	}
	defer ids.Close()
	start := time.Now()
	for i := range *tenants {
		if _, err := ids.CreateTenant(ctx, fmt.Sprintf("t%05d", i)); err != nil {
			log.Fatal(err)
		}
	}
	envs := *tenants * len(identity.DefaultEnvironments)
	fmt.Printf("bench/retention: %d tenants, %d environments (made in %s)\n\n", *tenants, envs, time.Since(start).Round(time.Millisecond))
	tr := activity.New(nil)
	svc, err := retention.Open(ctx, retention.Options{Keyring: st.Keyring, Identity: ids, Tracker: tr,
		Config: config.Default().Retention, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		log.Fatal(err)
	}
	timed := func(label string, n int, f func() error) time.Duration {
		t := time.Now()
		if err := f(); err != nil {
			log.Fatalf("%s: %v", label, err)
		}
		d := time.Since(t)
		fmt.Printf("%-62s %10s  %8.1f µs per environment\n", label, d.Round(time.Millisecond), float64(d.Microseconds())/float64(n))
		return d
	}
	run := func() error {
		res, err := svc.Run(ctx, false)
		if err == nil && (res.Checked != envs || len(res.Actions) != 0) {
			err = fmt.Errorf("checked %d, %d actions", res.Checked, len(res.Actions))
		}
		return err
	}
	timed("first run (writes a record per environment)", envs, run)
	later := timed("a later run (reads every record and policy)", envs, run)
	for _, t := range ids.Tenants() {
		for _, e := range t.Environments {
			tr.Touch(t.Name, e, activity.Publish)
		}
	}
	timed("flush after every environment was used", envs, func() error { return svc.Flush(ctx) })

	// The peer: the same number of plain KV writes, then reads, in a bucket of the same engine.
	kv, err := st.Platform.KeyValue(ctx, jetstream.KeyValueConfig{Bucket: "bench_plain", History: 1})
	if err != nil {
		log.Fatal(err)
	}
	keys := make([]string, 0, envs)
	for _, t := range ids.Tenants() {
		for _, e := range t.Environments {
			keys = append(keys, t.Name+"."+e)
		}
	}
	value := []byte(`{"since":"2026-12-06T00:00:00Z","activity":{"publish":"2026-12-06T00:00:00Z"}}`)
	timed("peer: plain KV puts, one per environment", envs, func() error {
		for _, k := range keys {
			if _, err := kv.Put(ctx, k, value); err != nil {
				return err
			}
		}
		return nil
	})
	plain := timed("peer: plain KV gets, one per environment", envs, func() error {
		for _, k := range keys {
			if _, err := kv.Get(ctx, k); err != nil {
				return err
			}
		}
		return nil
	})
	fmt.Printf("\nratio: a later run / plain gets of as many keys: %.2f\n", later.Seconds()/plain.Seconds())
	fmt.Printf("at the default retention.check_every (1h): a run takes %.3f %% of an hour for %d environments\n",
		later.Seconds()/3600*100, envs)
}
