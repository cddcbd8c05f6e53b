// Package redact owns the Secret type, the one way Penstock keeps sensitive values out of logs,
// errors, API responses and printed configuration. It never stores or transmits a value itself.
package redact

import (
	"crypto/subtle"
	"fmt"
	"log/slog"
)

// Redacted is what every textual form of a Secret prints.
const Redacted = "[redacted]"

// Secret holds a sensitive string. Every way of turning it into text (fmt verbs, JSON, YAML,
// slog) prints [redacted]; Reveal is the only way to read the value, so each use is visible in
// review.
type Secret struct {
	v string
}

// NewSecret wraps v.
func NewSecret(v string) Secret { return Secret{v: v} }

// Reveal returns the plain value. Call it only where the value is handed to what needs it
// (a dialer, a cipher), never to build a message.
func (s Secret) Reveal() string { return s.v }

// IsZero reports whether the secret is empty.
func (s Secret) IsZero() bool { return s.v == "" }

// Equal compares in constant time.
func (s Secret) Equal(o Secret) bool {
	return subtle.ConstantTimeCompare([]byte(s.v), []byte(o.v)) == 1
}

func (s Secret) String() string   { return Redacted }
func (s Secret) GoString() string { return Redacted }

// Format covers every fmt verb, %x and %q included.
func (s Secret) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(Redacted)) }

// MarshalJSON never emits the value.
func (s Secret) MarshalJSON() ([]byte, error) { return []byte(`"` + Redacted + `"`), nil }

// MarshalText never emits the value (YAML and other text encoders use it).
func (s Secret) MarshalText() ([]byte, error) { return []byte(Redacted), nil }

// UnmarshalText lets configuration decoders fill a Secret from a string.
func (s *Secret) UnmarshalText(b []byte) error {
	s.v = string(b)
	return nil
}

// LogValue keeps the value out of slog output, wherever the Secret is nested.
func (s Secret) LogValue() slog.Value { return slog.StringValue(Redacted) }

var (
	_ fmt.Formatter  = Secret{}
	_ fmt.Stringer   = Secret{}
	_ slog.LogValuer = Secret{}
)
