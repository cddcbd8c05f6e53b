// Package audit owns the tamper-evident audit log: events appended to a JetStream stream that
// denies delete and purge, a SHA-256 hash chain per tenant and one for the platform, signed
// checkpoints of the chain heads, and verification that finds the first break. It never records
// a secret: callers hand it identifiers and outcomes, never credentials or payloads.
package audit

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"time"
)

// PlatformChain is the chain of events that belong to no tenant.
const PlatformChain = "platform"

// Results of an audited action.
const (
	ResultOK     = "ok"
	ResultDenied = "denied"
	ResultError  = "error"
)

// Event is one audit record. Seq is the stream sequence, known once stored; it is not hashed,
// so an event verifies the same wherever it is copied.
type Event struct {
	Seq         uint64            `json:"seq,omitempty"`
	Time        time.Time         `json:"time"`
	Chain       string            `json:"chain"`
	Index       uint64            `json:"index"` // position in its chain, from 1
	Actor       string            `json:"actor"` // user:<name>, apikey:<id>, system
	Tenant      string            `json:"tenant,omitempty"`
	Environment string            `json:"environment,omitempty"`
	Application string            `json:"application,omitempty"`
	Action      string            `json:"action"`
	Target      string            `json:"target,omitempty"`
	Result      string            `json:"result"`
	Code        string            `json:"code,omitempty"` // the error code of a denied or failed action
	Source      string            `json:"source,omitempty"`
	RequestID   string            `json:"request_id,omitempty"`
	Details     map[string]string `json:"details,omitempty"`
	Prev        string            `json:"prev"` // hex SHA-256 of the previous event of the chain
	Hash        string            `json:"hash"`
}

// computeHash is the hex SHA-256 of the event's JSON without Seq and Hash (encoding/json
// writes struct fields in order and map keys sorted, so the form is fixed).
func (e Event) computeHash() string {
	e.Seq, e.Hash = 0, ""
	b, _ := json.Marshal(e)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// Head is where a chain stood: its last index and that event's hash.
type Head struct {
	Index uint64 `json:"index"`
	Hash  string `json:"hash"`
}

// Checkpoint is a signed statement of every chain's head at a time. Verification requires
// each chain to reach at least its checkpointed head, with that exact hash: a log cut back
// behind a checkpoint is detected.
type Checkpoint struct {
	Seq       uint64          `json:"seq,omitempty"`
	Time      time.Time       `json:"time"`
	Heads     map[string]Head `json:"heads"`
	Signature []byte          `json:"signature,omitempty"` // Ed25519 over the JSON without Seq and Signature
}

func (c Checkpoint) signed() []byte {
	c.Seq, c.Signature = 0, nil
	b, _ := json.Marshal(c)
	return b
}

// Record is an entry of the stream: an event or a checkpoint. Malformed marks a stored entry
// that is neither as Penstock writes it (bad JSON, extra or duplicate fields, a chain that is
// not its subject's): verification reports it as modified.
type Record struct {
	Event      *Event      `json:"event,omitempty"`
	Checkpoint *Checkpoint `json:"checkpoint,omitempty"`
	Malformed  uint64      `json:"malformed,omitempty"` // the stream sequence of such an entry
}

func (e *Event) withSeq(seq uint64) Event {
	c := *e
	c.Seq = seq
	return c
}
