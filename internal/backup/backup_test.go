package backup

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/penstock/penstock/internal/keyring"
	"github.com/penstock/penstock/internal/keyring/keyringtest"
)

var acme = keyring.Scope{Tenant: "acme", Environment: "production"}

// payload is message i's: a marker and 400 bytes of noise.
func payload(noise []byte, i int) []byte {
	return append(fmt.Appendf(nil, "SECRET-PAYLOAD-%06d-", i), noise[400*(i-1):400*i]...)
}

// loadedStream makes a queue-like stream in a tenant account with n messages and a consumer
// that was delivered 1000 of them and acknowledged the first 600.
func loadedStream(ctx context.Context, t *testing.T, js jetstream.JetStream, n int) (jetstream.Stream, jetstream.Consumer, []byte) {
	t.Helper()
	// Random bytes in each payload, so the engine's compressed snapshot spans several chunks.
	noise := make([]byte, 400*n)
	if _, err := rand.Read(noise); err != nil {
		t.Fatal(err)
	}
	s, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "Q_orders", Subjects: []string{"orders.>"}, Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= n; i++ {
		if _, err := js.PublishAsync(fmt.Sprintf("orders.%d", i%7), payload(noise, i)); err != nil {
			t.Fatal(err)
		}
		if i%500 == 0 {
			select {
			case <-js.PublishAsyncComplete():
			case <-ctx.Done():
				t.Fatal("publishes not acknowledged")
			}
		}
	}
	c, err := s.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{Durable: "c1", AckPolicy: jetstream.AckExplicitPolicy, AckWait: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	got := 0
	for got < 1000 {
		batch, err := c.Fetch(1000-got, jetstream.FetchMaxWait(10*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for m := range batch.Messages() {
			got++
			if md, _ := m.Metadata(); md.Sequence.Stream <= 600 {
				if err := m.DoubleAck(ctx); err != nil {
					t.Fatal(err)
				}
			}
		}
		if batch.Error() != nil {
			t.Fatal(batch.Error())
		}
	}
	return s, c, noise
}

// A stream backed up while a publisher runs and restored from its sealed part comes back as
// at the cut: its messages at their sequences, byte for byte, and its consumer's delivered
// and acknowledged positions. The sealed part holds no payload in the clear; damage, a cut,
// another scope's keys and a shredded scope are each refused, and a refused restore leaves
// no stream behind.
func TestStreamBackupAndRestore(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	st, err := keyringtest.Open(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	acc, err := st.Engine.Account(ctx, "acme_production")
	if err != nil {
		t.Fatal(err)
	}
	js := acc.JetStream()
	_, c, noise := loadedStream(ctx, t, js, 5000)
	before, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// A publisher keeps writing while the backup is taken.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := js.Publish(ctx, "orders.live", fmt.Appendf(nil, "LIVE-%d", i)); err != nil {
				return
			}
		}
	})
	var part bytes.Buffer
	w, err := NewSealedWriter(ctx, st.Keyring, acme, "b1/acme_production/Q_orders", &part)
	if err != nil {
		t.Fatal(err)
	}
	cfg, cut, err := Snapshot(ctx, acc.Conn(), "Q_orders", w)
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if cut.LastSeq < 5000 || cut.Messages != cut.LastSeq || cut.Consumers != 1 {
		t.Fatalf("cut %+v", cut)
	}
	if w.Size() != int64(part.Len()) || part.Len() < 2*chunkSize {
		t.Fatalf("size %d, wrote %d", w.Size(), part.Len())
	}
	if bytes.Contains(part.Bytes(), []byte("SECRET-PAYLOAD")) {
		t.Fatal("the sealed part holds a payload in the clear")
	}
	sealed := bytes.Clone(part.Bytes())
	t.Logf("cut at %d messages, %d sealed bytes", cut.LastSeq, len(sealed))

	if err := js.DeleteStream(ctx, "Q_orders"); err != nil {
		t.Fatal(err)
	}
	restore := func(scope keyring.Scope, b []byte) error {
		r, err := NewSealedReader(ctx, st.Keyring, scope, "b1/acme_production/Q_orders", bytes.NewReader(b))
		if err != nil {
			return err
		}
		_, err = Restore(ctx, acc.Conn(), cfg, r)
		return err
	}
	noStream := func(what string) {
		t.Helper()
		if _, err := js.Stream(ctx, "Q_orders"); !errors.Is(err, jetstream.ErrStreamNotFound) {
			t.Fatalf("after %s: the stream is there (%v)", what, err)
		}
	}

	// Refused: damage in the middle, a cut, another scope's keys.
	damaged := bytes.Clone(sealed)
	damaged[len(damaged)/2] ^= 0x40
	cases := map[string]struct {
		scope keyring.Scope
		b     []byte
	}{
		"a flipped byte":       {acme, damaged},
		"a part cut short":     {acme, sealed[:len(sealed)-chunkSize/2]},
		"the last chunk lost":  {acme, sealed[:len(partHeader)+5+chunkSize+33]}, // a whole first frame only
		"another scope's keys": {keyring.Scope{Tenant: "other", Environment: "production"}, sealed},
	}
	for what, tc := range cases {
		if err := restore(tc.scope, tc.b); !errors.Is(err, ErrUnreadable) {
			t.Errorf("%s: %v, want ErrUnreadable", what, err)
		} else {
			t.Logf("%s: %v", what, err)
		}
		noStream(what)
	}

	// Restored: the cut, message for message, and the consumer's positions. The engine gives
	// up a restore it finds stalled (seen under heavy load, as "read/write on closed pipe"):
	// RestoreParts tries a part that opened up to restoreAttempts times, and so does this.
	for attempt := 1; ; attempt++ {
		err := restore(acme, sealed)
		if err == nil {
			break
		}
		if attempt == restoreAttempts || errors.Is(err, ErrUnreadable) {
			t.Fatal(err)
		}
		t.Logf("attempt %d: %v", attempt, err)
	}
	s, err := js.Stream(ctx, "Q_orders")
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != cut.Messages || info.State.FirstSeq != cut.FirstSeq || info.State.LastSeq != cut.LastSeq {
		t.Fatalf("restored state %+v, cut %+v", info.State, cut)
	}
	for _, seq := range []uint64{1, 42, 5000} {
		m, err := s.GetMsg(ctx, seq)
		if err != nil || !bytes.Equal(m.Data, payload(noise, int(seq))) {
			t.Fatalf("message %d: %v %.30q", seq, err, m.Data)
		}
	}
	c, err = s.Consumer(ctx, "c1")
	if err != nil {
		t.Fatal(err)
	}
	after, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after.Delivered.Stream != before.Delivered.Stream || after.AckFloor.Stream != before.AckFloor.Stream ||
		after.NumAckPending != before.NumAckPending {
		t.Fatalf("consumer after restore: delivered %d, ack floor %d, pending %d; before: %d, %d, %d",
			after.Delivered.Stream, after.AckFloor.Stream, after.NumAckPending,
			before.Delivered.Stream, before.AckFloor.Stream, before.NumAckPending)
	}
	m, err := c.Next(jetstream.FetchMaxWait(10 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if md, _ := m.Metadata(); md.Sequence.Stream != 1001 {
		t.Fatalf("next delivery after restore: stream sequence %d, want 1001", md.Sequence.Stream)
	}

	// Shredding the scope makes the backup unreadable.
	if err := st.Keyring.Destroy(ctx, acme); err != nil {
		t.Fatal(err)
	}
	r, err := NewSealedReader(ctx, st.Keyring, acme, "b1/acme_production/Q_orders", bytes.NewReader(sealed))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, r); !errors.Is(err, ErrUnreadable) {
		t.Fatalf("a shredded scope's backup read with %v, want ErrUnreadable", err)
	}
}
