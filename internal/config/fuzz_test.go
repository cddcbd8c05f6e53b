package config_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/penstock/penstock/internal/config"
)

// FuzzLoad feeds arbitrary files to Load: it must never panic, and every error it returns
// names a field path (or the file) with a message.
func FuzzLoad(f *testing.F) {
	for _, seed := range []string{
		"",
		"api:\n  listen: 127.0.0.1:8443\n",
		"api: 5\n",
		"api:\n  limits:\n    conn_rate: [1, 2]\n    read_timeout: {a: b}\n",
		"engine:\n  nats_password: {nested: x}\n  nats_url: 'nats://a:1,tls://b:2'\n",
		"data_dir: ~\nlog: {level: null}\n",
		"- a\n- b\n",
		"api:\n  tls:\n    sans: [a, '', 1.2.3.4, 'x y']\n",
		"&a [*a]",
	} {
		f.Add([]byte(seed))
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(dir, "fuzz.yaml")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := config.Load(config.Sources{File: p})
		if err == nil {
			if verr := cfg.Validate(); verr != nil {
				t.Fatalf("Load accepted a config Validate refuses: %v", verr)
			}
			return
		}
		var fe config.FieldErrors
		if !errors.As(err, &fe) || len(fe) == 0 {
			t.Fatalf("error is not a non-empty FieldErrors: %T %v", err, err)
		}
		for _, e := range fe {
			if e.Path == "" || e.Msg == "" {
				t.Fatalf("field error without path or message: %+v", e)
			}
		}
	})
}
