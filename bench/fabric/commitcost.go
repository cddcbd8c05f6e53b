package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// commitCost measures what one durable commit costs the engine, one commit at a time on one
// stream (sync "always"): a single publish, and atomic batches of growing size, with and
// without store encryption. It prints the ceiling this puts on 64 closed-loop publishers of
// single messages: each waits for its commit, so at best 64 messages share one commit.
func commitCost(size int) error {
	fmt.Printf("engine commit cost, %d-byte messages, sync always, one commit at a time\n\n", size)
	fmt.Printf("%-12s %12s %12s %12s %12s %12s %18s\n", "store", "single", "batch of 1", "of 10", "of 64", "of 500", "64-client ceiling")
	for _, encrypted := range []bool{false, true} {
		single, batches, err := commitLatencies(encrypted, size, []int{1, 10, 64, 500})
		if err != nil {
			return err
		}
		label := "plain"
		if encrypted {
			label = "encrypted"
		}
		fmt.Printf("%-12s %12s %12s %12s %12s %12s %13.0f msg/s\n", label, single.Round(time.Microsecond),
			batches[0].Round(time.Microsecond), batches[1].Round(time.Microsecond), batches[2].Round(time.Microsecond),
			batches[3].Round(time.Microsecond), 64/batches[2].Seconds())
	}
	return nil
}

func commitLatencies(encrypted bool, size int, ks []int) (time.Duration, []time.Duration, error) {
	dir, err := os.MkdirTemp("", "bench-commit")
	if err != nil {
		return 0, nil, err
	}
	defer os.RemoveAll(dir)
	opts := &server.Options{JetStream: true, StoreDir: dir, Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true, SyncAlways: true}
	if encrypted {
		opts.JetStreamKey = nuid.Next() + nuid.Next()
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return 0, nil, err
	}
	ns.Start()
	defer ns.Shutdown()
	if !ns.ReadyForConnections(10 * time.Second) {
		return 0, nil, errors.New("server not ready")
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		return 0, nil, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return 0, nil, err
	}
	if _, err := js.CreateStream(ctx, streamConfig("Q", "q")); err != nil {
		return 0, nil, err
	}
	const rounds = 100
	data := payload(size)
	start := time.Now()
	for range rounds {
		if _, err := js.Publish(ctx, "q", data); err != nil {
			return 0, nil, err
		}
	}
	single := time.Since(start) / rounds
	var out []time.Duration
	for _, k := range ks {
		start := time.Now()
		for range rounds {
			id := nuid.Next()
			for i := range k {
				m := nats.NewMsg("q")
				m.Data = data
				m.Header.Set("Nats-Batch-Id", id)
				m.Header.Set("Nats-Batch-Sequence", strconv.Itoa(i+1))
				if i < k-1 {
					if err := nc.PublishMsg(m); err != nil {
						return 0, nil, err
					}
					continue
				}
				m.Header.Set("Nats-Batch-Commit", "1")
				resp, err := nc.RequestMsg(m, 30*time.Second)
				if err != nil {
					return 0, nil, err
				}
				var pa struct {
					Count int             `json:"count"`
					Error json.RawMessage `json:"error"`
				}
				if err := json.Unmarshal(resp.Data, &pa); err != nil || pa.Error != nil || pa.Count != k {
					return 0, nil, fmt.Errorf("batch of %d: %s", k, resp.Data)
				}
			}
		}
		out = append(out, time.Since(start)/rounds)
	}
	return single, out, nil
}
