package config

import (
	"fmt"
	"regexp"

	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/penstock/penstock/internal/authz"
	"github.com/penstock/penstock/internal/names"
	"github.com/penstock/penstock/internal/redact"
)

// FieldError is one problem with one configuration key.
type FieldError struct {
	Path string // key path (api.limits.conn_rate), environment variable or file name
	Msg  string
}

func (e FieldError) Error() string { return e.Path + ": " + e.Msg }

// FieldErrors is every problem found in one configuration, one per line.
type FieldErrors []FieldError

func (es FieldErrors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

func (es FieldErrors) sort() {
	sort.SliceStable(es, func(i, j int) bool { return es[i].Path < es[j].Path })
}

// Validate checks the values of an already-decoded configuration.
func (c Config) Validate() error {
	if errs := c.validate(); len(errs) > 0 {
		errs.sort()
		return errs
	}
	return nil
}

func (c Config) validate() FieldErrors {
	var v validator
	v.required("data_dir", c.DataDir)
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		v.add("log.level", "must be one of debug, info, warn, error")
	}
	v.hostPort("api.listen", c.API.Listen, true)
	v.positiveDuration("api.shutdown_timeout", c.API.ShutdownTimeout)
	if (c.API.TLS.CertFile == "") != (c.API.TLS.KeyFile == "") {
		v.add("api.tls", "cert_file and key_file must be set together")
	}
	for i, san := range c.API.TLS.SANs {
		if san == "" || strings.ContainsAny(san, " /:@") && net.ParseIP(san) == nil {
			v.add(fmt.Sprintf("api.tls.sans[%d]", i), "must be a DNS name or an IP address")
		}
	}
	l := c.API.Limits
	v.positive("api.limits.conn_rate", l.ConnRate)
	v.positive("api.limits.conn_burst", float64(l.ConnBurst))
	v.positive("api.limits.max_conns_per_ip", float64(l.MaxConnsPerIP))
	v.positive("api.limits.max_conns", float64(l.MaxConns))
	if l.MaxConns > 0 && l.MaxConnsPerIP > l.MaxConns {
		v.add("api.limits.max_conns_per_ip", "must not exceed api.limits.max_conns")
	}
	v.positive("api.limits.request_rate", l.RequestRate)
	v.positive("api.limits.request_burst", float64(l.RequestBurst))
	v.positive("api.limits.max_header_bytes", float64(l.MaxHeaderBytes))
	v.positive("api.limits.max_body_bytes", float64(l.MaxBodyBytes))
	v.positiveDuration("api.limits.read_header_timeout", l.ReadHeaderTimeout)
	v.positiveDuration("api.limits.read_timeout", l.ReadTimeout)
	v.positiveDuration("api.limits.write_timeout", l.WriteTimeout)
	v.positiveDuration("api.limits.idle_timeout", l.IdleTimeout)
	if c.Metrics.Listen != "" {
		v.hostPort("metrics.listen", c.Metrics.Listen, false)
		if c.Metrics.Listen == c.API.Listen && !strings.HasSuffix(c.API.Listen, ":0") {
			v.add("metrics.listen", "must differ from api.listen: metrics are never served on the API listener")
		}
	} else if c.Metrics.Pprof {
		v.add("metrics.pprof", "needs metrics.listen: profiles are served on the metrics listener")
	}
	c.Engine.validate(&v)
	c.validateCluster(&v)
	c.Fabric.validate(&v, c.Engine)
	if c.Pipelines.DrainTimeout <= 0 || c.Pipelines.DrainTimeout > time.Hour {
		v.add("pipelines.drain_timeout", "between 1ns and 1h")
	}
	c.Keyring.validate(&v)
	if c.Audit.Retention < 24*time.Hour {
		v.add("audit.retention", "must be at least 24h")
	}
	if a := c.Audit; a.WebhookURL != "" {
		if u, err := url.Parse(a.WebhookURL); err != nil || u.Scheme != "https" || u.Host == "" {
			v.add("audit.webhook_url", "must be an https:// URL")
		}
		if len(a.WebhookSecret.Reveal()) < 16 {
			v.add("audit.webhook_secret", "required with audit.webhook_url, at least 16 characters")
		}
	}
	if c.Audit.SyslogAddr != "" {
		v.hostPort("audit.syslog_addr", c.Audit.SyslogAddr, false)
	}
	c.Audit.validate(&v, c.DataDir)
	c.Backup.validate(&v)
	c.Notify.validate(&v)
	c.Retention.validate(&v)
	c.Directory.validate(&v)
	id := c.Identity
	v.positiveDuration("identity.session_idle", id.SessionIdle)
	v.positiveDuration("identity.session_max", id.SessionMax)
	if id.PasswordMinLength < 12 || id.PasswordMinLength > 128 {
		v.add("identity.password_min_length", "must be between 12 and 128")
	}
	if id.Argon2MemoryKiB < 19<<10 || id.Argon2MemoryKiB > 4<<20 {
		v.add("identity.argon2_memory_kib", "must be between 19456 (19 MiB, the OWASP minimum) and 4194304")
	}
	if id.Argon2Time < 1 || id.Argon2Time > 20 {
		v.add("identity.argon2_time", "must be between 1 and 20")
	}
	if id.Argon2Threads < 1 {
		v.add("identity.argon2_threads", "must be at least 1")
	}
	return v.errs
}

func (f Fabric) validate(v *validator, e Engine) {
	if f.CommitWindow < 0 || f.CommitWindow > time.Second {
		v.add("fabric.commit_window", "must be between 0 and 1s")
	}
	v.between("fabric.max_commit", f.MaxCommit, 1, 1000)
	v.between("fabric.commits_in_flight", f.CommitsInFlight, 1, 50)   // JetStream allows 50 batches in flight per stream
	v.between("fabric.max_publish_batch", f.MaxPublishBatch, 1, 1000) // one request is one atomic batch
	for path, addr := range map[string]string{"fabric.nats_listen": f.NATSListen, "fabric.mqtt_listen": f.MQTTListen, "fabric.websocket_listen": f.WebSocketListen} {
		if addr == "" {
			continue
		}
		v.hostPort(path, addr, false)
		if !e.Embedded() {
			v.add(path, "only applies to the embedded engine (engine.nats_url is set)")
		}
	}
	if f.NATSListen != "" && e.ClientListen != "" {
		v.add("fabric.nats_listen", "set either fabric.nats_listen (TLS, tenant API keys) or engine.client_listen, not both: the engine has one client port")
	}
	v.positiveDuration("fabric.max_age", f.MaxAge)
	v.between("fabric.max_deliveries", f.MaxDeliveries, 1, 1000)
	if f.AckWait < time.Second {
		v.add("fabric.ack_wait", "must be at least 1s")
	}
	if f.IdleClose != 0 && f.IdleClose < time.Minute {
		// Longer than the longest long-poll (30 s), with room for a consumer's next one.
		v.add("fabric.idle_close", "must be 0 (keep every tenant-environment open) or at least 1m")
	}
	v.positiveDuration("fabric.dead_letter_max_age", f.DeadLetterMaxAge)
	if f.DuplicateWindow < 0 || f.DuplicateWindow > f.MaxAge {
		v.add("fabric.duplicate_window", "must be between 0 and fabric.max_age")
	}
	v.between("fabric.max_connections", f.MaxConnections, 0, 1<<30)
	v.between("fabric.max_subscriptions", f.MaxSubscriptions, 0, 1<<30)
	v.between("fabric.max_payload", f.MaxPayload, 0, 64<<20)
	if f.MaxStorage < 0 {
		v.add("fabric.max_storage", "must not be negative")
	}
	if f.PublishRate < 0 {
		v.add("fabric.publish_rate", "must not be negative")
	}
	if f.PublishBytesRate < 0 {
		v.add("fabric.publish_bytes_rate", "must not be negative")
	}
}

func (e Engine) validate(v *validator) {
	if _, err := ParseSyncInterval(e.SyncInterval); err != nil {
		v.add("engine.sync_interval", err.Error())
	}
	if e.ClientListen != "" {
		v.hostPort("engine.client_listen", e.ClientListen, false)
		if !isLoopback(e.ClientListen) {
			v.add("engine.client_listen", "must be a loopback address (127.0.0.1, ::1 or localhost): the port has no TLS yet and accepts the platform credential")
		}
	}
	if e.MaxStore < 0 {
		v.add("engine.max_store", "must not be negative")
	}
	if e.MaxMemory < 0 {
		v.add("engine.max_memory", "must not be negative")
	}
	if e.Replicas < 0 || e.Replicas > 5 {
		v.add("engine.replicas", "must be between 1 and 5, or 0 for the cluster's size (at most 3)")
	}
	if e.Embedded() {
		for path, set := range map[string]bool{
			"engine.nats_creds_file":        e.NATSCredsFile != "",
			"engine.nats_user":              e.NATSUser != "",
			"engine.nats_password":          !e.NATSPassword.IsZero(),
			"engine.nats_token":             !e.NATSToken.IsZero(),
			"engine.nats_ca_file":           e.NATSCAFile != "",
			"engine.nats_cert_file":         e.NATSCertFile != "",
			"engine.nats_key_file":          e.NATSKeyFile != "",
			"engine.nats_operator_key_file": e.NATSOperatorKeyFile != "",
			"engine.nats_system_creds_file": e.NATSSystemCredsFile != "",
		} {
			if set {
				v.add(path, "only applies with engine.nats_url")
			}
		}
		return
	}
	for i, raw := range strings.Split(e.NATSURL, ",") {
		u, err := url.Parse(strings.TrimSpace(raw))
		path := "engine.nats_url"
		if strings.Contains(e.NATSURL, ",") {
			path = fmt.Sprintf("engine.nats_url[%d]", i)
		}
		switch {
		case err != nil || u.Host == "":
			v.add(path, "must be a URL such as nats://host:4222")
		case u.Scheme != "nats" && u.Scheme != "tls":
			v.add(path, "scheme must be nats or tls")
		case u.User != nil:
			v.add(path, "must not carry credentials: use engine.nats_user and engine.nats_password")
		}
	}
	if e.ClientListen != "" {
		v.add("engine.client_listen", "only applies to the embedded engine (engine.nats_url is set)")
	}
	auths := 0
	for _, set := range []bool{e.NATSCredsFile != "", e.NATSUser != "", !e.NATSToken.IsZero()} {
		if set {
			auths++
		}
	}
	if auths > 1 {
		v.add("engine", "set only one of nats_creds_file, nats_user, nats_token")
	}
	if e.NATSUser != "" && e.NATSPassword.IsZero() {
		v.add("engine.nats_password", "required with engine.nats_user")
	}
	if e.NATSUser == "" && !e.NATSPassword.IsZero() {
		v.add("engine.nats_password", "only applies with engine.nats_user")
	}
	if (e.NATSCertFile == "") != (e.NATSKeyFile == "") {
		v.add("engine.nats_cert_file", "nats_cert_file and nats_key_file must be set together")
	}
	switch {
	case e.NATSOperatorKeyFile != "" && e.NATSSystemCredsFile == "":
		v.add("engine.nats_system_creds_file", "required with engine.nats_operator_key_file: a system account user's .creds, to push account JWTs")
	case e.NATSOperatorKeyFile == "" && e.NATSSystemCredsFile != "":
		v.add("engine.nats_system_creds_file", "only applies with engine.nats_operator_key_file")
	case e.NATSOperatorKeyFile != "" && e.NATSOperatorKeyFile == e.NATSSystemCredsFile:
		v.add("engine.nats_system_creds_file", "must be a system account user's .creds, not the operator signing key's file")
	}
	if e.NATSOperatorKeyFile != "" && auths > 0 {
		v.add("engine", "with nats_operator_key_file Penstock signs its own users: leave out nats_creds_file, nats_user and nats_token")
	}
}

// ParseSyncInterval reads engine.sync_interval: "always" returns 0.
func ParseSyncInterval(s string) (time.Duration, error) {
	if s == "always" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("must be \"always\" or a positive duration such as 1s")
	}
	return d, nil
}

type validator struct{ errs FieldErrors }

func (v *validator) add(path, msg string) { v.errs = append(v.errs, FieldError{Path: path, Msg: msg}) }

func (v *validator) required(path, s string) {
	if strings.TrimSpace(s) == "" {
		v.add(path, "required")
	}
}

func (v *validator) positive(path string, f float64) {
	if f <= 0 {
		v.add(path, "must be positive")
	}
}

func (v *validator) between(path string, n, lo, hi int) {
	if n < lo || n > hi {
		v.add(path, fmt.Sprintf("must be between %d and %d", lo, hi))
	}
}

func (v *validator) positiveDuration(path string, d time.Duration) {
	if d <= 0 {
		v.add(path, "must be a positive duration")
	}
}

func (v *validator) hostPort(path, s string, required bool) {
	if s == "" {
		if required {
			v.add(path, "required")
		}
		return
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		v.add(path, "must be host:port")
		return
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		v.add(path, "port must be a number from 0 to 65535")
	}
	if host == "" {
		v.add(path, "host must be set (use 0.0.0.0 to listen on every interface)")
	}
}

var nodeName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)

func (c Config) validateCluster(v *validator) {
	if c.Node.Name != "" && !nodeName.MatchString(c.Node.Name) {
		v.add("node.name", "must be 1-63 of A-Z, a-z, 0-9, '.', '_' and '-', starting with a letter or digit")
	}
	for i, t := range c.Node.Tags {
		if t != "production" && t != "non-production" {
			v.add(fmt.Sprintf("node.tags[%d]", i), "must be production or non-production (the placement of environments' queues)")
		}
	}
	cl := c.Cluster
	if !cl.Enabled() {
		for path, set := range map[string]bool{"cluster.advertise": cl.Advertise != "", "cluster.peers": len(cl.Peers) > 0} {
			if set {
				v.add(path, "only applies with cluster.listen")
			}
		}
		if c.Engine.Replicas > 1 && c.Engine.Replicas <= 5 {
			v.add("engine.replicas", "must be 1 without a cluster (cluster.listen)")
		}
		return
	}
	if !nodeName.MatchString(cl.Name) {
		v.add("cluster.name", "must be 1-63 of A-Z, a-z, 0-9, '.', '_' and '-', starting with a letter or digit")
	}
	v.hostPort("cluster.listen", cl.Listen, true)
	v.hostPort("cluster.advertise", cl.Advertise, false)
	seen := map[string]bool{cl.Listen: true, cl.Advertise: true}
	for i, p := range cl.Peers {
		path := fmt.Sprintf("cluster.peers[%d]", i)
		v.hostPort(path, p, true)
		if seen[p] {
			v.add(path, "named twice, or this node's own cluster.listen or cluster.advertise: peers are the other nodes, each once (their number is the cluster's size)")
		}
		seen[p] = true
	}
	if !c.Engine.Embedded() {
		v.add("cluster.listen", "only applies to the embedded engine (engine.nats_url is set): an external NATS cluster is clustered by its own configuration")
	}
	if c.Engine.ClientListen != "" {
		v.add("engine.client_listen", "is not available in a cluster: its clients would bypass the cluster's credential")
	}
	if c.Keyring.MasterKey.IsZero() && c.Keyring.KMSURL.IsZero() {
		v.add("keyring.master_key", "a cluster needs the same master key on every node: set keyring.master_key (PENSTOCK_KEYRING_MASTER_KEY) or keyring.kms_url, not a key file of one data directory")
	}
	if !c.Keyring.PreviousMasterKey.IsZero() || !c.Keyring.PreviousKMSURL.IsZero() {
		v.add("keyring.previous_master_key", "a master key rotation is not available in a cluster yet: the first node restarted would rewrap every key under a master key the others do not have")
	}
	if c.Pipelines.FilesRoot == "" {
		v.add("pipelines.files_root", "set it to a directory every node shares (a pipeline runs on whichever node holds its lease): the default is inside this node's data directory")
	}
	if c.Backup.AutoRestore {
		v.add("backup.auto_restore", "is not available in a cluster: a node with an empty directory catches up from the others; restore a whole cluster onto one node, then join the others (docs/cluster.md)")
	}
	if c.Engine.Replicas > cl.Size() && c.Engine.Replicas <= 5 {
		v.add("engine.replicas", fmt.Sprintf("must not exceed the cluster's %d nodes (this one and cluster.peers)", cl.Size()))
	}
}

func isLoopback(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (k Keyring) validate(v *validator) {
	if !k.MasterKey.IsZero() && !k.KMSURL.IsZero() {
		v.add("keyring", "set master_key or kms_url, not both")
	}
	if !k.PreviousMasterKey.IsZero() && !k.PreviousKMSURL.IsZero() {
		v.add("keyring", "set previous_master_key or previous_kms_url, not both")
	}
	if k.MasterKey.IsZero() && k.KMSURL.IsZero() && (!k.PreviousMasterKey.IsZero() || !k.PreviousKMSURL.IsZero()) {
		v.add("keyring", "a previous key needs master_key or kms_url: the key file rotates with penstock keys rotate-master")
	}
	for path, s := range map[string]redact.Secret{"keyring.kms_url": k.KMSURL, "keyring.previous_kms_url": k.PreviousKMSURL} {
		if s.IsZero() {
			continue
		}
		if u, err := url.Parse(s.Reveal()); err != nil || u.Scheme == "" {
			v.add(path, "must be a URL such as awskms://, gcpkms://, azurekeyvault://, hashivault:// or base64key://")
		}
	}
}

func (a Audit) validate(v *validator, dataDir string) {
	if d := a.CheckpointDelay; d != 0 && (d < 100*time.Millisecond || d > 10*time.Minute) {
		v.add("audit.checkpoint_delay", "must be between 100ms and 10m")
	}
	if f := a.Anchor.File; f != "" {
		if inside, err := within(f, dataDir); err != nil || inside {
			v.add("audit.anchor.file", "must be outside data_dir: a copy inside it is rolled back with the data it should expose")
		}
		if strings.HasSuffix(f, "/") {
			v.add("audit.anchor.file", "must name a file, not a directory")
		}
	}
	if a.Anchor.SIEM && a.WebhookURL == "" && a.SyslogAddr == "" {
		v.add("audit.anchor.siem", "requires audit.webhook_url or audit.syslog_addr")
	}
}

// within tells whether path is dir or lies under it, comparing absolute clean paths.
func within(path, dir string) (bool, error) {
	p, err := filepath.Abs(path)
	if err != nil {
		return false, err
	}
	d, err := filepath.Abs(dir)
	if err != nil {
		return false, err
	}
	rel, err := filepath.Rel(d, p)
	if err != nil {
		return false, nil
	}
	return rel == "." || rel != ".." && !strings.HasPrefix(rel, "../"), nil
}

func (b Backup) validate(v *validator) {
	if b.Target != "" {
		u, err := url.Parse(b.Target)
		switch {
		case err != nil || (u.Scheme != "file" && u.Scheme != "s3"):
			v.add("backup.target", "must be a file:///absolute/dir or s3://bucket?region=... URL")
		case u.Scheme == "file" && (u.Host != "" || !strings.HasPrefix(u.Path, "/")):
			v.add("backup.target", "a file:// target needs an absolute directory: file:///var/backups/penstock")
		case u.Scheme == "s3" && u.Query().Get("region") == "":
			v.add("backup.target", "an s3:// target needs ?region=")
		}
	}
	if b.AccessKeyID.IsZero() != b.SecretAccessKey.IsZero() {
		v.add("backup.secret_access_key", "set both backup.access_key_id and backup.secret_access_key, or neither")
	}
	if b.Schedule < 0 || (b.Schedule != 0 && b.Schedule < time.Second) {
		v.add("backup.schedule", "0 (off) or at least 1s")
	}
	for _, k := range []struct {
		path string
		n    int
	}{{"backup.keep_daily", b.KeepDaily}, {"backup.keep_weekly", b.KeepWeekly}, {"backup.keep_monthly", b.KeepMonthly}} {
		if k.n < 0 || k.n > 1000 {
			v.add(k.path, "between 0 and 1000")
		}
	}
	if b.AutoRestore && b.Target == "" {
		v.add("backup.auto_restore", "needs backup.target")
	}
}

func (r Retention) validate(v *validator) {
	if r.InactiveAfter < 0 {
		v.add("retention.inactive_after", "must be 0 (delete nothing) or a positive duration such as 90d")
	}
	if r.CheckEvery < time.Second {
		v.add("retention.check_every", "at least 1s")
	}
	if r.Grace <= 0 {
		v.add("retention.grace", "must be a positive duration (24h by default): the least time between the last warning and the deletion")
	}
	for i, g := range r.Exempt {
		t, e, ok := strings.Cut(g, "/")
		_, err1 := path.Match(t, "")
		_, err2 := path.Match(e, "")
		if !ok || t == "" || e == "" || strings.Contains(e, "/") || err1 != nil || err2 != nil {
			v.add(fmt.Sprintf("retention.exempt[%d]", i), "a tenant/environment glob such as */production")
		}
	}
}

func (n Notify) validate(v *validator) {
	for _, d := range []struct {
		path     string
		val, min time.Duration
	}{{"notify.tick", n.Tick, 10 * time.Millisecond}, {"notify.retry_base", n.RetryBase, 10 * time.Millisecond},
		{"notify.retry_max", n.RetryMax, n.RetryBase}, {"notify.give_up_after", n.GiveUpAfter, time.Second},
		{"notify.keep_resolved", n.KeepResolved, time.Minute}} {
		if d.val < d.min {
			v.add(d.path, "at least "+d.min.String())
		}
	}
	if n.FailingAfter < 1 || n.FailingAfter > 1000 {
		v.add("notify.failing_after", "between 1 and 1000")
	}
	if n.PublicURL != "" {
		if u, err := url.Parse(n.PublicURL); err != nil || u.Scheme != "https" || u.Host == "" || u.RawQuery != "" {
			v.add("notify.public_url", "an https:// URL without a query, as people reach the API")
		}
	}
	for i, r := range n.PlatformEgress {
		if strings.TrimSpace(r) == "" { // the egress package parses each rule when notifications open
			v.add(fmt.Sprintf("notify.platform_egress[%d]", i), "empty")
		}
	}
}

func (d Directory) validate(v *validator) {
	for i, m := range d.Mappings {
		if _, _, _, err := ParseMapping(m); err != nil {
			v.add(fmt.Sprintf("directory.mappings[%d]", i), err.Error())
		}
	}
	for i, u := range d.BreakGlassUsers {
		if err := names.Check("user", u); err != nil {
			v.add(fmt.Sprintf("directory.break_glass_users[%d]", i), err.Error())
		}
	}
	if d.RecheckEvery < time.Second {
		v.add("directory.recheck_every", "at least 1s")
	}
	if d.RolesValidFor < d.RecheckEvery {
		v.add("directory.roles_valid_for", "at least directory.recheck_every (roles would lapse between two re-checks)")
	}
	d.OIDC.validate(v)
	l := d.LDAP
	if l.URL == "" {
		return
	}
	u, err := url.Parse(l.URL)
	switch {
	case err != nil || u.Host == "" || (u.Scheme != "ldap" && u.Scheme != "ldaps"):
		v.add("directory.ldap.url", "ldaps://host:636, or ldap://host:389 with directory.ldap.start_tls")
	case u.Scheme == "ldaps" && l.StartTLS:
		v.add("directory.ldap.start_tls", "not with ldaps:// (already TLS)")
	case u.Scheme == "ldap" && !l.StartTLS && !l.AllowPlaintext:
		v.add("directory.ldap.url", "plain ldap:// sends passwords in clear: use ldaps://, or set directory.ldap.start_tls")
	case u.Scheme == "ldap" && !l.StartTLS && !loopbackHost(u.Hostname()):
		v.add("directory.ldap.allow_plaintext", "plain LDAP is allowed only to a loopback server (localhost, 127.0.0.1, ::1)")
	}
	if l.BindDN == "" {
		v.add("directory.ldap.bind_dn", "required: the service account that searches users and groups")
	}
	if l.BindPassword.IsZero() {
		v.add("directory.ldap.bind_password", "required (set PENSTOCK_DIRECTORY_LDAP_BIND_PASSWORD)")
	}
	v.required("directory.ldap.user_base", l.UserBase)
	if !strings.Contains(l.UserFilter, "{user}") || !balancedFilter(l.UserFilter) {
		v.add("directory.ldap.user_filter", "an LDAP filter in parentheses with {user} where the login name goes, such as (uid={user})")
	}
	if l.MemberOfAttribute == "" {
		v.required("directory.ldap.group_base", l.GroupBase)
		if !strings.Contains(l.GroupFilter, "{dn}") || !balancedFilter(l.GroupFilter) {
			v.add("directory.ldap.group_filter", "an LDAP filter in parentheses with {dn} where a member's DN goes, such as (member={dn})")
		}
	}
	if l.MFAAttribute != "" {
		if a, val, ok := strings.Cut(l.MFAAttribute, "="); !ok || a == "" || val == "" {
			v.add("directory.ldap.mfa_attribute", "attribute=value, such as employeeType=mfa")
		}
	}
	if l.CAFile != "" {
		if _, err := os.Stat(l.CAFile); err != nil {
			v.add("directory.ldap.ca_file", "cannot be read: "+err.Error())
		}
	}
	if l.Timeout < 100*time.Millisecond {
		v.add("directory.ldap.timeout", "at least 100ms")
	}
	if l.PoolSize < 1 || l.PoolSize > 64 {
		v.add("directory.ldap.pool_size", "between 1 and 64")
	}
}

// ParseMapping reads a directory mapping "ROLE@SCOPE=GROUP".
func ParseMapping(s string) (group string, role authz.Role, scope authz.Scope, err error) {
	left, group, ok := strings.Cut(s, "=")
	r, sc, ok2 := strings.Cut(left, "@")
	if !ok || !ok2 || strings.TrimSpace(group) == "" {
		return "", "", authz.Scope{}, fmt.Errorf("ROLE@SCOPE=GROUP, such as platform-admin@platform=cn=ops,ou=groups,dc=example,dc=org")
	}
	role = authz.Role(strings.TrimSpace(r))
	if scope, err = authz.ParseScope(strings.TrimSpace(sc)); err != nil {
		return "", "", authz.Scope{}, err
	}
	if err := authz.CheckGrant(role, scope); err != nil {
		return "", "", authz.Scope{}, err
	}
	return strings.TrimSpace(group), role, scope, nil
}

func loopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// balancedFilter reports whether f is one parenthesized LDAP filter.
func balancedFilter(f string) bool {
	if !strings.HasPrefix(f, "(") || !strings.HasSuffix(f, ")") {
		return false
	}
	depth := 0
	for i, r := range f {
		switch r {
		case '(':
			depth++
		case ')':
			depth--
			if depth == 0 && i != len(f)-1 {
				return false
			}
		}
		if depth < 0 {
			return false
		}
	}
	return depth == 0
}

func (o OIDC) validate(v *validator) {
	if o.Issuer == "" {
		return
	}
	if u, err := url.Parse(o.Issuer); err != nil || u.Scheme != "https" || u.Host == "" {
		v.add("directory.oidc.issuer", "an https:// URL, the issuer of the OpenID provider")
	}
	v.required("directory.oidc.client_id", o.ClientID)
	if o.ClientSecret.IsZero() {
		v.add("directory.oidc.client_secret", "required (set PENSTOCK_DIRECTORY_OIDC_CLIENT_SECRET)")
	}
	if u, err := url.Parse(o.RedirectURL); err != nil || u.Scheme != "https" || u.Host == "" || u.Path != "/v1/auth/oidc/callback" {
		v.add("directory.oidc.redirect_url", "https://HOST:PORT/v1/auth/oidc/callback, Penstock's callback as the browser reaches it")
	}
	if !slices.Contains(o.Scopes, "openid") {
		v.add("directory.oidc.scopes", "must include openid")
	}
	v.required("directory.oidc.username_claim", o.UsernameClaim)
	v.required("directory.oidc.groups_claim", o.GroupsClaim)
	if o.CAFile != "" {
		if _, err := os.Stat(o.CAFile); err != nil {
			v.add("directory.oidc.ca_file", "cannot be read: "+err.Error())
		}
	}
	if o.Timeout < 100*time.Millisecond {
		v.add("directory.oidc.timeout", "at least 100ms")
	}
}
