package cli

import (
	"github.com/spf13/pflag"

	"github.com/penstock/penstock/internal/config"
)

// serverFlags are the configuration keys that also have a flag; flags override the
// environment, which overrides the file.
var serverFlags = []struct {
	name, key, usage string
}{
	{"data-dir", "data_dir", "data directory"},
	{"listen", "api.listen", "HTTPS API address (host:port)"},
	{"metrics-listen", "metrics.listen", "Prometheus /metrics address (host:port); empty means off"},
	{"log-level", "log.level", "debug, info, warn or error"},
	{"tls-cert", "api.tls.cert_file", "PEM certificate chain for the API (reloaded on SIGHUP)"},
	{"tls-key", "api.tls.key_file", "PEM private key for the API"},
	{"sync-interval", "engine.sync_interval", `embedded JetStream fsync: "always" or a duration`},
	{"nats-listen", "engine.client_listen", "open the embedded NATS client port on host:port"},
	{"node-name", "node.name", "this node's name in its cluster (default: the host name)"},
	{"cluster-listen", "cluster.listen", "route address for the other nodes of a cluster (host:port)"},
	{"cluster-peers", "cluster.peers", "the other nodes' route addresses, comma-separated"},
	{"nats-url", "engine.nats_url", "use an external NATS JetStream server instead of embedding one"},
	{"nats-creds", "engine.nats_creds_file", "credentials file for the external NATS server"},
	{"nats-user", "engine.nats_user", "user for the external NATS server (password: PENSTOCK_ENGINE_NATS_PASSWORD)"},
	{"nats-ca", "engine.nats_ca_file", "CA bundle to trust for the external NATS server"},
	{"nats-cert", "engine.nats_cert_file", "client certificate for the external NATS server"},
	{"nats-key", "engine.nats_key_file", "client key for the external NATS server"},
	{"nats-operator-key", "engine.nats_operator_key_file", "operator mode: the NATS operator signing key Penstock signs its accounts with"},
	{"nats-system-creds", "engine.nats_system_creds_file", "operator mode: a system account user's credentials, to push account JWTs"},
}

// configFlags adds --config and the server flags to fs.
func configFlags(fs *pflag.FlagSet) map[string]string {
	fs.StringP("config", "c", "", "YAML configuration file (or "+config.EnvConfigFile+")")
	keys := map[string]string{}
	for _, f := range serverFlags {
		fs.String(f.name, "", f.usage+" ["+f.key+"]")
		keys[f.name] = f.key
	}
	return keys
}

// loadConfig reads the configuration for a command with configFlags.
func loadConfig(fs *pflag.FlagSet, keys map[string]string, environ []string) (config.Config, error) {
	file, _ := fs.GetString("config")
	if file == "" {
		file = lookupEnv(environ, config.EnvConfigFile)
	}
	return config.Load(config.Sources{File: file, Environ: environ, Flags: fs, FlagKeys: keys})
}

func lookupEnv(environ []string, name string) string {
	for _, kv := range environ {
		if len(kv) > len(name) && kv[:len(name)] == name && kv[len(name)] == '=' {
			return kv[len(name)+1:]
		}
	}
	return ""
}
