package config

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"time"

	"github.com/penstock/penstock/internal/redact"
)

// LogValue logs the configuration by its keys (api.limits.conn_rate), durations as text and
// secrets as [redacted].
func (c Config) LogValue() slog.Value {
	root := reflect.ValueOf(c)
	attrs := make([]slog.Attr, 0, len(leafPaths))
	for _, key := range Keys() {
		v := fieldByPath(root, strings.Split(key, ".")).Interface()
		if d, ok := v.(time.Duration); ok {
			v = d.String()
		}
		attrs = append(attrs, slog.Any(key, v))
	}
	return slog.GroupValue(attrs...)
}

var _ slog.LogValuer = Config{}

// Flat returns every key's value as text, secrets as [redacted] (a changed secret shows as a
// changed fingerprint instead, so a change of key is visible without the key).
func (c Config) Flat() map[string]string {
	root := reflect.ValueOf(c)
	out := make(map[string]string, len(leafPaths))
	for _, key := range Keys() {
		v := fieldByPath(root, strings.Split(key, ".")).Interface()
		switch x := v.(type) {
		case redact.Secret:
			if x.IsZero() {
				out[key] = ""
			} else {
				sum := sha256.Sum256([]byte("penstock config fingerprint\x00" + x.Reveal()))
				out[key] = "[redacted " + hex.EncodeToString(sum[:4]) + "]"
			}
		default:
			out[key] = fmt.Sprint(v)
		}
	}
	return out
}
