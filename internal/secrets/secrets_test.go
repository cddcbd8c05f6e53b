package secrets_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/penstock/penstock/internal/keyring"
	"github.com/penstock/penstock/internal/keyring/keyringtest"
	"github.com/penstock/penstock/internal/redact"
	"github.com/penstock/penstock/internal/secrets"
)

func openStore(t *testing.T) (*secrets.Store, *keyring.Keyring) {
	s, st := openStack(t)
	return s, st.Keyring
}

func openStack(t *testing.T) (*secrets.Store, *keyringtest.Stack) {
	t.Helper()
	st, err := keyringtest.Open(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	s, err := secrets.New(context.Background(), st.Keyring)
	if err != nil {
		t.Fatal(err)
	}
	return s, st
}

// revisions lists the application's secrets as name:revision.
func revisions(t *testing.T, s *secrets.Store, app keyring.Scope) string {
	t.Helper()
	list, err := s.List(context.Background(), app)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range list {
		out = append(out, fmt.Sprintf("%s:%d", m.Name, m.Revision))
	}
	return strings.Join(out, " ")
}

func TestSecrets(t *testing.T) {
	ctx := context.Background()
	s, kr := openStore(t)
	app := keyring.Scope{Tenant: "acme", Environment: "test", Application: "etl"}
	other := keyring.Scope{Tenant: "acme", Environment: "test", Application: "crm"}

	m1, err := s.Put(ctx, app, "db", redact.NewSecret("v1"))
	if err != nil || m1.Name != "db" || m1.KeyVersion != 1 {
		t.Fatalf("put: %+v %v", m1, err)
	}
	m2, err := s.Put(ctx, app, "db", redact.NewSecret("v2"))
	if err != nil || m2.Revision <= m1.Revision {
		t.Fatalf("second put: %+v %v", m2, err)
	}
	v, _, err := s.Get(ctx, app, "db")
	if err != nil || v.Reveal() != "v2" || v.String() != redact.Redacted {
		t.Fatalf("get: %v", err)
	}
	if _, _, err := s.Get(ctx, other, "db"); !errors.Is(err, keyring.ErrNotFound) {
		t.Fatalf("another application's secret: %v", err)
	}
	s.Put(ctx, app, "api", redact.NewSecret("k"))
	list, err := s.List(ctx, app)
	if err != nil || len(list) != 2 || list[0].Name != "api" || list[1].Name != "db" {
		t.Fatalf("list: %+v %v", list, err)
	}
	if err := s.Delete(ctx, app, "db"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Get(ctx, app, "db"); !errors.Is(err, keyring.ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
	if err := s.Delete(ctx, app, "db"); !errors.Is(err, keyring.ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}

	for name, f := range map[string]func() error{
		"tenant scope": func() error {
			_, err := s.Put(ctx, keyring.Scope{Tenant: "acme"}, "x", redact.NewSecret("v"))
			return err
		},
		"empty value": func() error { _, err := s.Put(ctx, app, "x", redact.Secret{}); return err },
		"huge value": func() error {
			_, err := s.Put(ctx, app, "x", redact.NewSecret(strings.Repeat("v", secrets.MaxValueBytes+1)))
			return err
		},
		"bad name": func() error { _, err := s.Put(ctx, app, "a.b", redact.NewSecret("v")); return err },
	} {
		if f() == nil {
			t.Errorf("%s accepted", name)
		}
	}

	if err := kr.Destroy(ctx, keyring.Scope{Tenant: "acme", Environment: "test"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.List(ctx, app); !errors.Is(err, keyring.ErrDestroyed) {
		t.Fatalf("list after destroy: %v", err)
	}
	if _, _, err := s.Get(ctx, app, "api"); !errors.Is(err, keyring.ErrDestroyed) {
		t.Fatalf("get after destroy: %v", err)
	}
}

// A secret's revision is its own: 1 when first stored, one more at each put of that name,
// whatever happens to the application's other secrets; deleted and stored again, it starts at 1.
func TestRevisionsArePerSecret(t *testing.T) {
	ctx := context.Background()
	s, _ := openStore(t)
	app := keyring.Scope{Tenant: "acme", Environment: "test", Application: "etl"}
	other := keyring.Scope{Tenant: "acme", Environment: "test", Application: "crm"}
	var got []string
	for _, name := range []string{"a", "b", "b", "c"} {
		if _, err := s.Put(ctx, other, name, redact.NewSecret("elsewhere")); err != nil {
			t.Fatal(err)
		}
		m, err := s.Put(ctx, app, name, redact.NewSecret("v-"+name))
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%s:%d", m.Name, m.Revision))
	}
	if strings.Join(got, " ") != "a:1 b:1 b:2 c:1" {
		t.Fatalf("put answers: %v", got)
	}
	if got := revisions(t, s, app); got != "a:1 b:2 c:1" {
		t.Fatalf("list: %s", got)
	}
	if _, m, err := s.Get(ctx, app, "b"); err != nil || m.Revision != 2 {
		t.Fatalf("get b: %+v %v", m, err)
	}
	if err := s.Delete(ctx, app, "b"); err != nil {
		t.Fatal(err)
	}
	if m, err := s.Put(ctx, app, "b", redact.NewSecret("again")); err != nil || m.Revision != 1 {
		t.Fatalf("b deleted and stored again: %+v %v", m, err)
	}
	if got := revisions(t, s, app); got != "a:1 b:1 c:1" {
		t.Fatalf("list after b was deleted and stored again: %s", got)
	}
}

// Concurrent puts of one name never share a revision, and the value left is the one put last.
func TestConcurrentPutsGetDistinctRevisions(t *testing.T) {
	ctx := context.Background()
	s, _ := openStore(t)
	app := keyring.Scope{Tenant: "acme", Environment: "test", Application: "etl"}
	const n = 8
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		revs = map[uint64]string{}
		errs []error
	)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v := fmt.Sprintf("value-%d", i)
			m, err := s.Put(ctx, app, "db", redact.NewSecret(v))
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			if prev, dup := revs[m.Revision]; dup {
				errs = append(errs, fmt.Errorf("revision %d given to %s and %s", m.Revision, prev, v))
			}
			revs[m.Revision] = v
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	for r := uint64(1); r <= n; r++ {
		if _, ok := revs[r]; !ok {
			t.Fatalf("revisions %v lack %d", slices.Sorted(maps.Keys(revs)), r)
		}
	}
	v, m, err := s.Get(ctx, app, "db")
	if err != nil || m.Revision != n || v.Reveal() != revs[n] {
		t.Fatalf("after the puts: revision %d, value of revision %d is the last? %v (%v)", m.Revision, n, v.Reveal() == revs[n], err)
	}
}

// Secrets stored before secrets had revisions of their own (the bare value, sealed) read and
// list as revision 1, and the next put makes them 2.
func TestSecretsFromBeforeRevisionsRead(t *testing.T) {
	ctx := context.Background()
	s, kr := openStore(t)
	app := keyring.Scope{Tenant: "acme", Environment: "test", Application: "etl"}
	old, err := kr.Sealed(ctx, secrets.Bucket, "secret")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := old.Put(ctx, app, "legacy", []byte("stored-long-ago")); err != nil {
		t.Fatal(err)
	}
	if v, m, err := s.Get(ctx, app, "legacy"); err != nil || v.Reveal() != "stored-long-ago" || m.Revision != 1 {
		t.Fatalf("get: %+v %v (value as stored: %v)", m, err, v.Reveal() == "stored-long-ago")
	}
	if got := revisions(t, s, app); got != "legacy:1" {
		t.Fatalf("list: %s", got)
	}
	if m, err := s.Put(ctx, app, "legacy", redact.NewSecret("new")); err != nil || m.Revision != 2 {
		t.Fatalf("put over it: %+v %v", m, err)
	}
	if v, m, err := s.Get(ctx, app, "legacy"); err != nil || v.Reveal() != "new" || m.Revision != 2 {
		t.Fatalf("get after the put: %+v %v", m, err)
	}
}

// Re-encrypting an application's secrets under a new key version keeps their revisions: a
// revision counts puts, not rewrites.
func TestReencryptionKeepsRevisions(t *testing.T) {
	ctx := context.Background()
	s, kr := openStore(t)
	app := keyring.Scope{Tenant: "acme", Environment: "test", Application: "etl"}
	for _, name := range []string{"a", "b", "b"} {
		if _, err := s.Put(ctx, app, name, redact.NewSecret("v")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := kr.Rotate(ctx, app); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; {
		jobs, err := kr.Jobs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(jobs) == 1 && !jobs[0].Finished.IsZero() {
			if jobs[0].Rewrap != 2 || jobs[0].Error != "" {
				t.Fatalf("job: %+v", jobs[0])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("re-encryption did not finish: %+v", jobs)
		}
		time.Sleep(20 * time.Millisecond)
	}
	list, err := s.List(ctx, app)
	if err != nil || len(list) != 2 || list[0].Revision != 1 || list[1].Revision != 2 || list[0].KeyVersion != 2 || list[1].KeyVersion != 2 {
		t.Fatalf("after re-encryption: %+v %v", list, err)
	}
}

// A stored secret that does not open is still listed (revision 0), and a put replaces it as a
// new secret.
func TestDamagedSecretIsListedAndReplaced(t *testing.T) {
	ctx := context.Background()
	s, st := openStack(t)
	app := keyring.Scope{Tenant: "acme", Environment: "test", Application: "etl"}
	for _, name := range []string{"good", "broken"} {
		if _, err := s.Put(ctx, app, name, redact.NewSecret("v")); err != nil {
			t.Fatal(err)
		}
	}
	kv, err := st.Platform.JetStream().KeyValue(ctx, secrets.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	damaged := 0
	for key := range keys.Keys() {
		if strings.HasSuffix(key, ".broken") {
			e, err := kv.Get(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			b := slices.Clone(e.Value())
			b[len(b)-1] ^= 0x5a
			if _, err := kv.Put(ctx, key, b); err != nil {
				t.Fatal(err)
			}
			damaged++
		}
	}
	if damaged != 1 {
		t.Fatalf("damaged %d records", damaged)
	}
	if _, _, err := s.Get(ctx, app, "broken"); !errors.Is(err, keyring.ErrDecrypt) {
		t.Fatalf("get of the damaged secret: %v", err)
	}
	if got := revisions(t, s, app); got != "broken:0 good:1" {
		t.Fatalf("list: %s", got)
	}
	if m, err := s.Put(ctx, app, "broken", redact.NewSecret("mended")); err != nil || m.Revision != 1 {
		t.Fatalf("put over the damaged secret: %+v %v", m, err)
	}
	if v, _, err := s.Get(ctx, app, "broken"); err != nil || v.Reveal() != "mended" {
		t.Fatalf("get after the put: %v", err)
	}
}
