package audit

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/nats-io/nats.go/jetstream"
)

// Reanchor sets every chain's anchor to the log's own last checkpoint of it. It is for a
// platform just restored from a backup, and nothing else: a backup cuts the anchors' bucket
// and the stream one after the other while checkpoints go on being written, so the restored
// anchors may be behind the restored stream (a checkpoint written between the two cuts) or
// ahead of it, and verify would report tampering that is not there. The backup's signed
// manifest and checked parts vouch for the pair; each checkpoint taken as an anchor is
// checked against the signing key here. An external anchor file (audit.anchor.file), which
// is ahead of a log rolled back by the restore, is replaced too, the file it held set aside
// beside it (its name returned) as the record of the log before the restore.
// It returns the chains anchored, sorted.
func (l *Log) Reanchor(ctx context.Context) (chains []string, aside string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	pub := l.PublicKey()
	perChain := map[string]*Checkpoint{} // a chain's last checkpoint on its own subject
	var legacy *Checkpoint               // the last checkpoint of several heads (older logs)
	lastOf := map[string]uint64{}        // per chain, the sequence of its last checkpoint
	err = l.Records(ctx, 1, func(r Record) bool {
		c := r.Checkpoint
		if c == nil || !ed25519.Verify(pub, c.signed(), c.Signature) {
			return true // verify reports it; it anchors nothing
		}
		for chain := range c.Heads {
			lastOf[chain] = c.Seq
			if len(c.Heads) == 1 {
				perChain[chain] = c
			} else {
				delete(perChain, chain)
				legacy = c
			}
		}
		return true
	})
	if err != nil {
		return nil, "", fmt.Errorf("%w: reanchor: %v", ErrUnavailable, err)
	}
	put := map[string]*Checkpoint{}
	for chain, c := range perChain {
		put[anchorKey+"."+chain] = c
	}
	if legacy != nil {
		put[anchorKey] = legacy
	}
	keys, err := l.state.ListKeysFiltered(ctx, anchorKey, anchorKey+".*")
	if err != nil {
		return nil, "", fmt.Errorf("%w: reanchor: %v", ErrUnavailable, err)
	}
	var stale []string
	for k := range keys.Keys() {
		if put[k] == nil {
			stale = append(stale, k)
		}
	}
	for _, k := range stale {
		if err := l.state.Purge(ctx, k); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil, "", fmt.Errorf("%w: reanchor: remove %s: %v", ErrUnavailable, k, err)
		}
	}
	for k, c := range put {
		b, _ := json.Marshal(c)
		if _, err := l.state.Put(ctx, k, b); err != nil {
			return nil, "", fmt.Errorf("%w: reanchor: %v", ErrUnavailable, err)
		}
	}
	if l.external != nil {
		if aside, err = l.external.Replace(perChain); err != nil {
			return nil, "", fmt.Errorf("%w: reanchor %s: %v", ErrUnavailable, l.external.Path, err)
		}
	}
	clear(l.checked)
	clear(l.refused)
	clear(l.heads)
	clear(l.counts)
	for chain := range lastOf {
		chains = append(chains, chain)
	}
	slices.Sort(chains)
	return chains, aside, nil
}
