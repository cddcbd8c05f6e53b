// Package config owns Penstock's typed configuration: its defaults, how the YAML file, the
// PENSTOCK_* environment and command-line flags are layered, and Validate with field paths.
// It never opens a listener or touches the data directory.
package config

import (
	"time"

	"github.com/penstock/penstock/internal/redact"
)

// Config is the whole configuration of one `penstock serve` process. The koanf tag is the key
// in the YAML file; the environment variable is PENSTOCK_ followed by the key path in upper
// case with dots and dashes turned into underscores (api.listen -> PENSTOCK_API_LISTEN).
type Config struct {
	// DataDir holds everything Penstock stores on this machine: the embedded JetStream store,
	// TLS material and key files. Created with 0700 permissions if missing.
	DataDir   string    `koanf:"data_dir"`
	Log       Log       `koanf:"log"`
	API       API       `koanf:"api"`
	Metrics   Metrics   `koanf:"metrics"`
	Engine    Engine    `koanf:"engine"`
	Node      Node      `koanf:"node"`
	Cluster   Cluster   `koanf:"cluster"`
	Keyring   Keyring   `koanf:"keyring"`
	Identity  Identity  `koanf:"identity"`
	Audit     Audit     `koanf:"audit"`
	Fabric    Fabric    `koanf:"fabric"`
	Pipelines Pipelines `koanf:"pipelines"`
	Backup    Backup    `koanf:"backup"`
	Notify    Notify    `koanf:"notify"`
	Retention Retention `koanf:"retention"`
	Directory Directory `koanf:"directory"`
}

// Directory configures users who log in through an LDAP directory and get their roles from
// its groups (docs/access.md). With directory.ldap.url empty, only local users log in.
type Directory struct {
	LDAP LDAP `koanf:"ldap"`
	OIDC OIDC `koanf:"oidc"`
	// Mappings give a directory group a role at a scope, each "ROLE@SCOPE=GROUP-DN" (e.g.
	// "platform-admin@platform=cn=ops,ou=groups,dc=example,dc=org"); more are added through
	// the API (penstock directory map). Set them in the file: a DN has commas, which split a
	// list given in the environment.
	Mappings []string `koanf:"mappings"`
	// RecheckEvery is how often every directory user's groups are read again: a user taken out
	// of a group loses its roles (sessions, API keys, native connections) within this time.
	RecheckEvery time.Duration `koanf:"recheck_every"`
	// RolesValidFor is how long roles read from the directory hold without a successful
	// re-check: while the directory cannot be reached, directory users keep their roles this
	// long, then have none (local break-glass users still log in).
	RolesValidFor time.Duration `koanf:"roles_valid_for"`
	// BreakGlassUsers are the local users who may still log in with their Penstock password
	// once a directory is configured (none by default); every such login is audited with a
	// warning.
	BreakGlassUsers []string `koanf:"break_glass_users"`
}

// OIDC is an OpenID Connect issuer users log in through (single sign-on): the browser by the
// authorization code flow with PKCE, the CLI by the device flow.
type OIDC struct {
	// Issuer is the issuer's URL (https), as in its discovery document.
	Issuer string `koanf:"issuer"`
	// ClientID and ClientSecret are Penstock's client at the issuer (a confidential client
	// allowed the authorization_code, refresh_token and device_code grants); set the secret
	// through PENSTOCK_DIRECTORY_OIDC_CLIENT_SECRET.
	ClientID     string        `koanf:"client_id"`
	ClientSecret redact.Secret `koanf:"client_secret"`
	// RedirectURL is Penstock's callback as the browser reaches it:
	// https://HOST:PORT/v1/auth/oidc/callback, registered at the issuer.
	RedirectURL string `koanf:"redirect_url"`
	// CAFile is the PEM CA of the issuer's certificate (the system's roots if empty).
	CAFile string `koanf:"ca_file"`
	// Scopes asked; offline_access gives the refresh token the re-check uses.
	Scopes []string `koanf:"scopes"`
	// UsernameClaim names the user (it must be one the issuer controls, not the user);
	// GroupsClaim lists the groups the mappings apply to.
	UsernameClaim string `koanf:"username_claim"`
	GroupsClaim   string `koanf:"groups_claim"`
	// TrustAMR takes an ID token whose amr holds mfa, otp or hwk as a second factor done (no
	// TOTP asked). Off by default.
	TrustAMR bool          `koanf:"trust_amr"`
	Timeout  time.Duration `koanf:"timeout"`
}

// LDAP is the directory server and how users and groups are found in it.
type LDAP struct {
	// URL is ldaps://host:636, or ldap://host:389 with StartTLS. Plain LDAP is refused unless
	// AllowPlaintext is set and the host is a loopback address.
	URL            string `koanf:"url"`
	StartTLS       bool   `koanf:"start_tls"`
	AllowPlaintext bool   `koanf:"allow_plaintext"`
	// CAFile is the PEM file of the CA that signed the server's certificate (the system's
	// roots if empty).
	CAFile string `koanf:"ca_file"`
	// BindDN and BindPassword are the service account that searches users and groups; set the
	// password through PENSTOCK_DIRECTORY_LDAP_BIND_PASSWORD.
	BindDN       string        `koanf:"bind_dn"`
	BindPassword redact.Secret `koanf:"bind_password"`
	// UserBase and UserFilter find a user: {user} in the filter is the login name, escaped.
	UserBase   string `koanf:"user_base"`
	UserFilter string `koanf:"user_filter"`
	// GroupBase and GroupFilter find a user's groups: {dn} is the user's (or, for nested
	// groups, a group's) DN, escaped. With MemberOfAttribute set (memberOf), groups are read
	// from that attribute of the user's entry instead.
	GroupBase         string `koanf:"group_base"`
	GroupFilter       string `koanf:"group_filter"`
	MemberOfAttribute string `koanf:"member_of_attribute"`
	// IDAttribute is the attribute that identifies an entry for good (entryUUID; objectGUID on
	// Active Directory): a new entry given a departed user's name is a new user.
	IDAttribute string `koanf:"id_attribute"`
	// NestedGroups follows groups that are members of groups (up to 10 levels).
	NestedGroups bool `koanf:"nested_groups"`
	// MFAAttribute, "attribute=value" (e.g. "employeeType=mfa"), says a user's second factor
	// is checked by the directory: such a user is not asked for Penstock's TOTP. Off (empty)
	// by default: directory admins enrol TOTP in Penstock.
	MFAAttribute string `koanf:"mfa_attribute"`
	// Timeout bounds connecting and each operation; PoolSize is how many connections are
	// kept (and the most used at once).
	Timeout  time.Duration `koanf:"timeout"`
	PoolSize int           `koanf:"pool_size"`
}

// Retention configures the deletion of unused environments (docs/retention.md). Per-tenant
// overrides and exemptions are set through the API (`penstock retention policy`).
type Retention struct {
	// InactiveAfter is how long an environment may go without use (a publish, a consume, an
	// API call by one of its tenant's principals, a native connection, a pipeline run) before
	// it is deleted with its keys; warnings go 30, 7 and 1 days before. 0 deletes nothing.
	InactiveAfter time.Duration `koanf:"inactive_after"`
	// Exempt lists environments never deleted for inactivity, as tenant/environment globs
	// ("*/production").
	Exempt []string `koanf:"exempt"`
	// CheckEvery is how often the retention run looks at every environment (warnings, then
	// deletions).
	CheckEvery time.Duration `koanf:"check_every"`
	// Grace is the least time between the last warning and the deletion.
	Grace time.Duration `koanf:"grace"`
}

// Notify configures how alerts are evaluated and delivered (docs/notifications.md). Channels
// and rules themselves are made through the API or `penstock notify`.
type Notify struct {
	// Tick is how often rules are evaluated and pending notices sent.
	Tick time.Duration `koanf:"tick"`
	// RetryBase is the wait after a channel's first failed attempt; each further failure
	// doubles it, up to RetryMax.
	RetryBase time.Duration `koanf:"retry_base"`
	RetryMax  time.Duration `koanf:"retry_max"`
	// GiveUpAfter is how long a notice is retried before it is abandoned (and audited).
	GiveUpAfter time.Duration `koanf:"give_up_after"`
	// FailingAfter is how many failed attempts in a row make a channel "failing": a platform
	// alert (event notify.channel_failing) is raised for it.
	FailingAfter int `koanf:"failing_after"`
	// KeepResolved is how long a resolved alert stays listed before it is deleted.
	KeepResolved time.Duration `koanf:"keep_resolved"`
	// PublicURL is the API's address as people reach it, for the links in notices
	// ("" leaves links out).
	PublicURL string `koanf:"public_url"`
	// PlatformEgress lists what platform channels may reach beyond the public internet
	// ("host[:port]", "CIDR[:port]"), as `penstock egress set` does for a tenant.
	PlatformEgress []string `koanf:"platform_egress"`
}

// Backup configures backups: where they go, how often they are taken and how many are kept,
// and whether a start restores the newest one by itself.
type Backup struct {
	// Target is file:///absolute/dir or s3://bucket[/prefix]?region=R[&endpoint=URL];
	// empty means no backups (backup commands answer that none is configured).
	Target string `koanf:"target"`
	// S3 credentials; without them the AWS SDK's own chain is used.
	AccessKeyID     redact.Secret `koanf:"access_key_id"`
	SecretAccessKey redact.Secret `koanf:"secret_access_key"`
	// Schedule is the time between scheduled full backups (24h = daily); 0 turns them off.
	Schedule time.Duration `koanf:"schedule"`
	// What pruning after each scheduled backup keeps: the newest backup of each of the last
	// KeepDaily days, KeepWeekly weeks and KeepMonthly months, and always the newest.
	KeepDaily   int `koanf:"keep_daily"`
	KeepWeekly  int `koanf:"keep_weekly"`
	KeepMonthly int `koanf:"keep_monthly"`
	// AutoRestore lets a start restore the newest full backup of Target when the data
	// directory is empty. Without it an empty directory starts a new platform.
	AutoRestore bool `koanf:"auto_restore"`
}

// Pipelines configures the pipeline runtime.
type Pipelines struct {
	// FilesRoot holds one directory per tenant (FilesRoot/<tenant>) that file connectors read
	// and write; "" means <data_dir>/files.
	FilesRoot string `koanf:"files_root"`
	// DrainTimeout bounds how long a stopping pipeline (shutdown, pause, update) waits for
	// the batch in flight to commit.
	DrainTimeout time.Duration `koanf:"drain_timeout"`
}

// Fabric configures queues and exchanges: the HTTPS publish path's group commit, the native
// protocol listeners, queue defaults and the limits every tenant-environment gets.
type Fabric struct {
	// CommitWindow is how long the HTTPS publish path gathers concurrent publishes into one
	// atomic batch (one fsync) after the first arrives; 0 sends what is queued at once.
	CommitWindow time.Duration `koanf:"commit_window"`
	// MaxCommit is the most messages in one atomic batch (JetStream allows 1000).
	MaxCommit int `koanf:"max_commit"`
	// CommitsInFlight is how many atomic batches one queue or exchange has being committed
	// at once; the next batch gathers while they are.
	CommitsInFlight int `koanf:"commits_in_flight"`
	// MaxPublishBatch is the most messages one publish request may carry.
	MaxPublishBatch int `koanf:"max_publish_batch"`
	// Native protocol listeners of the embedded engine, each with TLS; empty is off.
	NATSListen      string `koanf:"nats_listen"`
	MQTTListen      string `koanf:"mqtt_listen"`
	WebSocketListen string `koanf:"websocket_listen"`
	// Queue defaults, used where a queue's own settings leave a value unset.
	MaxAge          time.Duration `koanf:"max_age"`
	MaxDeliveries   int           `koanf:"max_deliveries"`
	AckWait         time.Duration `koanf:"ack_wait"`
	DuplicateWindow time.Duration `koanf:"duplicate_window"`
	// Limits every tenant-environment gets; 0 means no limit.
	MaxConnections   int     `koanf:"max_connections"`
	MaxSubscriptions int     `koanf:"max_subscriptions"`
	MaxPayload       int     `koanf:"max_payload"`
	MaxStorage       int64   `koanf:"max_storage"`
	PublishRate      float64 `koanf:"publish_rate"`
	PublishBytesRate float64 `koanf:"publish_bytes_rate"`
	// IdleClose is how long a tenant-environment may go unused on a node before the node
	// closes its own engine connection to it (taken up again on next use) and, on a single
	// node, deletes its queue consumers that hold nothing; 0 keeps every one open. Embedded
	// engine only.
	IdleClose time.Duration `koanf:"idle_close"`
	// DeadLetterMaxAge bounds how long a dead letter is kept, whatever its queue's max_age:
	// failed payloads do not stay forever.
	DeadLetterMaxAge time.Duration `koanf:"dead_letter_max_age"`
}

// Audit configures the audit log.
type Audit struct {
	// Retention is how long events are kept; older ones expire with the stream's age limit.
	Retention time.Duration `koanf:"retention"`
	// WebhookURL receives every event as a JSON POST signed with HMAC-SHA256 of the body
	// (hex, header X-Penstock-Signature) under WebhookSecret; empty means off.
	WebhookURL    string        `koanf:"webhook_url"`
	WebhookSecret redact.Secret `koanf:"webhook_secret"`
	// WebhookCAFile is the CA to trust for the webhook (the system's roots if empty).
	WebhookCAFile string `koanf:"webhook_ca_file"`
	// SyslogAddr receives every event as RFC 5424 over TLS (host:port); SyslogCAFile is the CA
	// to trust for it (the system's roots if empty).
	SyslogAddr   string `koanf:"syslog_addr"`
	SyslogCAFile string `koanf:"syslog_ca_file"`
	// CheckpointDelay bounds how long an event waits unsigned: every chain that moved is
	// checkpointed this long after the first event no checkpoint covers yet (0 means 3s).
	CheckpointDelay time.Duration `koanf:"checkpoint_delay"`
	Anchor          AuditAnchor   `koanf:"anchor"`
}

// AuditAnchor keeps the signed heads of the audit chains where a rollback of the data
// directory (the stream and its kept checkpoints together) does not reach.
type AuditAnchor struct {
	// File receives every chain's latest signed checkpoint after each checkpoint, replaced
	// atomically; audit verify fails if the log is behind it. It must be outside data_dir,
	// in a directory that exists. Empty means off.
	File string `koanf:"file"`
	// SIEM forwards every checkpoint to the configured webhook and syslog outputs, next to
	// the events, so the receiver holds the signed heads too.
	SIEM bool `koanf:"siem"`
}

// Identity configures logins and sessions.
type Identity struct {
	// MFAAllUsers requires a second factor of every user; otherwise of platform admins and
	// tenant owners only.
	MFAAllUsers bool `koanf:"mfa_all_users"`
	// SessionIdle ends a session unused for this long; SessionMax ends any session this old.
	SessionIdle time.Duration `koanf:"session_idle"`
	SessionMax  time.Duration `koanf:"session_max"`
	// PasswordMinLength is the shortest password accepted (upper, lower, digit and symbol are
	// always required, and common passwords refused).
	PasswordMinLength int `koanf:"password_min_length"`
	// Argon2 costs of password hashes; a change upgrades each hash at its owner's next login.
	Argon2MemoryKiB uint32 `koanf:"argon2_memory_kib"`
	Argon2Time      uint32 `koanf:"argon2_time"`
	Argon2Threads   uint8  `koanf:"argon2_threads"`
}

// Keyring selects the master key (key-encryption key) that wraps every data key. With nothing
// set, Penstock keeps it in data_dir/master.key (created on first start, 0600).
type Keyring struct {
	// MasterKey is a 256-bit key, 64 hex characters or base64; set it through
	// PENSTOCK_KEYRING_MASTER_KEY rather than the file.
	MasterKey redact.Secret `koanf:"master_key"`
	// KMSURL keeps the master key in a KMS: awskms://, gcpkms://, azurekeyvault://,
	// hashivault://, or base64key:// (a local key, for tests). It may hold credentials.
	KMSURL redact.Secret `koanf:"kms_url"`
	// PreviousMasterKey and PreviousKMSURL name the key being replaced during a rotation of a
	// master_key or kms_url: everything it wrapped is rewrapped at start, then it can go.
	PreviousMasterKey redact.Secret `koanf:"previous_master_key"`
	PreviousKMSURL    redact.Secret `koanf:"previous_kms_url"`
}

// Log configures the structured JSON log on standard error.
type Log struct {
	// Level is debug, info, warn or error.
	Level string `koanf:"level"`
}

// API configures the HTTPS API listener. There is no plain-HTTP API listener.
type API struct {
	// Listen is the host:port of the HTTPS API.
	Listen string `koanf:"listen"`
	TLS    TLS    `koanf:"tls"`
	Limits Limits `koanf:"limits"`
	// ShutdownTimeout bounds how long in-flight requests may drain on SIGTERM before their
	// connections are closed.
	ShutdownTimeout time.Duration `koanf:"shutdown_timeout"`
}

// TLS selects the API's certificate. With CertFile and KeyFile empty, Penstock issues its own
// certificate from an internal CA kept in the data directory.
type TLS struct {
	// CertFile and KeyFile are a PEM certificate chain and key supplied by the operator. They
	// are read again on SIGHUP, without a restart.
	CertFile string `koanf:"cert_file"`
	KeyFile  string `koanf:"key_file"`
	// SANs are extra DNS names or IP addresses for the internal certificate; localhost,
	// 127.0.0.1 and ::1 are always included.
	SANs []string `koanf:"sans"`
}

// Limits protect the API listener. Every limit must be positive: there is no "unlimited".
type Limits struct {
	// ConnRate is new connections per second accepted from one source IP; ConnBurst is how
	// many may arrive at once. Connections beyond it are closed before the TLS handshake.
	ConnRate  float64 `koanf:"conn_rate"`
	ConnBurst int     `koanf:"conn_burst"`
	// MaxConnsPerIP caps the connections one source IP holds open at the same time.
	MaxConnsPerIP int `koanf:"max_conns_per_ip"`
	// MaxConns caps all open connections on the listener.
	MaxConns int `koanf:"max_conns"`
	// RequestRate is requests per second from one source IP (RequestBurst at once); beyond
	// it the API answers 429 with the code rate_limited.
	RequestRate  float64 `koanf:"request_rate"`
	RequestBurst int     `koanf:"request_burst"`
	// MaxHeaderBytes and MaxBodyBytes bound a request's headers and body (413 beyond the body limit).
	MaxHeaderBytes int   `koanf:"max_header_bytes"`
	MaxBodyBytes   int64 `koanf:"max_body_bytes"`
	// Timeouts against slow clients (slowloris) and idle keep-alive connections.
	ReadHeaderTimeout time.Duration `koanf:"read_header_timeout"`
	ReadTimeout       time.Duration `koanf:"read_timeout"`
	WriteTimeout      time.Duration `koanf:"write_timeout"`
	IdleTimeout       time.Duration `koanf:"idle_timeout"`
}

// Metrics configures the Prometheus endpoint. It is never served on the API listener.
type Metrics struct {
	// Listen is the host:port serving /metrics over plain HTTP; empty means off.
	Listen string `koanf:"listen"`
	// Pprof also serves Go's runtime profiles (/debug/pprof/) on that listener, for measuring
	// what memory and CPU go to. Off by default; the listener has no authentication.
	Pprof bool `koanf:"pprof"`
}

// Engine selects the NATS JetStream engine: embedded in this process (the default, when
// NATSURL is empty) or an external server.
type Engine struct {
	// SyncInterval is how often the embedded JetStream fsyncs its files: "always" (every
	// acknowledged write is on disk before the acknowledgement) or a duration such as "1s",
	// which is faster but loses up to that much acknowledged data on a power cut or kill -9.
	SyncInterval string `koanf:"sync_interval"`
	// GroupSync (with sync_interval "always", on Linux) makes acknowledged writes durable with
	// one syncfs(2) of the data directory's filesystem for every group of concurrent writes,
	// instead of the engine's fsync of every write: still nothing is acknowledged before it is
	// on disk. false keeps the engine's fsync per write.
	GroupSync bool `koanf:"group_sync"`
	// ClientListen opens the embedded server's NATS client port on host:port; empty means no
	// network port (Penstock reaches its engine in-process).
	ClientListen string `koanf:"client_listen"`
	// MaxStore and MaxMemory cap the embedded JetStream's file and memory storage in bytes;
	// zero lets JetStream size them from the disk and the machine.
	MaxStore  int64 `koanf:"max_store"`
	MaxMemory int64 `koanf:"max_memory"`

	// NATSURL points Penstock at an external NATS JetStream server or cluster instead of
	// embedding one (nats:// or tls:// URLs, comma-separated).
	NATSURL string `koanf:"nats_url"`
	// Credentials for the external server: a .creds file, or a user and password, or a token.
	NATSCredsFile string        `koanf:"nats_creds_file"`
	NATSUser      string        `koanf:"nats_user"`
	NATSPassword  redact.Secret `koanf:"nats_password"`
	NATSToken     redact.Secret `koanf:"nats_token"`
	// TLS towards the external server: a CA bundle to trust and an optional client certificate.
	NATSCAFile   string `koanf:"nats_ca_file"`
	NATSCertFile string `koanf:"nats_cert_file"`
	NATSKeyFile  string `koanf:"nats_key_file"`
	// NATSOperatorKeyFile holds an operator signing key (an nkey seed, "SO...") of an external
	// NATS deployment in operator mode: Penstock then signs an account for the platform and for
	// every tenant-environment, pushes their JWTs to the servers' resolver and signs its own
	// users in them. The accounts' keys are derived from it, so it must stay the same for the
	// life of the deployment.
	NATSOperatorKeyFile string `koanf:"nats_operator_key_file"`
	// NATSSystemCredsFile is a .creds file of a user of the system account, through which the
	// account JWTs are pushed to (and looked up in) the resolver. Operator mode only.
	NATSSystemCredsFile string `koanf:"nats_system_creds_file"`
	// Replicas is the replication factor of the streams and buckets Penstock creates; 0 picks
	// it from the cluster's size: 1 alone, 2 with two nodes, 3 with three or more.
	Replicas int `koanf:"replicas"`
}

// Node names this process among the nodes of a cluster and says where it may hold data.
type Node struct {
	// Name is this node's name in the cluster, stable across restarts (the engine's Raft
	// peer is derived from it); "" means the host name.
	Name string `koanf:"name"`
	// Tags place data: an environment's placement (production or non-production) puts its
	// queues only on nodes with the matching tag.
	Tags []string `koanf:"tags"`
}

// Cluster joins the embedded engine to other Penstock nodes: one NATS cluster whose routes use
// mutual TLS with certificates of the platform CA and the cluster credential, both brought by
// `penstock cluster join`. Empty Listen means a single node.
type Cluster struct {
	// Name is the cluster's name; every node gives the same one.
	Name string `koanf:"name"`
	// Listen is host:port for routes from the other nodes.
	Listen string `koanf:"listen"`
	// Advertise is the host:port the other nodes reach this one at, when it differs from
	// Listen (0.0.0.0, NAT); it is also the name the node's route certificate carries.
	Advertise string `koanf:"advertise"`
	// Peers are the other nodes' route addresses (host:port).
	Peers []string `koanf:"peers"`
}

// Enabled reports whether this node is part of a cluster.
func (c Cluster) Enabled() bool { return c.Listen != "" }

// Size is the number of nodes the configuration names: this one and its peers.
func (c Cluster) Size() int {
	if !c.Enabled() {
		return 1
	}
	return 1 + len(c.Peers)
}

// ReplicasFor is the replication factor engine.replicas gives in a cluster of size nodes.
func (e Engine) ReplicasFor(size int) int {
	if e.Replicas > 0 {
		return e.Replicas
	}
	return min(size, 3)
}

// Embedded reports whether Penstock runs its own NATS server.
func (e Engine) Embedded() bool { return e.NATSURL == "" }

// Operator reports whether Penstock manages the accounts of an external NATS deployment in
// operator mode.
func (e Engine) Operator() bool { return !e.Embedded() && e.NATSOperatorKeyFile != "" }

// Default returns the configuration used where nothing is set.
func Default() Config {
	return Config{
		DataDir: "./penstock-data",
		Log:     Log{Level: "info"},
		API: API{
			Listen:          "127.0.0.1:8443",
			ShutdownTimeout: 15 * time.Second,
			Limits: Limits{
				ConnRate:          20,
				ConnBurst:         40,
				MaxConnsPerIP:     64,
				MaxConns:          4096,
				RequestRate:       50,
				RequestBurst:      100,
				MaxHeaderBytes:    32 << 10,
				MaxBodyBytes:      1 << 20,
				ReadHeaderTimeout: 5 * time.Second,
				ReadTimeout:       30 * time.Second,
				WriteTimeout:      60 * time.Second,
				IdleTimeout:       120 * time.Second,
			},
		},
		Engine:    Engine{SyncInterval: "always", GroupSync: true},
		Cluster:   Cluster{Name: "penstock"},
		Audit:     Audit{Retention: 400 * 24 * time.Hour, CheckpointDelay: 3 * time.Second},
		Pipelines: Pipelines{DrainTimeout: 30 * time.Second},
		Backup:    Backup{Schedule: 24 * time.Hour, KeepDaily: 7, KeepWeekly: 4, KeepMonthly: 6},
		Notify: Notify{Tick: 5 * time.Second, RetryBase: 10 * time.Second, RetryMax: 10 * time.Minute, GiveUpAfter: 24 * time.Hour,
			FailingAfter: 5, KeepResolved: 7 * 24 * time.Hour},
		Retention: Retention{InactiveAfter: 90 * 24 * time.Hour, CheckEvery: time.Hour, Grace: 24 * time.Hour},
		Fabric: Fabric{
			CommitWindow: 5 * time.Millisecond, MaxCommit: 1000, CommitsInFlight: 16, MaxPublishBatch: 1000,
			MaxAge: 14 * 24 * time.Hour, MaxDeliveries: 5, AckWait: 30 * time.Second, DuplicateWindow: 2 * time.Minute,
			IdleClose: 2 * time.Minute, DeadLetterMaxAge: 14 * 24 * time.Hour,
			MaxConnections: 1000, MaxSubscriptions: 10000, MaxPayload: 1 << 20,
		},
		Identity: Identity{
			SessionIdle: 30 * time.Minute, SessionMax: 12 * time.Hour, PasswordMinLength: 12,
			Argon2MemoryKiB: 64 << 10, Argon2Time: 3, Argon2Threads: 2,
		},
		Directory: Directory{
			RecheckEvery: 5 * time.Minute, RolesValidFor: 15 * time.Minute,
			OIDC: OIDC{Scopes: []string{"openid", "profile", "email", "groups", "offline_access"}, UsernameClaim: "preferred_username",
				GroupsClaim: "groups", Timeout: 10 * time.Second},
			LDAP: LDAP{
				UserFilter: "(&(objectClass=person)(uid={user}))", GroupFilter: "(|(member={dn})(uniqueMember={dn}))",
				NestedGroups: true, Timeout: 5 * time.Second, PoolSize: 4, IDAttribute: "entryUUID",
			},
		},
	}
}
