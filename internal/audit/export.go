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

// Export formats: v2 signs the export's extent in its header; v1 (older exports) did not.
const (
	exportFormat   = "penstock-audit-export-v2"
	exportFormatV1 = "penstock-audit-export-v1"
)

// ExportHeader is the first line of an export: what verifying it on its own needs, signed
// over its whole extent, so that an export cut at either end, or with a header field edited,
// does not verify.
type ExportHeader struct {
	Format    string    `json:"format"`
	PublicKey []byte    `json:"public_key"`
	Tenant    string    `json:"tenant,omitempty"`
	Since     time.Time `json:"since,omitzero"`
	Until     time.Time `json:"until,omitzero"`
	// Starts is, per chain, the index and hash before its first exported event.
	Starts map[string]Head `json:"starts"`
	// Chains is, per chain with events in the export, what the export holds of it.
	Chains map[string]Extent `json:"chains,omitempty"`
	// Records is the number of lines after the header: events and checkpoints.
	Records   int       `json:"records,omitempty"`
	Time      time.Time `json:"time,omitzero"` // when the export was made
	Signature []byte    `json:"signature,omitempty"`
}

// Extent is what an export holds of one chain: events First to Last (Events of them), the
// last one's hash being Head.
type Extent struct {
	First  uint64 `json:"first"`
	Last   uint64 `json:"last"`
	Head   string `json:"head"`
	Events int    `json:"events"`
}

// signed is what an export header's signature covers: a prefix no checkpoint begins with,
// then the header without its signature.
func (h ExportHeader) signed() []byte {
	h.Signature = nil
	b, _ := json.Marshal(h)
	return append([]byte("penstock audit export\x00"), b...)
}

// extents is what records hold of each chain, and how many records there are.
func extents(recs []Record) (map[string]Extent, int) {
	out := map[string]Extent{}
	for _, r := range recs {
		if e := r.Event; e != nil {
			x, ok := out[e.Chain]
			if !ok {
				x.First = e.Index
			}
			x.Last, x.Head = e.Index, e.Hash
			x.Events++
			out[e.Chain] = x
		}
	}
	return out, len(recs)
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
	hdr := ExportHeader{Format: exportFormat, PublicKey: l.PublicKey(), Tenant: tenant, Since: since, Until: until, Starts: map[string]Head{}}
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
	hdr.Chains, hdr.Records = extents(recs)
	hdr.Time = l.now().UTC()
	hdr.Signature = ed25519.Sign(l.key, hdr.signed())
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
// only compared with it, never trusted. The header's signature must hold and the records must
// be exactly the extent it signs. An export made before exports were signed (v1) verifies as
// it did, with Report.Unsealed set: where it starts and ends is not proven.
func VerifyExportFile(r io.Reader, pub ed25519.PublicKey) (Report, error) {
	dec := json.NewDecoder(r)
	var hdr ExportHeader
	if err := dec.Decode(&hdr); err != nil || hdr.Format != exportFormat && hdr.Format != exportFormatV1 {
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
	if hdr.Format == exportFormatV1 {
		rep := VerifyExport(recs, pub, hdr.Starts)
		rep.Unsealed = true
		return rep, nil
	}
	if !ed25519.Verify(pub, hdr.signed(), hdr.Signature) {
		return Report{Break: &Break{Kind: Forged, Detail: "the export's header is not as signed (an edited field, or no signature)"}}, nil
	}
	rep := VerifyExport(recs, pub, hdr.Starts)
	if !rep.OK {
		return rep, nil
	}
	got, n := extents(recs)
	if n != hdr.Records {
		return extentBreak(rep, "", "the export holds %d records after its header, it was signed with %d: it was cut or added to", n, hdr.Records), nil
	}
	for _, chain := range sortedKeys(hdr.Chains) {
		want, x := hdr.Chains[chain], got[chain]
		if x != want || hdr.Starts[chain].Index+1 != want.First {
			return extentBreak(rep, chain, "chain %s: the export holds events %d to %d (%d), it was signed with %d to %d (%d) after index %d",
				chain, x.First, x.Last, x.Events, want.First, want.Last, want.Events, hdr.Starts[chain].Index), nil
		}
	}
	if len(got) != len(hdr.Chains) {
		return extentBreak(rep, "", "the export holds %d chains, it was signed with %d", len(got), len(hdr.Chains)), nil
	}
	return rep, nil
}

func extentBreak(rep Report, chain, format string, args ...any) Report {
	rep.OK = false
	rep.Break = &Break{Kind: Truncated, Chain: chain, Detail: fmt.Sprintf(format, args...)}
	return rep
}
