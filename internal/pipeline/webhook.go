package pipeline

import (
	"context"
	"errors"
	"fmt"

	"github.com/penstock/penstock/internal/connector/webhook"
	"github.com/penstock/penstock/internal/keyring"
)

// Webhook errors the API maps to stable codes.
var (
	ErrNotWebhook   = errors.New("the pipeline's source is not a webhook")
	ErrBadSignature = errors.New("the signature does not match the body")
)

// Webhook accepts one request for a webhook pipeline: it checks the body's HMAC signature with
// the pipeline's secret and stores the body in the pipeline's ingest queue, returning only once
// it is durable. id, if set, makes a resend within the queue's duplicate window a no-op.
func (s *Service) Webhook(ctx context.Context, app keyring.Scope, name string, header func(string) string, body []byte, id string) error {
	_, p, err := s.load(ctx, app, name)
	if err != nil {
		return err
	}
	typ, cfg := connectorConfig(p.Spec.Source)
	if typ != webhook.Plugin.Name {
		return ErrNotWebhook
	}
	c, _, err := webhook.Decode("source", cfg)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	key, err := s.o.Secrets(ctx, app, c.Secret.Name())
	if err != nil {
		return fmt.Errorf("webhook secret: %w", err)
	}
	if !webhook.Verify([]byte(key.Reveal()), body, header(c.Header)) {
		return ErrBadSignature
	}
	var ids []string
	if id != "" {
		ids = []string{id}
	}
	return appQueues{s.o.Fabric, app}.Publish(ctx, webhook.Queue(name), [][]byte{body}, ids)
}
