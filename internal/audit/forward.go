package audit

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/penstock/penstock/internal/redact"
)

// Sink delivers one event to a SIEM. Deliver returns only when the event is accepted; an
// error makes the forwarder retry it.
type Sink interface {
	Name() string
	Deliver(ctx context.Context, e Event) error
	Close() error
}

// CheckpointSink is a Sink that also takes checkpoints: with Options.ForwardCheckpoints, the
// receiver keeps the signed chain heads, an anchor out of reach of a rollback of the log.
type CheckpointSink interface {
	DeliverCheckpoint(ctx context.Context, c Checkpoint) error
}

var (
	_ CheckpointSink = (*Webhook)(nil)
	_ CheckpointSink = (*Syslog)(nil)
)

// Forward delivers every event of the log to sink, in order, at least once, from a durable
// consumer of the stream: an event is acknowledged only once the sink accepted it, so nothing
// is lost across restarts (an event may be delivered twice around one). It runs until ctx ends.
func (l *Log) Forward(ctx context.Context, sink Sink) error {
	cons, err := l.stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:        "siem-" + sink.Name(),
		Description:    "audit forwarding to " + sink.Name(),
		FilterSubjects: l.forwarded(sink),
		AckPolicy:      jetstream.AckExplicitPolicy,
		MaxAckPending:  1, // in order
		// A delivery left unacknowledged by a stop (fetched as the process ended) holds up
		// the next process's forwarding for this long; retries keep theirs alive.
		AckWait: 10 * time.Second,
	})
	if err != nil {
		return fmt.Errorf("audit forward %s: %w", sink.Name(), err)
	}
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		batch, err := cons.Fetch(1, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			l.log.Warn("audit forward: fetch", "sink", sink.Name(), "error", err)
			sleep(ctx, time.Second)
			continue
		}
		for msg := range batch.Messages() {
			var seq uint64
			if meta, err := msg.Metadata(); err == nil {
				seq = meta.Sequence.Stream
			}
			r := decodeRecord(seq, msg.Subject(), msg.Data())
			deliver := func() error { return sink.Deliver(ctx, r.Event.withSeq(seq)) }
			switch cs, ok := sink.(CheckpointSink); {
			case r.Checkpoint != nil && ok:
				deliver = func() error { return cs.DeliverCheckpoint(ctx, *r.Checkpoint) }
			case r.Event == nil:
				l.log.Error("audit forward: a stored record is not as written; skipped (audit verify reports it)", "sink", sink.Name(), "seq", seq)
				_ = msg.Term()
				continue
			}
			delivered := false
			for ctx.Err() == nil {
				if err := deliver(); err != nil {
					_ = msg.InProgress() // keep the event while retrying: no redelivery elsewhere
					l.log.Warn("audit forward: delivery failed; retrying", "sink", sink.Name(), "seq", seq, "error", err)
					if f := l.forwardFailed.Load(); f != nil {
						(*f)(sink.Name())
					}
					sleep(ctx, backoff)
					backoff = min(backoff*2, 30*time.Second)
					continue
				}
				backoff = 100 * time.Millisecond
				delivered = true
				if err := msg.Ack(); err != nil {
					l.log.Warn("audit forward: ack", "sink", sink.Name(), "error", err)
				}
				break
			}
			if !delivered {
				_ = msg.Nak() // stopping: the next process delivers it without waiting
			}
		}
	}
	return nil
}

// forwarded is what the sink's consumer reads: the events, and the checkpoints too when they
// are forwarded and the sink takes them.
func (l *Log) forwarded(sink Sink) []string {
	if _, ok := sink.(CheckpointSink); ok && l.forwardCheckpoints {
		return []string{chainSubject + ">", checkpointSubject + ".>"}
	}
	return []string{chainSubject + ">"}
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// Webhook posts each event as JSON to an HTTPS URL, signed with HMAC-SHA256 of the body in
// the header X-Penstock-Signature (hex); any 2xx answer accepts it.
type Webhook struct {
	URL    string
	Secret redact.Secret
	Client *http.Client
}

func (w *Webhook) Name() string { return "webhook" }
func (w *Webhook) Close() error { return nil }

func (w *Webhook) Deliver(ctx context.Context, e Event) error {
	body, _ := json.Marshal(e)
	return w.post(ctx, body)
}

// DeliverCheckpoint posts {"checkpoint": {...}}, as an export line holds it, signed the same
// way as events.
func (w *Webhook) DeliverCheckpoint(ctx context.Context, c Checkpoint) error {
	body, _ := json.Marshal(Record{Checkpoint: &c})
	return w.post(ctx, body)
}

func (w *Webhook) post(ctx context.Context, body []byte) error {
	m := hmac.New(sha256.New, []byte(w.Secret.Reveal()))
	m.Write(body)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.URL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Penstock-Signature", hex.EncodeToString(m.Sum(nil)))
	resp, err := w.Client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("webhook answered %d", resp.StatusCode)
	}
	return nil
}

// Syslog sends each event as an RFC 5424 message over TLS (RFC 5425 octet-counted framing),
// reconnecting as needed. Delivery is the write's success: syslog has no acknowledgement.
type Syslog struct {
	Addr string
	TLS  *tls.Config

	mu   sync.Mutex
	conn net.Conn
}

func (s *Syslog) Name() string { return "syslog" }

func (s *Syslog) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != nil {
		err := s.conn.Close()
		s.conn = nil
		return err
	}
	return nil
}

func (s *Syslog) Deliver(ctx context.Context, e Event) error { return s.send(ctx, FormatRFC5424(e)) }

// DeliverCheckpoint sends a checkpoint as a notice with MSGID audit.checkpoint and the
// record's JSON ({"checkpoint": {...}}) as the message.
func (s *Syslog) DeliverCheckpoint(ctx context.Context, c Checkpoint) error {
	body, _ := json.Marshal(Record{Checkpoint: &c})
	return s.send(ctx, formatRFC5424(5, c.Time, "audit.checkpoint", c.Seq, strings.Join(sortedKeys(c.Heads), ","), body))
}

func (s *Syslog) send(ctx context.Context, msg string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn == nil {
		d := &tls.Dialer{Config: s.TLS, NetDialer: &net.Dialer{Timeout: 10 * time.Second}}
		c, err := d.DialContext(ctx, "tcp", s.Addr)
		if err != nil {
			return err
		}
		s.conn = c
	}
	_ = s.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := s.conn.Write([]byte(strconv.Itoa(len(msg)) + " " + msg)); err != nil {
		s.conn.Close()
		s.conn = nil
		return err
	}
	return nil
}

// FormatRFC5424 renders an event: facility security/auth (10), severity notice (5), or
// warning (4) for denials and errors; the event's JSON is the message.
func FormatRFC5424(e Event) string {
	sev := 5
	if e.Result == ResultDenied || e.Result == ResultError {
		sev = 4
	}
	body, _ := json.Marshal(e)
	return formatRFC5424(sev, e.Time, e.Action, e.Seq, e.Chain, body)
}

func formatRFC5424(sev int, t time.Time, msgID string, seq uint64, chain string, body []byte) string {
	host, _ := os.Hostname()
	if host == "" {
		host = "-"
	}
	return fmt.Sprintf("<%d>1 %s %s penstock - %s [penstock@32473 seq=\"%d\" chain=\"%s\"] %s",
		10*8+sev, t.UTC().Format(time.RFC3339Nano), host, sdName(msgID), seq, chain, body)
}

// sdName keeps a MSGID within RFC 5424's 32 printable characters.
func sdName(s string) string {
	if s == "" {
		return "-"
	}
	if len(s) > 32 {
		s = s[:32]
	}
	return s
}
