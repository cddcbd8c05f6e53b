package main

import (
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/penstock/penstock/internal/activity"
	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/fabric"
)

// tracking is the activity tracker the next openPenstock gives its fabric (nil: none).
var tracking *activity.Tracker

// activityCost measures what retention's activity tracking costs a publish: the tracker's
// Touch alone (64 goroutines on one environment, the contended case), then the same
// single-message publishes through the fabric with and without a tracker, in alternating
// rounds on two stacks of the same settings (lazy fsync: the cheapest publish, where a fixed
// cost per call shows most), and the median ratio of the rounds.
func activityCost(n int) error {
	tr := activity.New(nil)
	touch := testing.Benchmark(func(b *testing.B) {
		b.SetParallelism(max(1, 64/runtime.GOMAXPROCS(0)))
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				tr.Touch("acme", "production", activity.Publish)
			}
		})
	})
	fmt.Printf("bench/fabric -only activity: %d single-message publishes per round, 64 publishers, lazy fsync\n\n", n)
	fmt.Printf("activity.Touch, 64 goroutines on one environment: %.1f ns per call\n", float64(touch.T.Nanoseconds())/float64(touch.N))

	open := func(t *activity.Tracker) (*penstockStack, error) {
		tracking = t
		defer func() { tracking = nil }()
		return openPenstock("2m", config.Default().Fabric)
	}
	without, err := open(nil)
	if err != nil {
		return err
	}
	defer without.close()
	with, err := open(activity.New(nil))
	if err != nil {
		return err
	}
	defer with.close()
	q := fabric.Target{Ref: fabric.Ref{Tenant: "acme", Environment: "production", Application: "shop", Name: "jobs"}}
	round := func(p *penstockStack) (float64, error) {
		var next atomic.Int64
		var wg sync.WaitGroup
		errs := make(chan error, 64)
		msg := []fabric.Message{{Data: payload(128)}}
		start := time.Now()
		for range 64 {
			wg.Go(func() {
				for next.Add(1) <= int64(n) {
					if _, err := p.fab.Publish(ctx, q, msg); err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		el := time.Since(start)
		select {
		case err := <-errs:
			return 0, err
		default:
		}
		return float64(n) / el.Seconds(), nil
	}
	// A warm-up round each, then alternating rounds.
	const rounds = 9
	if _, err := round(without); err != nil {
		return err
	}
	if _, err := round(with); err != nil {
		return err
	}
	var ratios, a, b []float64
	for range rounds {
		x, err := round(without)
		if err != nil {
			return err
		}
		y, err := round(with)
		if err != nil {
			return err
		}
		a, b, ratios = append(a, x), append(b, y), append(ratios, y/x)
	}
	med := func(v []float64) float64 { v = slices.Clone(v); slices.Sort(v); return v[len(v)/2] }
	fmt.Printf("fabric.Publish without activity tracking: %8.0f msgs/s (median of %d rounds; %s)\n", med(a), rounds, spread(a))
	fmt.Printf("fabric.Publish with activity tracking:    %8.0f msgs/s (median of %d rounds; %s)\n", med(b), rounds, spread(b))
	r := med(ratios)
	mark := "meets"
	if r < 0.98 {
		mark = "BELOW"
	}
	fmt.Printf("\nratio with / without, median of the %d paired rounds: %.3f (cost %.1f %%; target under 2 %%: %s); the paired ratios range %.3f..%.3f\n",
		rounds, r, (1-r)*100, mark, slices.Min(ratios), slices.Max(ratios))
	fmt.Printf("Touch per publish / publish time: %.3f %%\n", float64(touch.T.Nanoseconds())/float64(touch.N)/(1e9/med(a))*100)
	return nil
}

func spread(v []float64) string {
	lo, hi := slices.Min(v), slices.Max(v)
	return fmt.Sprintf("rounds %.0f..%.0f", lo, hi)
}
