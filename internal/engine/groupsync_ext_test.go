package engine_test

import (
	"context"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/penstock/penstock/internal/config"
)

// With group sync every write through an account's JetStream context returns after a group
// sync: key-value writes, publishes, stream changes; the engine itself does not fsync.
func TestGroupSyncCoversAccountWrites(t *testing.T) {
	e := openEmbedded(t, t.TempDir(), storeKey(t), func(c *config.Engine) { c.GroupSync = true })
	if !e.GroupSync() || e.Durability() != "always" {
		t.Fatalf("group sync %v, durability %q", e.GroupSync(), e.Durability())
	}
	ctx := context.Background()
	acc, err := e.Account(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	writes := []struct {
		name string
		do   func() error
	}{
		{"create bucket", func() error {
			_, err := acc.KeyValue(ctx, jetstream.KeyValueConfig{Bucket: "state"})
			return err
		}},
		{"put", func() error {
			kv, err := acc.JetStream().KeyValue(ctx, "state")
			if err != nil {
				return err
			}
			_, err = kv.Put(ctx, "k", []byte("v"))
			return err
		}},
		{"create stream", func() error {
			_, err := acc.Stream(ctx, jetstream.StreamConfig{Name: "S", Subjects: []string{"s"}})
			return err
		}},
		{"publish", func() error {
			_, err := acc.JetStream().Publish(ctx, "s", []byte("x"))
			return err
		}},
		{"delete message", func() error {
			st, err := acc.JetStream().Stream(ctx, "S")
			if err != nil {
				return err
			}
			return st.DeleteMsg(ctx, 1)
		}},
	}
	for _, w := range writes {
		before := e.Syncs()
		if err := w.do(); err != nil {
			t.Fatalf("%s: %v", w.name, err)
		}
		if e.Syncs() == before {
			t.Fatalf("%s returned without a group sync", w.name)
		}
	}
	// With the engine's client port open, its clients are answered by the engine alone: it
	// keeps its fsync per write.
	e3 := openEmbedded(t, t.TempDir(), storeKey(t), func(c *config.Engine) { c.GroupSync = true; c.ClientListen = "127.0.0.1:0" })
	if e3.GroupSync() || e3.Durability() != "always" {
		t.Fatalf("client_listen set: group sync %v, durability %q", e3.GroupSync(), e3.Durability())
	}
	// Without it the engine fsyncs every write and Penstock adds nothing.
	e2 := openEmbedded(t, t.TempDir(), storeKey(t), func(c *config.Engine) { c.GroupSync = false })
	if e2.GroupSync() || e2.Durability() != "always" || e2.Syncs() != 0 {
		t.Fatalf("group_sync false: group sync %v, durability %q, %d group syncs", e2.GroupSync(), e2.Durability(), e2.Syncs())
	}
}
