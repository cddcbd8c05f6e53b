package engine

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/penstock/penstock/internal/config"
)

// external is a NATS JetStream server Penstock does not run. Its credentials belong to one
// account, which serves as the platform account; creating further accounts needs operator
// access to that server.
type external struct {
	opts Options
}

var _ accounts = (*external)(nil)

func (x *external) connect(ctx context.Context, name string) (*nats.Conn, error) {
	if name != PlatformAccount {
		return nil, ErrAccountUnavailable
	}
	c := x.opts.Config
	var auth []nats.Option
	switch {
	case c.NATSCredsFile != "":
		auth = append(auth, nats.UserCredentials(c.NATSCredsFile))
	case c.NATSUser != "":
		auth = append(auth, nats.UserInfo(c.NATSUser, c.NATSPassword.Reveal()))
	case !c.NATSToken.IsZero():
		auth = append(auth, nats.Token(c.NATSToken.Reveal()))
	}
	return dialExternal(ctx, c, "penstock/"+name, auth...)
}

// dialExternal connects to the external server with the engine's TLS settings and the given
// credentials.
func dialExternal(ctx context.Context, c config.Engine, name string, auth ...nats.Option) (*nats.Conn, error) {
	opts := append([]nats.Option{nats.Name(name), nats.MaxReconnects(-1)}, auth...)
	if dl, ok := ctx.Deadline(); ok {
		opts = append(opts, nats.Timeout(timeUntil(dl)))
	}
	if c.NATSCAFile != "" {
		opts = append(opts, nats.RootCAs(c.NATSCAFile))
	}
	if c.NATSCertFile != "" {
		opts = append(opts, nats.ClientCert(c.NATSCertFile, c.NATSKeyFile))
	}
	nc, err := nats.Connect(c.NATSURL, opts...)
	if err != nil {
		// The URL is configuration, not a secret: validation refuses URLs with credentials.
		return nil, fmt.Errorf("connect to %s: %w", c.NATSURL, err)
	}
	return nc, nil
}

func (x *external) close() {}

func timeUntil(t time.Time) time.Duration {
	if d := time.Until(t); d > 0 {
		return d
	}
	return time.Millisecond
}
