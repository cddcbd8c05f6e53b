package audit

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"io"
	"time"
)

// ExportHeader is the first line of an export: what verifying it on its own needs.
type ExportHeader struct {
	Format    string          `json:"format"` // penstock-audit-export-v1
	PublicKey []byte          `json:"public_key"`
	Tenant    string          `json:"tenant,omitempty"`
	Since     time.Time       `json:"since,omitzero"`
	Until     time.Time       `json:"until,omitzero"`
	Starts    map[string]Head `json:"starts"` // per chain, the index and hash before its first exported event
}

// Export writes the records of [since, until) (of one tenant's chain, if tenant is set) as
// NDJSON: a header line, then one record a line, checkpoints included, ending with a
// checkpoint that covers the range (the first one after it, or one written now).
func (l *Log) Export(ctx context.Context, w io.Writer, tenant string, since, until time.Time) error {
	if until.IsZero() || until.After(l.now()) {
		// Close the range with a checkpoint now, so its last events are covered by a signature.
		if err := l.Checkpoint(ctx); err != nil {
			return err
		}
	}
	hdr := ExportHeader{Format: "penstock-audit-export-v1", PublicKey: l.PublicKey(), Tenant: tenant, Since: since, Until: until, Starts: map[string]Head{}}
	var recs []Record
	in := func(t time.Time) bool {
		return (since.IsZero() || !t.Before(since)) && (until.IsZero() || t.Before(until))
	}
	// A tenant's export holds its own chain's checkpoints only: nothing of another tenant,
	// not even its name.
	mine := func(c *Checkpoint) bool {
		if tenant == "" {
			return true
		}
		_, ok := c.Heads[tenant]
		return ok && len(c.Heads) == 1
	}
	// Per chain, the last exported index no checkpoint in the export covers yet.
	need := map[string]uint64{}
	cover := func(c *Checkpoint) {
		for chain, h := range c.Heads {
			if n, ok := need[chain]; ok && h.Index >= n {
				delete(need, chain)
			}
		}
	}
	err := l.Records(ctx, 1, func(r Record) bool {
		if r.Checkpoint != nil && !mine(r.Checkpoint) {
			return true
		}
		if r.Checkpoint != nil && !until.IsZero() && !r.Checkpoint.Time.Before(until) {
			// After the range: the checkpoints that cover its chains' last events, each chain
			// having its own, until every chain is covered.
			covers := false
			for chain, h := range r.Checkpoint.Heads {
				if n, ok := need[chain]; ok && h.Index >= n {
					covers = true
				}
			}
			if covers {
				recs = append(recs, r)
				cover(r.Checkpoint)
			}
			return len(need) > 0
		}
		switch {
		case r.Event != nil:
			e := r.Event
			if (tenant != "" && e.Tenant != tenant) || !in(e.Time) {
				return true
			}
			if _, seen := hdr.Starts[e.Chain]; !seen {
				hdr.Starts[e.Chain] = Head{Index: e.Index - 1, Hash: e.Prev}
			}
			need[e.Chain] = e.Index
		case r.Checkpoint != nil:
			if !in(r.Checkpoint.Time) {
				return true
			}
			cover(r.Checkpoint)
		default:
			return true
		}
		recs = append(recs, r)
		return true
	})
	if err != nil {
		return err
	}
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	if err := enc.Encode(hdr); err != nil {
		return err
	}
	for _, r := range recs {
		if err := enc.Encode(r); err != nil {
			return err
		}
	}
	return bw.Flush()
}

// VerifyExportFile reads an export and verifies it on its own against pub, the log's public
// key obtained apart from the export (penstock audit key): the key in the export's header is
// only compared with it, never trusted.
func VerifyExportFile(r io.Reader, pub ed25519.PublicKey) (Report, error) {
	dec := json.NewDecoder(r)
	var hdr ExportHeader
	if err := dec.Decode(&hdr); err != nil || hdr.Format != "penstock-audit-export-v1" {
		return Report{}, fmt.Errorf("not a penstock audit export")
	}
	if len(hdr.PublicKey) != ed25519.PublicKeySize || !pub.Equal(ed25519.PublicKey(hdr.PublicKey)) {
		return Report{}, fmt.Errorf("the export names another signing key than the one given")
	}
	var recs []Record
	for {
		var rec Record
		err := dec.Decode(&rec)
		if err == io.EOF {
			break
		}
		if err != nil {
			return Report{}, fmt.Errorf("record %d: %w", len(recs)+1, err)
		}
		recs = append(recs, rec)
	}
	return VerifyExport(recs, pub, hdr.Starts), nil
}
