package notify

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/penstock/penstock/internal/keyring"
)

// Buckets: each a sealed store in the platform account, records sealed with the tenant's data
// key (the platform's for platform channels, rules and alerts), so a tenant's deletion
// shreds them with the rest of its data.
const (
	channelsBucket = "penstock_notify_channels"
	rulesBucket    = "penstock_notify_rules"
	alertsBucket   = "penstock_notify_alerts"
)

// PlatformTenant is the scope of the platform's own channels, rules and alerts (a reserved
// tenant name).
const PlatformTenant = "platform"

// ErrNotFound means no such channel, rule or alert.
var ErrNotFound = errors.New("not found")

// ErrConflict means a concurrent change came first and retries ran out.
var ErrConflict = errors.New("changed concurrently")

func scopeOf(tenant string) keyring.Scope {
	if tenant == "" {
		tenant = PlatformTenant
	}
	return keyring.Scope{Tenant: tenant}
}

// getJSON opens a record into v, returning its revision.
func getJSON(ctx context.Context, s *keyring.Sealed, tenant, id string, v any) (uint64, error) {
	b, e, err := s.Get(ctx, scopeOf(tenant), id)
	if errors.Is(err, keyring.ErrNotFound) {
		return 0, ErrNotFound
	}
	if err != nil {
		return 0, err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return 0, fmt.Errorf("stored %s does not read: %w", id, err)
	}
	return e.Revision, nil
}

// putJSON stores v if the record is still at rev (0: if there is none).
func putJSON(ctx context.Context, s *keyring.Sealed, tenant, id string, v any, rev uint64) (uint64, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return 0, err
	}
	e, err := s.Update(ctx, scopeOf(tenant), id, b, rev)
	if errors.Is(err, keyring.ErrConflict) {
		return 0, ErrConflict
	}
	return e.Revision, err
}

// ids lists the record ids of a tenant, with prefix.
func ids(ctx context.Context, s *keyring.Sealed, tenant, prefix string) ([]string, error) {
	es, err := s.List(ctx, scopeOf(tenant))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range es {
		if strings.HasPrefix(e.ID, prefix) {
			out = append(out, e.ID)
		}
	}
	return out, nil
}

// Alert records: "a-<random>" for an alert, "s-<hash>" for the slot of an open alert of one
// rule on one resource, holding the alert's id. Creating the slot (compare and set) is what
// makes two nodes seeing the same burst open one alert.
func slotID(rule, resource string) string {
	h := sha256.Sum256([]byte(rule + "\x00" + resource))
	return "s-" + hex.EncodeToString(h[:16])
}

type slot struct {
	Alert string `json:"alert"`
}

// ValidAlertID says whether s could name an alert.
func ValidAlertID(s string) bool {
	if len(s) != 18 || !strings.HasPrefix(s, "a-") {
		return false
	}
	_, err := hex.DecodeString(s[2:])
	return err == nil
}
