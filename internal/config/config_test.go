package config_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/penstock/penstock/internal/config"
)

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "penstock.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func fieldErrors(t *testing.T, err error) map[string]string {
	t.Helper()
	var fe config.FieldErrors
	if !errors.As(err, &fe) {
		t.Fatalf("error %v (%T) is not FieldErrors", err, err)
	}
	out := map[string]string{}
	for _, e := range fe {
		out[e.Path] = e.Msg
	}
	return out
}

func TestDefaultsAreValid(t *testing.T) {
	cfg, err := config.Load(config.Sources{})
	if err != nil {
		t.Fatalf("defaults: %v", err)
	}
	if cfg.API.Listen != "127.0.0.1:8443" || cfg.DataDir != "./penstock-data" || cfg.Engine.SyncInterval != "always" || cfg.Metrics.Listen != "" {
		t.Fatalf("unexpected defaults: %+v", cfg)
	}
	if !cfg.Engine.Embedded() {
		t.Fatal("default engine is not embedded")
	}
}

func TestFileEnvFlagPrecedence(t *testing.T) {
	file := writeFile(t, `
data_dir: /from/file
api:
  listen: 127.0.0.1:1111
  limits:
    read_timeout: 7s
    conn_rate: 2.5
  tls:
    sans: [penstock.example.com, 10.0.0.5]
metrics:
  listen: 127.0.0.1:9100
`)
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	fs.String("listen", "", "")
	fs.String("data-dir", "", "")
	if err := fs.Parse([]string{"--listen", "127.0.0.1:3333"}); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(config.Sources{
		File: file,
		Environ: []string{
			"PENSTOCK_API_LISTEN=127.0.0.1:2222",
			"PENSTOCK_DATA_DIR=/from/env",
			"PENSTOCK_API_TLS_SANS=a.example,b.example",
			"PENSTOCK_ENGINE_NATS_URL=nats://127.0.0.1:4222",
			"PENSTOCK_ENGINE_NATS_USER=svc",
			"PENSTOCK_ENGINE_NATS_PASSWORD=s3cret-from-env",
			"PATH=/usr/bin",
		},
		Flags:    fs,
		FlagKeys: map[string]string{"listen": "api.listen", "data-dir": "data_dir"},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ name, got, want string }{
		{"flag beats env and file", cfg.API.Listen, "127.0.0.1:3333"},
		{"env beats file", cfg.DataDir, "/from/env"},
		{"file beats default", cfg.Metrics.Listen, "127.0.0.1:9100"},
		{"env list", strings.Join(cfg.API.TLS.SANs, ","), "a.example,b.example"},
		{"secret from env", cfg.Engine.NATSPassword.Reveal(), "s3cret-from-env"},
	} {
		if c.got != c.want {
			t.Errorf("%s: got %q, want %q", c.name, c.got, c.want)
		}
	}
	if cfg.API.Limits.ReadTimeout != 7*time.Second || cfg.API.Limits.ConnRate != 2.5 {
		t.Errorf("file values: read_timeout=%v conn_rate=%v", cfg.API.Limits.ReadTimeout, cfg.API.Limits.ConnRate)
	}
	if cfg.API.Limits.WriteTimeout != config.Default().API.Limits.WriteTimeout {
		t.Errorf("unset key lost its default: %v", cfg.API.Limits.WriteTimeout)
	}
}

func TestErrorsNameFieldPaths(t *testing.T) {
	cases := []struct {
		name    string
		file    string
		environ []string
		want    map[string]string // path -> part of the message
	}{
		{
			name: "unknown keys at every depth",
			file: "lisen: x\napi:\n  limts: {}\n  limits:\n    conn_rte: 3\n",
			want: map[string]string{"lisen": "unknown key", "api.limts": "unknown key", "api.limits.conn_rte": "unknown key"},
		},
		{
			name: "wrong types",
			file: "api:\n  limits:\n    read_timeout: soon\n    max_conns: many\n    conn_rate: [1]\n",
			want: map[string]string{
				"api.limits.read_timeout": "expected a duration",
				"api.limits.max_conns":    "expected an integer",
				"api.limits.conn_rate":    "expected a number",
			},
		},
		{
			name: "no silent coercion of YAML values",
			file: "api:\n  limits:\n    max_conns: true\n    conn_burst: 2.9\n    conn_rate: '2.5'\n    read_timeout: 30\n  listen: 8443\n  tls:\n    sans: [a, 1]\n",
			want: map[string]string{
				"api.limits.max_conns":    "expected an integer, got a boolean",
				"api.limits.conn_burst":   "expected an integer, got a fractional number",
				"api.limits.read_timeout": "expected a duration",
				"api.listen":              "expected a string, got a number",
				"api.tls.sans":            "expected a list of strings",
			},
		},
		{
			name: "a section given a scalar",
			file: "api: 5\n",
			want: map[string]string{"api": "expected a mapping"},
		},
		{
			name: "invalid values",
			file: `
log: {level: loud}
api:
  listen: nohost
  tls: {cert_file: /x.pem}
  limits: {conn_rate: 0, max_conns_per_ip: 10, max_conns: 5, idle_timeout: -1s}
engine: {sync_interval: sometimes, replicas: 9}
`,
			want: map[string]string{
				"log.level":                   "must be one of",
				"api.listen":                  "host:port",
				"api.tls":                     "set together",
				"api.limits.conn_rate":        "must be positive",
				"api.limits.max_conns_per_ip": "must not exceed",
				"api.limits.idle_timeout":     "positive duration",
				"engine.sync_interval":        `"always" or a positive duration`,
				"engine.replicas":             "between 1 and 5",
			},
		},
		{
			name: "audit anchor inside the data directory, no SIEM to send to, a delay too short",
			file: "data_dir: /srv/penstock\naudit:\n  checkpoint_delay: 1ms\n  anchor: {file: /srv/penstock/../penstock/audit/anchor.json, siem: true}\n",
			want: map[string]string{
				"audit.checkpoint_delay": "between 100ms and 10m",
				"audit.anchor.file":      "must be outside data_dir",
				"audit.anchor.siem":      "requires audit.webhook_url or audit.syslog_addr",
			},
		},
		{
			name: "metrics on the API listener",
			file: "metrics: {listen: 127.0.0.1:8443}\n",
			want: map[string]string{"metrics.listen": "must differ from api.listen"},
		},
		{
			name: "profiles without the metrics listener",
			file: "metrics: {pprof: true}\n",
			want: map[string]string{"metrics.pprof": "needs metrics.listen"},
		},
		{
			name: "external engine options",
			file: "engine:\n  nats_url: http://user:pw@host\n  nats_user: svc\n  client_listen: 127.0.0.1:4223\n",
			want: map[string]string{
				"engine.nats_url":      "scheme must be nats or tls",
				"engine.nats_password": "required with engine.nats_user",
				"engine.client_listen": "only applies to the embedded engine",
			},
		},
		{
			name: "external-only options with the embedded engine",
			file: "engine:\n  nats_creds_file: /x.creds\n",
			want: map[string]string{"engine.nats_creds_file": "only applies with engine.nats_url"},
		},
		{
			name: "operator mode without its system user, and with a user of its own",
			file: "engine:\n  nats_url: nats://127.0.0.1:4222\n  nats_operator_key_file: /op.nk\n  nats_user: svc\n  nats_password: pw\n",
			want: map[string]string{"engine.nats_system_creds_file": "required with engine.nats_operator_key_file", "engine": "Penstock signs its own users"},
		},
		{
			name: "operator mode with the signing key as system creds",
			file: "engine:\n  nats_url: nats://127.0.0.1:4222\n  nats_operator_key_file: /op.nk\n  nats_system_creds_file: /op.nk\n",
			want: map[string]string{"engine.nats_system_creds_file": "not the operator signing key's file"},
		},
		{
			name: "operator mode with a user of its own",
			file: "engine:\n  nats_url: nats://127.0.0.1:4222\n  nats_operator_key_file: /op.nk\n  nats_system_creds_file: /sys.creds\n  nats_creds_file: /u.creds\n",
			want: map[string]string{"engine": "Penstock signs its own users"},
		},
		{
			name: "operator-mode options with the embedded engine, or alone",
			file: "engine:\n  nats_operator_key_file: /op.nk\n  nats_system_creds_file: /sys.creds\n",
			want: map[string]string{
				"engine.nats_operator_key_file": "only applies with engine.nats_url",
				"engine.nats_system_creds_file": "only applies with engine.nats_url",
			},
		},
		{
			name: "a password without a user",
			file: "engine:\n  nats_url: nats://127.0.0.1:4222\n  nats_password: pw\n",
			want: map[string]string{"engine.nats_password": "only applies with engine.nats_user"},
		},
		{
			name: "the embedded client port off loopback",
			file: "engine:\n  client_listen: 0.0.0.0:4222\n",
			want: map[string]string{"engine.client_listen": "must be a loopback address"},
		},
		{
			name:    "unknown and mistyped environment variables",
			environ: []string{"PENSTOCK_API_LISEN=x", "PENSTOCK_API_LIMITS_MAX_CONNS=lots", "PENSTOCK_CONFIG=/ignored/here"},
			want: map[string]string{
				"PENSTOCK_API_LISEN":   "unknown environment variable",
				"api.limits.max_conns": "expected an integer",
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			src := config.Sources{Environ: tc.environ}
			if tc.file != "" {
				src.File = writeFile(t, tc.file)
			}
			_, err := config.Load(src)
			got := fieldErrors(t, err)
			for path, part := range tc.want {
				msg, ok := got[path]
				if !ok {
					t.Errorf("no error for %s; got %v", path, got)
					continue
				}
				if !strings.Contains(msg, part) {
					t.Errorf("%s: %q does not contain %q", path, msg, part)
				}
			}
			if len(got) != len(tc.want) {
				t.Errorf("got %d errors %v, want %d", len(got), got, len(tc.want))
			}
		})
	}
}

func TestFileProblems(t *testing.T) {
	_, err := config.Load(config.Sources{File: filepath.Join(t.TempDir(), "missing.yaml")})
	if err == nil || !strings.Contains(err.Error(), "missing.yaml: file does not exist") {
		t.Fatalf("missing file: %v", err)
	}
	_, err = config.Load(config.Sources{File: writeFile(t, "api: [unclosed\n")})
	if err == nil || !strings.Contains(err.Error(), "penstock.yaml") {
		t.Fatalf("bad YAML: %v", err)
	}
}

// A value that fails to decode is described, never echoed: it may be a secret.
func TestErrorsDoNotEchoValues(t *testing.T) {
	_, err := config.Load(config.Sources{
		File:    writeFile(t, "engine:\n  nats_password: {nested: hunter2-in-file}\n  nats_token: [hunter2-list]\napi:\n  limits:\n    max_conns: hunter2-typo\n"),
		Environ: []string{"PENSTOCK_ENGINE_REPLICAS=hunter2-env"},
	})
	if err == nil {
		t.Fatal("want errors")
	}
	if strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("error echoes a value: %v", err)
	}
	got := fieldErrors(t, err)
	for _, p := range []string{"engine.nats_password", "engine.nats_token", "api.limits.max_conns", "engine.replicas"} {
		if _, ok := got[p]; !ok {
			t.Errorf("no error for %s: %v", p, got)
		}
	}
}

// The YAML parser quotes the input it could not use; the error keeps the line, not the value.
func TestYAMLErrorsDoNotEchoValues(t *testing.T) {
	for _, body := range []string{
		"engine:\n  nats_password: !!int hunter2\n",
		"engine:\n  nats_token: \"hunter2\n",
		"api:\n  listen: [hunter2\n",
	} {
		_, err := config.Load(config.Sources{File: writeFile(t, body)})
		if err == nil {
			t.Fatalf("%q accepted", body)
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("YAML error echoes the value: %v", err)
		}
		if !strings.Contains(err.Error(), "not valid YAML") {
			t.Errorf("error does not say what is wrong: %v", err)
		}
	}
}

// docs/configuration.md documents exactly the keys the code reads, and each key's environment
// variable is recognised.
func TestDocumentedKeysMatchTheCode(t *testing.T) {
	doc, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	for _, line := range strings.Split(string(doc), "\n") {
		if !strings.HasPrefix(line, "| `") {
			continue
		}
		first := strings.Split(line, "|")[1]
		for _, part := range strings.Split(first, "`") {
			if part = strings.TrimSpace(part); part != "" && part != "," && !strings.Contains(part, " ") {
				documented[part] = true
			}
		}
	}
	for _, k := range config.Keys() {
		if !documented[k] {
			t.Errorf("key %s is not in docs/configuration.md", k)
		}
		delete(documented, k)
		if _, err := config.Load(config.Sources{Environ: []string{config.EnvName(k) + "=x"}}); err != nil &&
			strings.Contains(err.Error(), "unknown environment variable") {
			t.Errorf("%s is not recognised", config.EnvName(k))
		}
	}
	for k := range documented {
		t.Errorf("docs/configuration.md documents %s, which the code does not read", k)
	}
}

func TestDurationsTakeDays(t *testing.T) {
	for in, want := range map[string]time.Duration{"90d": 90 * 24 * time.Hour, "1d12h": 36 * time.Hour, "30s": 30 * time.Second, "0": 0} {
		got, err := config.ParseDuration(in)
		if err != nil || got != want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"d", "-1d", "1.5d", "1dx", "1d-2h", "99999999d"} {
		if d, err := config.ParseDuration(bad); err == nil {
			t.Errorf("ParseDuration(%q) = %v, want an error", bad, d)
		}
	}
	cfg, err := config.Load(config.Sources{Environ: []string{"PENSTOCK_RETENTION_INACTIVE_AFTER=30d", "PENSTOCK_RETENTION_EXEMPT=*/production"}})
	if err != nil || cfg.Retention.InactiveAfter != 30*24*time.Hour || len(cfg.Retention.Exempt) != 1 {
		t.Fatalf("retention from the environment: %+v %v", cfg.Retention, err)
	}
	if _, err := config.Load(config.Sources{Environ: []string{"PENSTOCK_RETENTION_EXEMPT=production"}}); err == nil || !strings.Contains(err.Error(), "retention.exempt[0]") {
		t.Fatalf("an exemption without a tenant: %v", err)
	}
}
