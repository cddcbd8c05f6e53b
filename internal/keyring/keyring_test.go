package keyring

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/engine"
	"github.com/penstock/penstock/internal/redact"
)

// stack is a keyring on a real embedded engine in a data directory, as the app builds it.
type stack struct {
	t      testing.TB
	dir    string
	cfg    config.Keyring
	master *Master
	eng    *engine.Engine
	kr     *Keyring
}

func open(t testing.TB, dir string, cfg config.Keyring) *stack {
	t.Helper()
	st, err := tryOpen(t, dir, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func tryOpen(t testing.TB, dir string, cfg config.Keyring) (*stack, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := LoadMaster(ctx, dir, cfg)
	if err != nil {
		return nil, err
	}
	eng, err := engine.Open(ctx, engine.Options{DataDir: dir, Config: config.Default().Engine, StoreKey: m.StoreKey()})
	if err != nil {
		m.Close()
		return nil, err
	}
	if err := m.StoreOpened(); err != nil {
		t.Fatal(err)
	}
	plat, err := eng.Account(ctx, engine.PlatformAccount)
	if err != nil {
		t.Fatal(err)
	}
	kr, err := New(ctx, Options{Master: m, Platform: plat})
	if err != nil {
		eng.Close()
		m.Close()
		return nil, err
	}
	st := &stack{t: t, dir: dir, cfg: cfg, master: m, eng: eng, kr: kr}
	t.Cleanup(st.close)
	return st, nil
}

func (st *stack) close() {
	if st.kr == nil {
		return
	}
	st.kr.Close()
	st.eng.Close()
	st.master.Close()
	st.kr = nil
}

func (st *stack) restart() *stack {
	st.close()
	return open(st.t, st.dir, st.cfg)
}

var (
	acme     = Scope{Tenant: "acme"}
	acmeProd = Scope{Tenant: "acme", Environment: "production"}
	acmeApp  = Scope{Tenant: "acme", Environment: "production", Application: "billing"}
	globex   = Scope{Tenant: "globex", Environment: "production", Application: "billing"}
	ctx      = context.Background()
)

func TestRoundTripPerScope(t *testing.T) {
	st := open(t, t.TempDir(), config.Keyring{})
	for _, s := range []Scope{acme, acmeProd, acmeApp} {
		t.Run(s.String(), func(t *testing.T) {
			pt := []byte("record of " + s.String())
			ct, err := st.kr.Seal(ctx, s, "secret", "db-password", pt)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(ct, pt) {
				t.Fatal("ciphertext contains the plaintext")
			}
			got, err := st.kr.Unseal(ctx, s, "secret", "db-password", ct)
			if err != nil || !bytes.Equal(got, pt) {
				t.Fatalf("unseal = %q, %v", got, err)
			}
			ct2, _ := st.kr.Seal(ctx, s, "secret", "db-password", pt)
			if bytes.Equal(ct, ct2) {
				t.Fatal("two seals of the same plaintext are equal")
			}
		})
	}
	status, err := st.kr.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(status.Scopes) != 3 {
		t.Fatalf("scopes %+v, want 3 created lazily", status.Scopes)
	}
	for _, sc := range status.Scopes {
		if sc.Versions != 1 || sc.Primary != 1 || sc.Master != status.Master.ID {
			t.Errorf("scope status %+v", sc)
		}
	}
}

// Every way a ciphertext can be wrong is a clean, typed error, never a panic or a plaintext.
func TestUnsealRefusesWhatDoesNotBelong(t *testing.T) {
	st := open(t, t.TempDir(), config.Keyring{})
	pt := []byte("the-plaintext")
	ct, err := st.kr.Seal(ctx, acmeApp, "secret", "a", pt)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.kr.Seal(ctx, globex, "secret", "a", pt); err != nil {
		t.Fatal(err)
	}
	flip := func(i int) []byte {
		c := bytes.Clone(ct)
		c[i] ^= 0x01
		return c
	}
	unknownVersion := bytes.Clone(ct)
	copy(unknownVersion[1:5], []byte{0xde, 0xad, 0xbe, 0xef})
	garbage := make([]byte, 200)
	rand.Read(garbage)
	cases := []struct {
		name  string
		scope Scope
		kind  string
		id    string
		ct    []byte
		want  error
	}{
		{"format byte", acmeApp, "secret", "a", flip(0), ErrMalformed},
		{"unknown key version", acmeApp, "secret", "a", unknownVersion, ErrUnknownKeyVersion},
		{"nonce", acmeApp, "secret", "a", flip(8), ErrDecrypt},
		{"body", acmeApp, "secret", "a", flip(len(ct) - 20), ErrDecrypt},
		{"tag", acmeApp, "secret", "a", flip(len(ct) - 1), ErrDecrypt},
		{"other tenant", globex, "secret", "a", ct, ErrUnknownKeyVersion},
		{"scope without a key", Scope{Tenant: "initech"}, "secret", "a", ct, ErrNoKey},
		{"parent scope", acmeProd, "secret", "a", ct, ErrNoKey},
		{"other kind", acmeApp, "token", "a", ct, ErrDecrypt},
		{"other id", acmeApp, "secret", "b", ct, ErrDecrypt},
		{"empty", acmeApp, "secret", "a", nil, ErrMalformed},
		{"garbage", acmeApp, "secret", "a", garbage, ErrMalformed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := st.kr.Unseal(ctx, tc.scope, tc.kind, tc.id, tc.ct)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if got != nil {
				t.Fatalf("returned %q with an error", got)
			}
		})
	}
	// Every truncation is refused.
	for n := 0; n < len(ct); n++ {
		if _, err := st.kr.Unseal(ctx, acmeApp, "secret", "a", ct[:n]); err == nil {
			t.Fatalf("truncated to %d bytes: accepted", n)
		} else if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrDecrypt) {
			t.Fatalf("truncated to %d bytes: %v", n, err)
		}
	}
	// A ciphertext from another tenant whose key id happens to exist would still fail: the
	// keys differ. Copy a globex ciphertext into acme by making both scopes share nothing.
	gct, _ := st.kr.Seal(ctx, globex, "secret", "a", pt)
	if _, err := st.kr.Unseal(ctx, acmeApp, "secret", "a", gct); err == nil {
		t.Fatal("another tenant's ciphertext opened")
	}
	for _, bad := range []struct {
		s        Scope
		kind, id string
	}{{Scope{Tenant: "Acme"}, "secret", "a"}, {acmeApp, "Secret", "a"}, {acmeApp, "secret", ""}, {Scope{Tenant: "a", Application: "x"}, "secret", "a"}} {
		if _, err := st.kr.Seal(ctx, bad.s, bad.kind, bad.id, pt); err == nil {
			t.Errorf("Seal(%v, %q, %q) accepted", bad.s, bad.kind, bad.id)
		}
	}
}

func TestMasterKeySources(t *testing.T) {
	key := make([]byte, 32)
	rand.Read(key)
	cases := map[string]config.Keyring{
		"file":          {},
		"env hex":       {MasterKey: redact.NewSecret(hex.EncodeToString(key))},
		"env base64":    {MasterKey: redact.NewSecret(base64.StdEncoding.EncodeToString(key))},
		"base64key URL": {KMSURL: redact.NewSecret("base64key://" + base64.URLEncoding.EncodeToString(key))},
	}
	for name, cfg := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			st := open(t, dir, cfg)
			ct, err := st.kr.Seal(ctx, acmeApp, "secret", "x", []byte("v"))
			if err != nil {
				t.Fatal(err)
			}
			_, statErr := os.Stat(filepath.Join(dir, MasterKeyFile))
			if (name == "file") != (statErr == nil) {
				t.Fatalf("master.key exists=%v for source %s", statErr == nil, name)
			}
			st = st.restart()
			if got, err := st.kr.Unseal(ctx, acmeApp, "secret", "x", ct); err != nil || string(got) != "v" {
				t.Fatalf("after restart: %q %v", got, err)
			}
			st.close()
			// Another master key cannot open this data directory.
			other := config.Keyring{MasterKey: redact.NewSecret(strings.Repeat("ab", 32))}
			if _, err := tryOpen(t, dir, other); err == nil || !strings.Contains(err.Error(), "not configured") {
				t.Fatalf("opened with another master key: %v", err)
			}
		})
	}
	if _, err := LoadMaster(ctx, t.TempDir(), config.Keyring{MasterKey: redact.NewSecret("short")}); err == nil {
		t.Fatal("accepted a short master key")
	}
	_, err := LoadMaster(ctx, t.TempDir(), config.Keyring{KMSURL: redact.NewSecret("base64key://not-a-key-hunter2")})
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("bad base64key URL: %v", err)
	}
}

func TestUnsafeMasterKeyFileRefused(t *testing.T) {
	dir := t.TempDir()
	open(t, dir, config.Keyring{}).close()
	if err := os.Chmod(filepath.Join(dir, MasterKeyFile), 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadMaster(ctx, dir, config.Keyring{}); err == nil || !strings.Contains(err.Error(), "readable by group or others") {
		t.Fatalf("group-readable master key: %v", err)
	}
}

func sealedRecords(t *testing.T, st *stack, s Scope, n int, prefix string) *Sealed {
	t.Helper()
	store, err := st.kr.Sealed(ctx, "test_records", "record")
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if _, err := store.Put(ctx, s, fmt.Sprintf("%s%03d", prefix, i), []byte(fmt.Sprintf("value-%s%03d", prefix, i))); err != nil {
			t.Fatal(err)
		}
	}
	return store
}

func waitJobs(t *testing.T, k *Keyring) {
	t.Helper()
	done := make(chan struct{})
	go func() { k.jobs.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("re-encryption did not finish")
	}
}

func checkAll(t *testing.T, store *Sealed, s Scope, wantVersion int) {
	t.Helper()
	entries, err := store.List(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		v, _, err := store.Get(ctx, s, e.ID)
		if err != nil || string(v) != "value-"+e.ID {
			t.Fatalf("%s: %q %v", e.ID, v, err)
		}
		if wantVersion > 0 && e.KeyVersion != wantVersion {
			t.Fatalf("%s sealed with version %d, want %d", e.ID, e.KeyVersion, wantVersion)
		}
	}
}

func TestRotationReencryptsRecords(t *testing.T) {
	st := open(t, t.TempDir(), config.Keyring{})
	store := sealedRecords(t, st, acmeApp, 30, "before")
	other := sealedRecords(t, st, globex, 5, "other")
	v, err := st.kr.Rotate(ctx, acmeApp)
	if err != nil || v != 2 {
		t.Fatalf("rotate = %d, %v", v, err)
	}
	sealedRecords(t, st, acmeApp, 10, "after")
	checkAll(t, store, acmeApp, 0) // both versions readable at once
	waitJobs(t, st.kr)
	checkAll(t, store, acmeApp, 2)
	checkAll(t, other, globex, 1) // another scope is untouched
	jobs, _ := st.kr.Jobs(ctx)
	// The job rewraps the 30 records sealed before the rotation; records written after it
	// are sealed with version 2 already.
	if len(jobs) != 1 || jobs[0].Finished.IsZero() || jobs[0].Rewrap != 30 || jobs[0].Done < 30 || jobs[0].Version != 2 {
		t.Fatalf("jobs %+v", jobs)
	}
	status, _ := st.kr.Status(ctx)
	for _, s := range status.Scopes {
		if s.Scope == acmeApp.String() && (s.Versions != 2 || s.Primary != 2 || s.Rotated.IsZero()) {
			t.Fatalf("status after rotation: %+v", s)
		}
	}
	st = st.restart()
	store, _ = st.kr.Sealed(ctx, "test_records", "record")
	checkAll(t, store, acmeApp, 2)
}

func TestInterruptedReencryptionResumes(t *testing.T) {
	st := open(t, t.TempDir(), config.Keyring{})
	store := sealedRecords(t, st, acmeApp, 120, "r")
	st.kr.afterRecord = func(done int) {
		if done == 53 { // between two periodic saves: the stop itself must save
			st.kr.stopJobs() // as a shutdown would
		}
	}
	if _, err := st.kr.Rotate(ctx, acmeApp); err != nil {
		t.Fatal(err)
	}
	waitJobs(t, st.kr)
	jobs, _ := st.kr.Jobs(ctx)
	if len(jobs) != 1 || !jobs[0].Finished.IsZero() || jobs[0].Done != 53 {
		t.Fatalf("interrupted job %+v", jobs)
	}
	interruptedAt := jobs[0].Done
	checkAll(t, store, acmeApp, 0) // half old, half new: all readable

	st = st.restart()
	store, _ = st.kr.Sealed(ctx, "test_records", "record")
	if err := st.kr.ResumeJobs(ctx); err != nil {
		t.Fatal(err)
	}
	waitJobs(t, st.kr)
	jobs, _ = st.kr.Jobs(ctx)
	if jobs[0].Finished.IsZero() || jobs[0].Done != 120 {
		t.Fatalf("resumed job %+v (interrupted at %d)", jobs[0], interruptedAt)
	}
	checkAll(t, store, acmeApp, 2)
}

// Rotating the master key file while running keeps every record readable, and the engine's
// store key, re-sealed under the new master key (the store itself is never re-keyed), opens
// the store at every later start.
func TestRotateMasterFile(t *testing.T) {
	dir := t.TempDir()
	st := open(t, dir, config.Keyring{})
	store := sealedRecords(t, st, acmeApp, 10, "m")
	sealedRecords(t, st, acmeProd, 3, "p")
	// Engine data outside the keyring: a stream in a tenant account.
	tenant, _ := st.eng.Account(ctx, "tenant-a")
	if _, err := tenant.Stream(ctx, jetstream.StreamConfig{Name: "Q", Subjects: []string{"q.>"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := tenant.JetStream().Publish(ctx, "q.x", []byte("queued")); err != nil {
		t.Fatal(err)
	}
	oldKey, _ := os.ReadFile(filepath.Join(dir, MasterKeyFile))
	oldID := st.master.ID()

	if err := st.kr.RotateMaster(ctx, st.master); err != nil {
		t.Fatal(err)
	}
	newKey, _ := os.ReadFile(filepath.Join(dir, MasterKeyFile))
	if bytes.Equal(oldKey, newKey) || st.master.ID() == oldID {
		t.Fatal("master key file unchanged")
	}
	if _, err := os.Stat(filepath.Join(dir, masterKeyNextFile)); !os.IsNotExist(err) {
		t.Fatal("master.key.next left behind")
	}
	checkAll(t, store, acmeApp, 1) // still readable, same data key
	status, _ := st.kr.Status(ctx)
	for _, s := range status.Scopes {
		if s.Master != st.master.ID() {
			t.Fatalf("scope %s still wrapped by %s", s.Scope, s.Master)
		}
	}

	storeKeysFile := func() storeKeysFile {
		b, err := os.ReadFile(filepath.Join(dir, StoreKeysFile))
		if err != nil {
			t.Fatal(err)
		}
		var f storeKeysFile
		if err := json.Unmarshal(b, &f); err != nil {
			t.Fatal(err)
		}
		return f
	}
	if f := storeKeysFile(); len(f.Previous) != 0 || f.KEK != st.master.ID() {
		t.Fatalf("after rotate-master the store keys file keeps a previous key or names %s, not %s", f.KEK, st.master.ID())
	}
	storeKey := st.master.StoreKey()
	for round := 1; round <= 2; round++ {
		st = st.restart()
		if f := storeKeysFile(); len(f.Previous) != 0 || f.KEK != st.master.ID() {
			t.Fatalf("round %d: store keys file names %s, previous kept: %v", round, f.KEK, len(f.Previous) != 0)
		}
		if !st.master.StoreKey().Equal(storeKey) {
			t.Fatalf("round %d: the store key changed", round)
		}
		store, _ = st.kr.Sealed(ctx, "test_records", "record")
		checkAll(t, store, acmeApp, 1)
		tenant, err := st.eng.Account(ctx, "tenant-a")
		if err != nil {
			t.Fatal(err)
		}
		s, err := tenant.JetStream().Stream(ctx, "Q")
		if err != nil {
			t.Fatalf("round %d: stream after master rotation: %v", round, err)
		}
		m, err := s.GetMsg(ctx, 1)
		if err != nil || string(m.Data) != "queued" {
			t.Fatalf("round %d: message after master rotation: %v", round, err)
		}
	}
}

// A rotation interrupted after the new key file was written finishes at the next start.
func TestInterruptedMasterRotationResumes(t *testing.T) {
	dir := t.TempDir()
	st := open(t, dir, config.Keyring{})
	sealedRecords(t, st, acmeApp, 5, "i")
	sealedRecords(t, st, globex, 5, "g")
	// What RotateMaster does before it rewraps anything, then a crash.
	raw := make([]byte, 32)
	rand.Read(raw)
	next := hex.EncodeToString(raw)
	if err := os.WriteFile(filepath.Join(dir, masterKeyNextFile), []byte(next+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	st.close()

	st = open(t, dir, config.Keyring{})
	got, _ := os.ReadFile(filepath.Join(dir, MasterKeyFile))
	if strings.TrimSpace(string(got)) != next {
		t.Fatal("the new master key was not installed")
	}
	store, _ := st.kr.Sealed(ctx, "test_records", "record")
	checkAll(t, store, acmeApp, 1)
	checkAll(t, store, globex, 1)
	st = st.restart()
	store, _ = st.kr.Sealed(ctx, "test_records", "record")
	checkAll(t, store, globex, 1)
}

// A configured master key rotates through previous_master_key: the first start with both
// rewraps everything, after which the old key can be dropped.
func TestRotateConfiguredMasterKey(t *testing.T) {
	dir := t.TempDir()
	a, b := strings.Repeat("1a", 32), strings.Repeat("2b", 32)
	st := open(t, dir, config.Keyring{MasterKey: redact.NewSecret(a)})
	sealedRecords(t, st, acmeApp, 5, "c")
	if err := st.kr.RotateMaster(ctx, st.master); !errors.Is(err, ErrRotateConfigured) {
		t.Fatalf("RotateMaster with an environment key: %v", err)
	}
	st.close()
	st = open(t, dir, config.Keyring{MasterKey: redact.NewSecret(b), PreviousMasterKey: redact.NewSecret(a)})
	st.close()
	for range 2 {
		st = open(t, dir, config.Keyring{MasterKey: redact.NewSecret(b)})
		store, _ := st.kr.Sealed(ctx, "test_records", "record")
		checkAll(t, store, acmeApp, 1)
		st.close()
	}
}

func TestDestroyShredsScopeAndBelow(t *testing.T) {
	st := open(t, t.TempDir(), config.Keyring{})
	store := sealedRecords(t, st, acmeApp, 3, "d")
	ctTenant, _ := st.kr.Seal(ctx, acme, "secret", "t", []byte("tenant-level"))
	ctEnv, _ := st.kr.Seal(ctx, acmeProd, "secret", "e", []byte("env-level"))
	otherStore := sealedRecords(t, st, globex, 2, "o")
	rawBefore, _ := store.kv.Get(ctx, sealedKey(acmeApp, "d000"))
	keysetEntry, _ := st.kr.kv.Get(ctx, recordKey(acmeApp))

	if err := st.kr.Destroy(ctx, acme); err != nil {
		t.Fatal(err)
	}
	for name, f := range map[string]func() error{
		"unseal tenant": func() error { _, err := st.kr.Unseal(ctx, acme, "secret", "t", ctTenant); return err },
		"unseal env":    func() error { _, err := st.kr.Unseal(ctx, acmeProd, "secret", "e", ctEnv); return err },
		"unseal app copy": func() error {
			_, err := st.kr.Unseal(ctx, acmeApp, "record", "d000", rawBefore.Value())
			return err
		},
		"get":      func() error { _, _, err := store.Get(ctx, acmeApp, "d000"); return err },
		"list":     func() error { _, err := store.List(ctx, acmeApp); return err },
		"new seal": func() error { _, err := st.kr.Seal(ctx, acmeApp, "secret", "n", []byte("x")); return err },
		"new app scope": func() error {
			_, err := st.kr.Seal(ctx, Scope{"acme", "staging", "x"}, "secret", "n", []byte("x"))
			return err
		},
		"rotate": func() error { _, err := st.kr.Rotate(ctx, acmeApp); return err },
	} {
		if err := f(); !errors.Is(err, ErrDestroyed) {
			t.Errorf("%s after destroy: %v, want ErrDestroyed", name, err)
		}
	}
	checkAll(t, otherStore, globex, 1)

	// The wrapped keyset's message is gone from the bucket's stream (that it is overwritten
	// on disk is TestWrappedKeysetsAreErasedOnDisk's part).
	stream, _ := st.kr.stream(ctx)
	if _, err := stream.GetMsg(ctx, keysetEntry.Revision()); !errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Fatalf("wrapped keyset still stored: %v", err)
	}
	st = st.restart()
	if _, err := st.kr.Unseal(ctx, acmeApp, "record", "d000", rawBefore.Value()); !errors.Is(err, ErrDestroyed) {
		t.Fatalf("after restart: %v", err)
	}
	status, _ := st.kr.Status(ctx)
	destroyed := 0
	for _, s := range status.Scopes {
		if !s.Destroyed.IsZero() {
			destroyed++
			if s.Master != "" {
				t.Errorf("destroyed scope %s still names a wrapped key", s.Scope)
			}
		}
	}
	if destroyed != 3 {
		t.Fatalf("%d scopes destroyed, want acme, acme/production, acme/production/billing: %+v", destroyed, status.Scopes)
	}
}

func TestLegacyStoreKeyIsConverted(t *testing.T) {
	dir := t.TempDir()
	// A data directory from before the keyring: plain jetstream.key.
	legacy := strings.Repeat("3c", 32)
	os.WriteFile(filepath.Join(dir, legacyStoreKeyFile), []byte(legacy+"\n"), 0o600)
	os.WriteFile(filepath.Join(dir, engine.TokenFile), []byte(strings.Repeat("4d", 32)+"\n"), 0o600)
	eng, err := engine.Open(ctx, engine.Options{DataDir: dir, Config: config.Default().Engine, StoreKey: redact.NewSecret(legacy)})
	if err != nil {
		t.Fatal(err)
	}
	plat, _ := eng.Account(ctx, engine.PlatformAccount)
	kv, _ := plat.KeyValue(ctx, jetstream.KeyValueConfig{Bucket: "old"})
	kv.Put(ctx, "k", []byte("kept"))
	eng.Close()

	for range 2 {
		st := open(t, dir, config.Keyring{})
		plat, _ := st.eng.Account(ctx, engine.PlatformAccount)
		kv, err := plat.JetStream().KeyValue(ctx, "old")
		if err != nil {
			t.Fatal(err)
		}
		if e, err := kv.Get(ctx, "k"); err != nil || string(e.Value()) != "kept" {
			t.Fatalf("legacy data: %v", err)
		}
		st.close()
	}
	if _, err := os.Stat(filepath.Join(dir, legacyStoreKeyFile)); !os.IsNotExist(err) {
		t.Fatal("legacy plain key file kept")
	}
}

// One job walks every sealed store, each with its own cursor: store names that sort around
// the separator of a combined cursor ("recs" and "recs-b") are both done.
func TestReencryptionCoversEveryStore(t *testing.T) {
	st := open(t, t.TempDir(), config.Keyring{})
	a, _ := st.kr.Sealed(ctx, "recs", "rec-a")
	b, _ := st.kr.Sealed(ctx, "recs-b", "rec-b")
	for i := range 5 {
		id := fmt.Sprintf("r%d", i)
		a.Put(ctx, acmeApp, id, []byte("value-"+id))
		b.Put(ctx, acmeApp, id, []byte("value-"+id))
	}
	if _, err := st.kr.Sealed(ctx, "recs-c", "rec-a"); err == nil {
		t.Fatal("a second store for the same kind was accepted")
	}
	if _, err := st.kr.Rotate(ctx, acmeApp); err != nil {
		t.Fatal(err)
	}
	waitJobs(t, st.kr)
	checkAll(t, a, acmeApp, 2)
	checkAll(t, b, acmeApp, 2)
}

// A destroy interrupted after the tombstone of the top scope (the first thing it writes) is
// complete after a restart: the scopes below are destroyed and their wrapped keys erased.
func TestInterruptedDestroyFinishesAtStart(t *testing.T) {
	st := open(t, t.TempDir(), config.Keyring{})
	ct, _ := st.kr.Seal(ctx, acmeApp, "secret", "x", []byte("v"))
	before, _ := st.kr.kv.Get(ctx, recordKey(acmeApp))
	if _, err := st.kr.tombstone(ctx, recordKey(acme)); err != nil {
		t.Fatal(err)
	}
	st = st.restart()
	if _, err := st.kr.Unseal(ctx, acmeApp, "secret", "x", ct); !errors.Is(err, ErrDestroyed) {
		t.Fatalf("child after interrupted destroy: %v", err)
	}
	e, err := st.kr.kv.Get(ctx, recordKey(acmeApp))
	if err != nil {
		t.Fatal(err)
	}
	var rec scopeRecord
	json.Unmarshal(e.Value(), &rec)
	if rec.Destroyed.IsZero() || len(rec.Keyset) != 0 {
		t.Fatalf("child record after restart: %+v", rec)
	}
	stream, _ := st.kr.stream(ctx)
	if _, err := stream.GetMsg(ctx, before.Revision()); !errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Fatalf("child's wrapped keyset still stored: %v", err)
	}
}

// TestKeyChangesReachEveryKeyring: two keyrings on one store (two nodes of a cluster share
// their buckets the same way), each with its own cache. A rotation made through one is used by
// the other at once, and a destruction through one stops the other from sealing or opening
// within a second.
func TestKeyChangesReachEveryKeyring(t *testing.T) {
	a := open(t, t.TempDir(), config.Keyring{})
	ctx := context.Background()
	b, err := New(ctx, Options{Master: a.master, Platform: mustPlatform(t, a.eng)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ct, err := a.kr.Seal(ctx, acmeApp, "secret", "one", []byte("v1"))
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := b.Unseal(ctx, acmeApp, "secret", "one", ct); err != nil || string(pt) != "v1" {
		t.Fatalf("b opens a's record: %q %v", pt, err) // b's cache now holds version 1
	}
	if _, err := a.kr.Rotate(ctx, acmeApp); err != nil {
		t.Fatal(err)
	}
	ct2, err := a.kr.Seal(ctx, acmeApp, "secret", "two", []byte("v2"))
	if err != nil {
		t.Fatal(err)
	}
	within := func(what string, ok func() bool) {
		t.Helper()
		start := time.Now()
		for !ok() {
			if time.Since(start) > time.Second {
				t.Fatalf("%s: not within a second", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	within("b opens a record sealed with the rotated key", func() bool {
		pt, err := b.Unseal(ctx, acmeApp, "secret", "two", ct2)
		return err == nil && string(pt) == "v2"
	})
	if err := a.kr.Destroy(ctx, acmeProd); err != nil {
		t.Fatal(err)
	}
	within("b refuses the destroyed scope", func() bool {
		_, err1 := b.Unseal(ctx, acmeApp, "secret", "one", ct)
		_, err2 := b.Seal(ctx, acmeApp, "secret", "three", []byte("v3"))
		return errors.Is(err1, ErrDestroyed) && errors.Is(err2, ErrDestroyed)
	})
}

func mustPlatform(t *testing.T, eng *engine.Engine) *engine.Account {
	t.Helper()
	plat, err := eng.Account(context.Background(), engine.PlatformAccount)
	if err != nil {
		t.Fatal(err)
	}
	return plat
}
