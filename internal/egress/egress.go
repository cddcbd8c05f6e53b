// Package egress owns the one way connectors reach the network: a dialer that checks every
// connection's resolved address against the tenant's egress policy at connect time. It never
// dials a name it has not resolved and checked itself, so a DNS answer that changes between a
// check and a connect (rebinding) cannot slip through.
package egress

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ErrDenied is wrapped by every refusal.
var ErrDenied = errors.New("egress denied")

// denied are the ranges no tenant reaches unless a platform admin allows them.
var denied = []struct {
	prefix netip.Prefix
	why    string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "unspecified address"},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback address"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local address (cloud metadata lives here)"},
	{netip.MustParsePrefix("10.0.0.0/8"), "private address (RFC 1918)"},
	{netip.MustParsePrefix("172.16.0.0/12"), "private address (RFC 1918)"},
	{netip.MustParsePrefix("192.168.0.0/16"), "private address (RFC 1918)"},
	{netip.MustParsePrefix("100.64.0.0/10"), "shared address space (RFC 6598; some clouds' metadata)"},
	{netip.MustParsePrefix("192.0.0.0/24"), "IETF protocol assignment"},
	{netip.MustParsePrefix("198.18.0.0/15"), "benchmarking address"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast address"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved address"},
	{netip.MustParsePrefix("::/128"), "unspecified address"},
	{netip.MustParsePrefix("::1/128"), "loopback address"},
	{netip.MustParsePrefix("fe80::/10"), "link-local address"},
	{netip.MustParsePrefix("fc00::/7"), "private address (RFC 4193; cloud metadata fd00:ec2::254 lives here)"},
	{netip.MustParsePrefix("ff00::/8"), "multicast address"},
	// Translation prefixes can carry any IPv4 address, private ones included.
	{netip.MustParsePrefix("64:ff9b::/96"), "NAT64 address"},
	{netip.MustParsePrefix("64:ff9b:1::/48"), "NAT64 address"},
	{netip.MustParsePrefix("2002::/16"), "6to4 address"},
}

// Classify says why the default policy denies addr, or "" if it allows it.
func Classify(addr netip.Addr) string {
	addr = addr.Unmap()
	for _, d := range denied {
		if d.prefix.Contains(addr) {
			return d.why
		}
	}
	return ""
}

// Rule allows one destination beyond the default policy: a CIDR or a host name, and a port
// (0: any port).
type Rule struct {
	Prefix netip.Prefix
	Host   string
	Port   int
}

// ParseRule reads "CIDR[:port]", "IP[:port]" or "host[:port]"; IPv6 with a port is written
// "[addr]:port" or "[prefix]:port".
func ParseRule(s string) (Rule, error) {
	var r Rule
	target, port := s, ""
	if strings.HasPrefix(s, "[") {
		end := strings.Index(s, "]")
		if end < 0 {
			return Rule{}, fmt.Errorf("%q: missing ]", s)
		}
		target, port = s[1:end], strings.TrimPrefix(s[end+1:], ":")
		if len(s) > end+1 && s[end+1] != ':' {
			return Rule{}, fmt.Errorf("%q: expected :port after ]", s)
		}
	} else if i := strings.LastIndex(s, ":"); i >= 0 && strings.Count(s, ":") == 1 {
		target, port = s[:i], s[i+1:]
	}
	if port != "" {
		p, err := strconv.Atoi(port)
		if err != nil || p < 1 || p > 65535 {
			return Rule{}, fmt.Errorf("%q: port must be 1-65535", s)
		}
		r.Port = p
	}
	if p, err := netip.ParsePrefix(target); err == nil {
		r.Prefix = p.Masked()
		return r, nil
	}
	if a, err := netip.ParseAddr(target); err == nil {
		r.Prefix = netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
		return r, nil
	}
	host := strings.ToLower(strings.TrimSuffix(target, "."))
	if !validHost(host) {
		return Rule{}, fmt.Errorf("%q: not a CIDR, an IP address or a host name", s)
	}
	r.Host = host
	return r, nil
}

func validHost(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// String writes the rule as ParseRule reads it.
func (r Rule) String() string {
	t := r.Host
	if t == "" {
		t = r.Prefix.String()
		if r.Prefix.IsSingleIP() {
			t = r.Prefix.Addr().String()
		}
		if r.Port != 0 && r.Prefix.Addr().Is6() {
			t = "[" + t + "]"
		}
	}
	if r.Port != 0 {
		t += ":" + strconv.Itoa(r.Port)
	}
	return t
}

// Policy is a tenant's egress policy: the default denials, less what its rules allow.
type Policy struct {
	Tenant string
	Rules  []Rule
}

// Check reports whether a connection to addr:port, reached by the name host ("" if dialled by
// address), is allowed, and why not.
func (p Policy) Check(host string, addr netip.Addr, port int) error {
	addr = addr.Unmap()
	why := Classify(addr)
	if why == "" {
		return nil
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	for _, r := range p.Rules {
		if r.Port != 0 && r.Port != port {
			continue
		}
		if r.Host != "" && r.Host == host || r.Host == "" && r.Prefix.Contains(addr) {
			return nil
		}
	}
	return fmt.Errorf("%w: %s (%s) is not allowed for tenant %s; a platform admin can allow it with `penstock egress set --tenant %s`",
		ErrDenied, net.JoinHostPort(addr.String(), strconv.Itoa(port)), why, p.Tenant, p.Tenant)
}

// Resolver looks names up; net.DefaultResolver is one.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Dialer dials TCP connections for one tenant, each checked against its policy.
type Dialer struct {
	Policy Policy
	// Current, if set, is asked for the policy on every dial instead of Policy, so a rule an
	// administrator removes stops connections a long-running connector opens afterwards.
	Current  func() Policy
	Resolver Resolver
	// Timeout bounds one connection attempt (0: 10 s).
	Timeout time.Duration
}

// DialContext resolves addr, checks every address it resolves to, and connects to the first
// allowed one that answers, by address. The socket's own peer address is checked once more just
// before connect.
func (d *Dialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, fmt.Errorf("%w: network %q (only TCP)", ErrDenied, network)
	}
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("dial %q: %w", addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 1 || port > 65535 {
		return nil, fmt.Errorf("dial %q: bad port", addr)
	}
	var addrs []netip.Addr
	name := ""
	if a, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{a}
	} else {
		name = host
		r := d.Resolver
		if r == nil {
			r = net.DefaultResolver
		}
		addrs, err = r.LookupNetIP(ctx, "ip", host)
		if err != nil {
			return nil, fmt.Errorf("dial %s: %w", addr, err)
		}
	}
	policy := d.policy()
	timeout := d.Timeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	var firstErr error
	for _, a := range addrs {
		if err := policy.Check(name, a, port); err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		nd := &net.Dialer{Timeout: timeout, Control: control(policy, name, port)}
		c, err := nd.DialContext(ctx, network, net.JoinHostPort(a.Unmap().String(), portStr))
		if err == nil {
			return c, nil
		}
		if firstErr == nil || errors.Is(firstErr, ErrDenied) {
			firstErr = err
		}
	}
	if firstErr == nil {
		firstErr = fmt.Errorf("dial %s: no addresses", addr)
	}
	return nil, firstErr
}

func (d *Dialer) policy() Policy {
	if d.Current != nil {
		return d.Current()
	}
	return d.Policy
}

// control checks the address the socket is about to connect to.
func control(policy Policy, name string, port int) func(network, address string, c syscall.RawConn) error {
	return func(_, address string, _ syscall.RawConn) error {
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return fmt.Errorf("%w: %q", ErrDenied, address)
		}
		if int(ap.Port()) != port {
			return fmt.Errorf("%w: port changed to %d", ErrDenied, ap.Port())
		}
		return policy.Check(name, ap.Addr(), port)
	}
}
