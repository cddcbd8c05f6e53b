package config

import (
	"log/slog"
	"reflect"
	"strings"
	"time"
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
