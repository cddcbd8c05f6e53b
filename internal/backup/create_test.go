package backup

import (
	"context"
	"crypto/ed25519"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"gocloud.dev/blob"
	"gocloud.dev/blob/fileblob"

	"github.com/penstock/penstock/internal/keyring"
	"github.com/penstock/penstock/internal/keyring/keyringtest"
	"github.com/penstock/penstock/internal/testenv"
)

// A tenant's backup in a directory target (file://).
func TestTenantBackupToADirectory(t *testing.T) {
	bucket, err := fileblob.OpenBucket(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer bucket.Close()
	tenantBackup(t, bucket)
}

// The same in S3-compatible object storage (s3://): a versitygw server of the test's own.
func TestTenantBackupToS3(t *testing.T) {
	tenantBackup(t, testenv.S3Bucket(t))
}

// tenantBackup: a tenant's manifest opens only with the signing key, a verify reads every
// part to its end, a damaged part or manifest is refused (and a refused restore leaves the
// live stream), and a restore brings the tenant's streams back as at the backup while another
// tenant's stay as they are; once the tenant's keys are destroyed the backup no longer opens.
func tenantBackup(t *testing.T, bucket *blob.Bucket) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	st, err := keyringtest.Open(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	o := Options{Engine: st.Engine, Keyring: st.Keyring, Bucket: bucket}
	pub, priv, _ := ed25519.GenerateKey(nil)
	otherPub, _, _ := ed25519.GenerateKey(nil)

	acc, err := st.Engine.Account(ctx, "acme_production")
	if err != nil {
		t.Fatal(err)
	}
	_, _, noise := loadedStream(ctx, t, acc.JetStream(), 2000)
	other, err := st.Engine.Account(ctx, "other_production")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.JetStream().CreateStream(ctx, jetstream.StreamConfig{Name: "Q_x", Subjects: []string{"x"}}); err != nil {
		t.Fatal(err)
	}

	m, err := Create(ctx, o, "20261205T0400Z-acme", "acme", []Source{{Account: "acme_production", Scope: acme}}, priv)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Parts) != 1 || m.Parts[0].Stream != "Q_orders" || m.Parts[0].State.LastSeq != 2000 {
		t.Fatalf("manifest parts %+v", m.Parts)
	}
	if _, err := Open(ctx, o, m.ID, otherPub); !errors.Is(err, ErrManifest) {
		t.Fatalf("opened with another key: %v", err)
	}
	if _, err := Open(ctx, o, "nope", pub); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a backup that is not there: %v", err)
	}
	got, err := Open(ctx, o, m.ID, pub)
	if err != nil {
		t.Fatal(err)
	}
	if err := Verify(ctx, o, got); err != nil {
		t.Fatal(err)
	}

	// Damage: a byte of the part; then the manifest. Written back through the target itself.
	replace := func(object string, b []byte) {
		t.Helper()
		if err := bucket.WriteAll(ctx, object, b, nil); err != nil {
			t.Fatal(err)
		}
	}
	good, err := bucket.ReadAll(ctx, m.Parts[0].Object)
	if err != nil {
		t.Fatal(err)
	}
	bad := append([]byte(nil), good...)
	bad[len(bad)-100] ^= 1
	replace(m.Parts[0].Object, bad)
	if err := Verify(ctx, o, got); !errors.Is(err, ErrUnreadable) {
		t.Fatalf("verify of a damaged part: %v", err)
	}
	if err := RestoreParts(ctx, o, got, got.Parts); !errors.Is(err, ErrUnreadable) {
		t.Fatalf("restore of a damaged part: %v", err)
	}
	if _, err := acc.JetStream().Stream(ctx, "Q_orders"); err != nil {
		t.Fatalf("a refused restore took the live stream: %v", err)
	}
	replace(m.Parts[0].Object, good)
	mb, err := bucket.ReadAll(ctx, manifestObject(got.ID))
	if err != nil {
		t.Fatal(err)
	}
	replace(manifestObject(got.ID), append([]byte(" "), mb...))
	if _, err := Open(ctx, o, got.ID, pub); !errors.Is(err, ErrManifest) {
		t.Fatalf("a changed manifest: %v", err)
	}
	replace(manifestObject(got.ID), mb)

	// The tenant's queue moves on after the backup; the restore puts it back as it was.
	js := acc.JetStream()
	if _, err := js.Publish(ctx, "orders.after", []byte("after the backup")); err != nil {
		t.Fatal(err)
	}
	if _, err := other.JetStream().Publish(ctx, "x", []byte("other tenant")); err != nil {
		t.Fatal(err)
	}
	if err := RestoreParts(ctx, o, got, got.Parts); err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(ctx, "Q_orders")
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.LastSeq != 2000 || info.State.Msgs != 2000 {
		t.Fatalf("restored %+v", info.State)
	}
	msg, err := s.GetMsg(ctx, 1999)
	if err != nil || string(msg.Data) != string(payload(noise, 1999)) {
		t.Fatalf("message 1999: %v", err)
	}
	xs, err := other.JetStream().Stream(ctx, "Q_x")
	if err != nil {
		t.Fatal(err)
	}
	if xi, err := xs.Info(ctx); err != nil || xi.State.Msgs != 1 {
		t.Fatalf("the other tenant's stream after acme's restore: %+v %v", xi, err)
	}

	// A shredded scope: the backup no longer verifies.
	if err := st.Keyring.Destroy(ctx, keyring.Scope{Tenant: "acme"}); err != nil {
		t.Fatal(err)
	}
	if err := Verify(ctx, o, got); !errors.Is(err, ErrUnreadable) {
		t.Fatalf("verify after the tenant's keys were destroyed: %v", err)
	}
}
