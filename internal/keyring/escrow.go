package keyring

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// Escrow is how a backup keeps the keys its parts need, apart from the parts: one object per
// tenant (and one for the platform scope) holding that tenant's keyring records, each already
// wrapped by a master key, the whole sealed again by the current master key and bound to the
// tenant's name. Destroying a tenant's keys deletes its escrow (the backup package does that
// through OnDestroy), which makes its parts in every backup unreadable: crypto-shredding
// reaches the backups without rewriting them.
type escrowBody struct {
	Tenant  string            `json:"tenant"`
	Records map[string][]byte `json:"records"` // keyring key -> stored value
}

// masterSealed is what MasterSeal makes.
type masterSealed struct {
	Format int    `json:"format"` // 1
	KEK    string `json:"kek"`    // the master key that sealed Sealed
	Sealed []byte `json:"sealed"`
}

func masterSealAD(name string) []byte { return []byte("penstock/master-sealed/" + name) }

// MasterSeal seals b under the current master key, bound to name, for keeping outside the
// data directory (a backup's signing key and key escrow): only the master key opens it, in
// any data directory.
func (k *Keyring) MasterSeal(ctx context.Context, name string, b []byte) ([]byte, error) {
	m := k.masters.cur()
	ct, err := m.EncryptWithContext(ctx, b, masterSealAD(name))
	if err != nil {
		return nil, err
	}
	return json.Marshal(masterSealed{Format: 1, KEK: m.id, Sealed: ct})
}

// MasterOpen opens what MasterSeal sealed under name. Sealed by a master key that is not
// configured, for another name, or changed in any byte: ErrDecrypt or ErrMalformed.
func (k *Keyring) MasterOpen(ctx context.Context, name string, b []byte) ([]byte, error) {
	var f masterSealed
	if err := json.Unmarshal(b, &f); err != nil || f.Format != 1 {
		return nil, fmt.Errorf("%s: %w", name, ErrMalformed)
	}
	m, ok := k.masters.byID(f.KEK)
	if !ok {
		return nil, fmt.Errorf("%s is sealed by master key %s, which is not configured here (this one is %s): %w", name, f.KEK, k.masters.cur().id, ErrDecrypt)
	}
	pt, err := m.DecryptWithContext(ctx, f.Sealed, masterSealAD(name))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return pt, nil
}

func escrowName(tenant string) string { return "escrow/" + tenant }

// tenantRecordKeys lists the keyring keys of the tenant's scope and every scope under it.
func (k *Keyring) tenantRecordKeys(ctx context.Context, tenant string) ([]string, error) {
	keys, err := k.scopeKeys(ctx)
	if err != nil {
		return nil, err
	}
	prefix := recordKey(Scope{Tenant: tenant})
	var out []string
	for _, key := range keys {
		if key == prefix || strings.HasPrefix(key, prefix+".") {
			out = append(out, key)
		}
	}
	return out, nil
}

// ExportEscrow returns the tenant's keyring records (tenant "platform" is the platform scope)
// sealed by the current master key. A destroyed tenant has none to give: ErrDestroyed.
func (k *Keyring) ExportEscrow(ctx context.Context, tenant string) ([]byte, error) {
	s := Scope{Tenant: tenant}
	if err := s.Validate(); err != nil {
		return nil, err
	}
	if gone, err := k.IsDestroyed(ctx, s); err != nil {
		return nil, err
	} else if gone {
		return nil, ErrDestroyed
	}
	keys, err := k.tenantRecordKeys(ctx, tenant)
	if err != nil {
		return nil, err
	}
	body := escrowBody{Tenant: tenant, Records: map[string][]byte{}}
	for _, key := range keys {
		e, err := k.kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("keyring: escrow %s: %w", tenant, err)
		}
		body.Records[key] = e.Value()
	}
	pt, err := json.Marshal(body)
	if err != nil {
		return nil, err
	}
	return k.MasterSeal(ctx, escrowName(tenant), pt)
}

// ImportEscrow writes the tenant's records from an escrow into the keyring: the first step of
// restoring a backup into a new data directory. An escrow sealed for another tenant, by an
// unknown master key or changed in any byte is refused, and nothing is written.
func (k *Keyring) ImportEscrow(ctx context.Context, tenant string, b []byte) (int, error) {
	if err := (Scope{Tenant: tenant}).Validate(); err != nil {
		return 0, err
	}
	pt, err := k.MasterOpen(ctx, escrowName(tenant), b)
	if err != nil {
		return 0, fmt.Errorf("keyring: %w", err)
	}
	var body escrowBody
	if err := json.Unmarshal(pt, &body); err != nil || body.Tenant != tenant {
		return 0, fmt.Errorf("keyring: escrow of %s: %w", tenant, ErrMalformed)
	}
	prefix := recordKey(Scope{Tenant: tenant})
	for key := range body.Records {
		if key != prefix && !strings.HasPrefix(key, prefix+".") {
			return 0, fmt.Errorf("keyring: escrow of %s holds %q: %w", tenant, key, ErrMalformed)
		}
	}
	for key, v := range body.Records {
		if _, err := k.kv.Put(ctx, key, v); err != nil {
			return 0, fmt.Errorf("keyring: import %s: %w", key, err)
		}
	}
	k.forget()
	return len(body.Records), nil
}

// MarkDestroyed gives a scope a tombstone without needing its keys: a restore uses it for a
// tenant whose keys were destroyed after the backup, so that it stays shredded.
func (k *Keyring) MarkDestroyed(ctx context.Context, s Scope) error {
	if err := s.Validate(); err != nil {
		return err
	}
	if _, err := k.tombstone(ctx, recordKey(s)); err != nil {
		return err
	}
	k.forget()
	return nil
}

// OnDestroy registers f to run after each Destroy, with the destroyed scope.
func (k *Keyring) OnDestroy(f func(ctx context.Context, s Scope)) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.onDestroy = append(k.onDestroy, f)
}

// EnsureKey gives the scope a data key if it has none yet, so that an escrow taken now holds
// the key that what is sealed next will use.
func (k *Keyring) EnsureKey(ctx context.Context, s Scope) error {
	if err := s.Validate(); err != nil {
		return err
	}
	_, err := k.dataKeyFor(ctx, s, true)
	return err
}

// SameEscrow reports whether two escrows of the tenant hold the same records (each is sealed
// with its own nonce, so their bytes always differ). A nil one is never the same.
func (k *Keyring) SameEscrow(ctx context.Context, tenant string, a, b []byte) (bool, error) {
	if a == nil || b == nil {
		return false, nil
	}
	open := func(x []byte) (escrowBody, error) {
		var body escrowBody
		pt, err := k.MasterOpen(ctx, escrowName(tenant), x)
		if err != nil {
			return body, err
		}
		return body, json.Unmarshal(pt, &body)
	}
	ba, err := open(a)
	if err != nil {
		return false, err
	}
	bb, err := open(b)
	if err != nil {
		return false, err
	}
	if len(ba.Records) != len(bb.Records) {
		return false, nil
	}
	for key, v := range ba.Records {
		if w, ok := bb.Records[key]; !ok || string(w) != string(v) {
			return false, nil
		}
	}
	return true, nil
}

// OnMasterRotation registers f to run during a master key rotation, after every data key is
// rewrapped and before the old key is retired: what f reads with MasterOpen still opens, and
// what it seals with MasterSeal is sealed by the new key. An error stops the rotation, which
// a retry resumes.
func (k *Keyring) OnMasterRotation(f func(ctx context.Context) error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.onMasterRotation = append(k.onMasterRotation, f)
}
