// Package postgres is the PostgreSQL connector: a source that reads a table incrementally by a
// cursor column or in full, and a sink that inserts or upserts batches in one transaction each
// (COPY into the table, or into a staging table merged with ON CONFLICT). It connects only
// through the egress dialer and reads its password only from the application's secrets.
package postgres

import (
	"context"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/penstock/penstock/internal/connector"
)

// Plugin is the PostgreSQL connector.
var Plugin = connector.Plugin{
	Name:   "postgres",
	Doc:    "PostgreSQL tables: incremental or full reads, batched inserts or upserts",
	Source: newSource,
	Sink:   newSink,
}

// conn is how both sides reach the server.
type conn struct {
	Host     string              `json:"host" required:"true"`
	Port     int                 `json:"port" max:"65535" doc:"default 5432"`
	Database string              `json:"database" required:"true"`
	User     string              `json:"user" required:"true"`
	Password connector.SecretRef `json:"password" doc:"${secret:NAME}; empty for trust or certificate authentication"`
	SSLMode  string              `json:"sslmode" enum:"disable,prefer,require,verify-ca,verify-full" doc:"default prefer"`
}

func (c *conn) check(path string) (connector.Refs, error) {
	if c.Port == 0 {
		c.Port = 5432
	}
	if c.Port < 1 || c.Port > 65535 {
		return connector.Refs{}, fmt.Errorf("%s.port: 1-65535", path)
	}
	if c.SSLMode == "" {
		c.SSLMode = "prefer"
	}
	return connector.Refs{Dials: map[string]string{path + ".host": net.JoinHostPort(c.Host, strconv.Itoa(c.Port))}}, nil
}

// identRe is what a table or column name may be: plain identifiers, optionally schema-qualified.
var identRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,62}$`)

func checkIdent(path, s string, qualified bool) error {
	parts := []string{s}
	if qualified {
		parts = strings.Split(s, ".")
	}
	if len(parts) > 2 {
		return fmt.Errorf("%s: %q: at most schema.table", path, s)
	}
	for _, p := range parts {
		if !identRe.MatchString(p) {
			return fmt.Errorf("%s: %q: letters, digits and _, starting with a letter or _", path, s)
		}
	}
	return nil
}

func checkColumns(path string, cols []string) error {
	for i, col := range cols {
		if err := checkIdent(fmt.Sprintf("%s[%d]", path, i), col, false); err != nil {
			return err
		}
	}
	return nil
}

func quote(s string) string {
	return pgx.Identifier(strings.Split(s, ".")).Sanitize()
}

// pool opens a small pool whose every connection is dialled through the egress dialer, to the
// name as written (the dialer resolves and checks it).
func (c conn) pool(ctx context.Context, res connector.Resources, maxConns int32) (*pgxpool.Pool, error) {
	// The server's operators see which pipeline holds a connection (pg_stat_activity).
	name := "penstock"
	if res.Pipeline != "" {
		name += "/" + res.Pipeline
	}
	cfg, err := pgxpool.ParseConfig(fmt.Sprintf("host=%s port=%d dbname=%s user=%s sslmode=%s application_name=%s",
		quoteDSN(c.Host), c.Port, quoteDSN(c.Database), quoteDSN(c.User), c.SSLMode, quoteDSN(name)))
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	// Nothing of this process's own PostgreSQL client setup may reach a tenant's server:
	// not PGPASSWORD or ~/.pgpass (the password is only the secret), not a client
	// certificate from ~/.postgresql.
	cfg.ConnConfig.Password = ""
	if cfg.ConnConfig.TLSConfig != nil {
		cfg.ConnConfig.TLSConfig.Certificates = nil
		cfg.ConnConfig.TLSConfig.GetClientCertificate = nil
	}
	for _, fb := range cfg.ConnConfig.Fallbacks {
		if fb.TLSConfig != nil {
			fb.TLSConfig.Certificates = nil
			fb.TLSConfig.GetClientCertificate = nil
		}
	}
	if name := c.Password.Name(); name != "" {
		if res.Secrets == nil {
			return nil, fmt.Errorf("postgres: no secrets to read password from")
		}
		pw, err := res.Secrets.Secret(ctx, name)
		if err != nil {
			return nil, fmt.Errorf("postgres: password: %w", err)
		}
		cfg.ConnConfig.Password = pw.Reveal()
	}
	if res.Dialer == nil {
		return nil, fmt.Errorf("postgres: no egress dialer")
	}
	cfg.ConnConfig.DialFunc = res.Dialer.DialContext
	cfg.ConnConfig.LookupFunc = func(_ context.Context, host string) ([]string, error) { return []string{host}, nil }
	cfg.MaxConns = maxConns
	p, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	if err := p.Ping(ctx); err != nil {
		p.Close()
		return nil, fmt.Errorf("postgres %s:%d/%s as %s: %w", c.Host, c.Port, c.Database, c.User, err)
	}
	return p, nil
}

func quoteDSN(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}
