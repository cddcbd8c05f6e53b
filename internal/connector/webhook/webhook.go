// Package webhook is the webhook source: a per-pipeline HTTPS endpoint whose requests, once
// their HMAC signature holds, are stored durably in the pipeline's ingest queue before the
// sender gets its 2xx; the source then reads that queue like any other. It verifies; it never
// stores or logs the signing key.
package webhook

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/penstock/penstock/internal/connector"
)

// Plugin is the webhook connector.
var Plugin = connector.Plugin{
	Name:   "webhook",
	Doc:    "HTTPS webhook in: HMAC-SHA256-signed JSON, queued durably before the 2xx",
	Source: newSource,
}

// Config is the webhook source's configuration.
type Config struct {
	// Secret is the HMAC-SHA256 key the sender signs the body with.
	Secret connector.SecretRef `json:"secret" required:"true"`
	// Header carries the signature, "sha256=<hex>" or "<hex>" (default X-Penstock-Signature).
	Header string `json:"header"`
}

// Decode reads a webhook source's settings.
func Decode(path string, cfg map[string]any) (Config, connector.Refs, error) {
	var c Config
	refs, err := connector.Decode(path, cfg, &c)
	if err != nil {
		return c, refs, err
	}
	if c.Secret.Name() == "" {
		return c, refs, fmt.Errorf("%s.secret: required, as ${secret:NAME}", path)
	}
	if c.Header == "" {
		c.Header = "X-Penstock-Signature"
	}
	if http.CanonicalHeaderKey(c.Header) == "Authorization" || strings.ContainsAny(c.Header, " :\r\n") {
		return c, refs, fmt.Errorf("%s.header: a header name other than Authorization", path)
	}
	return c, refs, nil
}

// Queue is the pipeline's ingest queue.
func Queue(pipeline string) string { return pipeline + "-in" }

// Verify checks a signature header value against body, in constant time.
func Verify(key, body []byte, signature string) bool {
	sig := strings.TrimPrefix(strings.TrimSpace(signature), "sha256=")
	got, err := hex.DecodeString(sig)
	if err != nil || len(got) != sha256.Size {
		return false
	}
	m := hmac.New(sha256.New, key)
	m.Write(body)
	return hmac.Equal(got, m.Sum(nil))
}

// Sign is what a sender puts in the header.
func Sign(key, body []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// Source reads the ingest queue. A body that is a JSON object is one record, a JSON array of
// objects is one record each; anything else is {"data": "<body>"}.
type Source struct {
	res connector.Resources
}

var _ connector.Source = (*Source)(nil)

func newSource(path string, cfg map[string]any, res connector.Resources) (connector.Source, connector.Refs, error) {
	_, refs, err := Decode(path, cfg)
	return &Source{res: res}, refs, err
}

// Connect checks the queues are there.
func (s *Source) Connect(context.Context) error {
	if s.res.Queues == nil || s.res.Pipeline == "" {
		return fmt.Errorf("webhook: no ingest queue")
	}
	return nil
}

// Read consumes queued requests.
func (s *Source) Read(ctx context.Context, max int) ([]connector.Record, connector.AckFunc, error) {
	data, settle, err := s.res.Queues.Consume(ctx, Queue(s.res.Pipeline), max)
	if err != nil {
		return nil, nil, err
	}
	if len(data) == 0 {
		return nil, nil, connector.ErrEndOfInput
	}
	var out []connector.Record
	for _, d := range data {
		out = append(out, Records(d)...)
	}
	return out, connector.AckFunc(settle), nil
}

// Records splits a request body into records.
func Records(body []byte) []connector.Record {
	var one connector.Record
	if json.Unmarshal(body, &one) == nil && one != nil {
		return []connector.Record{one}
	}
	var many []connector.Record
	if json.Unmarshal(body, &many) == nil && len(many) > 0 {
		ok := true
		for _, r := range many {
			ok = ok && r != nil
		}
		if ok {
			return many
		}
	}
	return []connector.Record{{"data": string(body)}}
}

// Close does nothing.
func (s *Source) Close(context.Context) error { return nil }
