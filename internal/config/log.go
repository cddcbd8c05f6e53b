package config

import (
	"fmt"
	"log/slog"
	"net/url"
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

// Flat returns every key's value as text, URLs without credentials, and secrets as
// "[redacted <fingerprint>]" where fingerprint (a keyed hash the caller supplies) shows a
// change of secret without the secret.
func (c Config) Flat(fingerprint func(string) string) map[string]string {
	root := reflect.ValueOf(c)
	out := make(map[string]string, len(leafPaths))
	for _, key := range Keys() {
		v := fieldByPath(root, strings.Split(key, ".")).Interface()
		switch x := v.(type) {
		case redact.Secret:
			if x.IsZero() {
				out[key] = ""
			} else {
				out[key] = "[redacted " + fingerprint(x.Reveal()) + "]"
			}
		default:
			out[key] = stripUserinfo(fmt.Sprint(v))
		}
	}
	return out
}

// stripUserinfo removes user:password@ from anything that looks like a URL.
func stripUserinfo(s string) string {
	parts := strings.Split(s, ",")
	for i, p := range parts {
		if u, err := url.Parse(strings.TrimSpace(p)); err == nil && u.User != nil && u.Host != "" {
			u.User = nil
			parts[i] = u.String()
		}
	}
	return strings.Join(parts, ",")
}
