package engine

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/redact"
)

// TokenFile, inside the data directory, holds the credential that binds a connection to an
// account of the embedded server. Penstock uses it in-process; an operator who enabled
// engine.client_listen can use it with any NATS client (user = account name, password = token).
const TokenFile = "engine.token"

type embedded struct {
	ns        *server.Server
	token     redact.Secret
	listening bool
}

var _ accounts = (*embedded)(nil)

func startEmbedded(o Options) (*embedded, error) {
	if o.StoreKey.IsZero() {
		return nil, errors.New("embedded engine: a store encryption key is required")
	}
	sync, err := config.ParseSyncInterval(o.Config.SyncInterval)
	if err != nil {
		return nil, fmt.Errorf("engine.sync_interval: %w", err)
	}
	token, err := LoadOrCreateKeyFile(filepath.Join(o.DataDir, TokenFile))
	if err != nil {
		return nil, err
	}
	em := &embedded{token: token}

	opts := &server.Options{
		ServerName:         "penstock",
		JetStream:          true,
		StoreDir:           o.DataDir, // JetStream keeps its files in DataDir/jetstream
		JetStreamMaxStore:  o.Config.MaxStore,
		JetStreamMaxMemory: o.Config.MaxMemory,
		JetStreamCipher:    server.AES,
		JetStreamKey:       o.StoreKey.Reveal(),
		NoSigs:             true,
		DontListen:         true,
		// Every account binding goes through authenticator; no connection lands in the
		// global account.
		CustomClientAuthentication: &authenticator{token: token},
	}
	if sync == 0 {
		opts.SyncAlways = true
		opts.SyncInterval = 2 * time.Minute // flush timer only; every write is synced anyway
	} else {
		opts.SyncInterval = sync
	}
	if o.Config.MaxStore == 0 {
		opts.JetStreamMaxStore = -1
	}
	if o.Config.MaxMemory == 0 {
		opts.JetStreamMaxMemory = -1
	}
	if o.Config.ClientListen != "" {
		host, port, err := net.SplitHostPort(o.Config.ClientListen)
		if err != nil {
			return nil, fmt.Errorf("engine.client_listen: %w", err)
		}
		opts.DontListen = false
		opts.Host = host
		opts.Port, _ = strconv.Atoi(port)
		if opts.Port == 0 {
			opts.Port = server.RANDOM_PORT
		}
		em.listening = true
	}

	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded engine: %w", err)
	}
	ns.SetLoggerV2(&natsLogger{log: o.Logger.With("source", "nats")}, false, false, false)
	opts.CustomClientAuthentication.(*authenticator).srv = ns
	ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		ns.Shutdown()
		return nil, errors.New("embedded engine: not ready after 30s")
	}
	em.ns = ns
	return em, nil
}

// connect registers the account (enabling JetStream on it, which also recovers its streams
// from disk after a restart) and opens an in-process connection bound to it.
func (em *embedded) connect(ctx context.Context, name string) (*nats.Conn, error) {
	acc, _ := em.ns.LookupOrRegisterAccount(name)
	if !acc.JetStreamEnabled() {
		if err := acc.EnableJetStream(nil, nil); err != nil {
			return nil, fmt.Errorf("enable jetstream: %w", err)
		}
	}
	return nats.Connect("",
		nats.InProcessServer(em.ns),
		nats.UserInfo(name, em.token.Reveal()),
		nats.Name("penstock/"+name),
		nats.MaxReconnects(-1),
	)
}

func (em *embedded) close() {
	em.ns.Shutdown()
	em.ns.WaitForShutdown()
}

// authenticator binds a connection to the account named as its user, if it presents the
// engine token and the account exists. It never leaves a connection in the global account.
type authenticator struct {
	token redact.Secret
	srv   *server.Server
}

func (a *authenticator) Check(c server.ClientAuthentication) bool {
	o := c.GetOpts()
	if o == nil || !a.token.Equal(redact.NewSecret(o.Password)) || !accountName.MatchString(o.Username) {
		return false
	}
	acc, err := a.srv.LookupAccount(o.Username)
	if err != nil {
		return false
	}
	c.RegisterUser(&server.User{Username: o.Username, Account: acc})
	return true
}

// LoadOrCreateKeyFile reads a hex-encoded 256-bit secret, creating the file with 0600
// permissions if it does not exist. A file readable by group or others is refused.
func LoadOrCreateKeyFile(path string) (redact.Secret, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		raw := make([]byte, 32)
		if _, err := rand.Read(raw); err != nil {
			return redact.Secret{}, fmt.Errorf("generate %s: %w", filepath.Base(path), err)
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return redact.Secret{}, err
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return redact.Secret{}, fmt.Errorf("create %s: %w", path, err)
		}
		if _, err := f.WriteString(hex.EncodeToString(raw) + "\n"); err != nil {
			f.Close()
			return redact.Secret{}, fmt.Errorf("write %s: %w", path, err)
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return redact.Secret{}, fmt.Errorf("sync %s: %w", path, err)
		}
		if err := f.Close(); err != nil {
			return redact.Secret{}, err
		}
		return LoadOrCreateKeyFile(path)
	}
	if err != nil {
		return redact.Secret{}, fmt.Errorf("read %s: %w", path, err)
	}
	st, err := os.Stat(path)
	if err != nil {
		return redact.Secret{}, err
	}
	if st.Mode().Perm()&0o077 != 0 {
		return redact.Secret{}, fmt.Errorf("%s is readable by group or others (mode %04o): run chmod 600 on it", path, st.Mode().Perm())
	}
	s := string(b)
	for len(s) > 0 && (s[len(s)-1] == '\n' || s[len(s)-1] == '\r') {
		s = s[:len(s)-1]
	}
	if raw, err := hex.DecodeString(s); err != nil || len(raw) != 32 {
		return redact.Secret{}, fmt.Errorf("%s: must hold 64 hex characters (a 256-bit key)", path)
	}
	return redact.NewSecret(s), nil
}

// natsLogger sends the NATS server's log lines to slog. Its notices (the start-up banner,
// "server is ready") are debug lines: Penstock logs its own start-up.
type natsLogger struct{ log *slog.Logger }

func (l *natsLogger) Noticef(format string, v ...any) { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l *natsLogger) Warnf(format string, v ...any)   { l.log.Warn(fmt.Sprintf(format, v...)) }
func (l *natsLogger) Fatalf(format string, v ...any)  { l.log.Error(fmt.Sprintf(format, v...)) }
func (l *natsLogger) Errorf(format string, v ...any)  { l.log.Error(fmt.Sprintf(format, v...)) }
func (l *natsLogger) Debugf(format string, v ...any)  { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l *natsLogger) Tracef(format string, v ...any)  { l.log.Debug(fmt.Sprintf(format, v...)) }
