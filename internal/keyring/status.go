package keyring

import (
	"context"
	"encoding/json"
	"sort"
	"time"
)

// Status describes the keyring without any key material.
type Status struct {
	Master MasterStatus  `json:"master"`
	Scopes []ScopeStatus `json:"scopes"`
	Jobs   []Job         `json:"jobs"`
}

// MasterStatus names the master key by fingerprint and source.
type MasterStatus struct {
	ID       string `json:"id"`
	Source   string `json:"source"`
	Previous string `json:"previous,omitempty"` // a rotation in progress
}

// ScopeStatus is one scope's data key: how many versions, which is primary, and when.
type ScopeStatus struct {
	Scope     string    `json:"scope"`
	Versions  int       `json:"versions"`
	Primary   int       `json:"primary"`
	Master    string    `json:"master,omitempty"`
	Created   time.Time `json:"created"`
	Rotated   time.Time `json:"rotated,omitzero"`
	Destroyed time.Time `json:"destroyed,omitzero"`
}

// Status lists every scope, its key versions and times, and the re-encryption jobs.
func (k *Keyring) Status(ctx context.Context) (Status, error) {
	ms := k.masters
	ms.mu.RLock()
	st := Status{Master: MasterStatus{ID: ms.current.id, Source: ms.current.source}}
	if ms.previous != nil {
		st.Master.Previous = ms.previous.id
	}
	ms.mu.RUnlock()
	keys, err := k.scopeKeys(ctx)
	if err != nil {
		return st, err
	}
	for _, key := range keys {
		e, err := k.kv.Get(ctx, key)
		if err != nil {
			continue
		}
		var rec scopeRecord
		if json.Unmarshal(e.Value(), &rec) != nil {
			continue
		}
		s, err := scopeFromKey(key[len("scope."):])
		if err != nil {
			continue
		}
		st.Scopes = append(st.Scopes, ScopeStatus{
			Scope: s.String(), Versions: rec.Versions, Primary: rec.Primary, Master: rec.KEK,
			Created: rec.Created, Rotated: rec.Rotated, Destroyed: rec.Destroyed,
		})
	}
	sort.Slice(st.Scopes, func(a, b int) bool { return st.Scopes[a].Scope < st.Scopes[b].Scope })
	st.Jobs, err = k.Jobs(ctx)
	return st, err
}
