package secrets_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/penstock/penstock/internal/keyring"
	"github.com/penstock/penstock/internal/keyring/keyringtest"
	"github.com/penstock/penstock/internal/redact"
	"github.com/penstock/penstock/internal/secrets"
)

func openStore(t *testing.T) (*secrets.Store, *keyring.Keyring) {
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
	return s, st.Keyring
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
