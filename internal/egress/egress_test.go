package egress

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/penstock/penstock/internal/testenv"
)

func TestClassify(t *testing.T) {
	for addr, deny := range map[string]bool{
		"127.0.0.1": true, "127.1.2.3": true, "::1": true, "::ffff:127.0.0.1": true,
		"169.254.169.254": true, "fd00:ec2::254": true, "100.100.100.200": true,
		"10.1.2.3": true, "172.16.0.1": true, "172.31.255.255": true, "192.168.1.1": true, "fc00::1": true,
		"fe80::1": true, "224.0.0.1": true, "ff02::1": true, "0.0.0.0": true, "::": true,
		"64:ff9b::7f00:1": true, "2002:7f00:1::1": true, "255.255.255.255": true,
		"8.8.8.8": false, "172.32.0.1": false, "2606:4700::1111": false, "93.184.215.14": false,
	} {
		if got := Classify(netip.MustParseAddr(addr)) != ""; got != deny {
			t.Errorf("%s: denied %v, want %v", addr, got, deny)
		}
	}
}

func TestParseRule(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1": "127.0.0.1", "127.0.0.1:5432": "127.0.0.1:5432", "10.0.0.0/8": "10.0.0.0/8",
		"10.1.0.0/8:443": "10.0.0.0/8:443", "[::1]:80": "[::1]:80", "fd00::/8": "fd00::/8",
		"DB.Internal.example.": "db.internal.example", "api.example.com:443": "api.example.com:443",
	} {
		r, err := ParseRule(in)
		if err != nil {
			t.Errorf("%s: %v", in, err)
			continue
		}
		if r.String() != want {
			t.Errorf("%s: %s, want %s", in, r, want)
		}
	}
	for _, bad := range []string{"", "host:0", "host:70000", "host:x", "[::1", "[::1]x", "a..b", "-a.com", "a b", "10.0.0.0/33"} {
		if _, err := ParseRule(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// staticResolver answers every name with fixed addresses: it stands in for a DNS server that
// points a public-looking name at an internal address (rebinding).
type staticResolver []netip.Addr

func (r staticResolver) LookupNetIP(context.Context, string, string) ([]netip.Addr, error) {
	return r, nil
}

// listen accepts connections on a loopback port and reports each one's remote address.
func listen(t *testing.T) (port int, accepted chan string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	accepted = make(chan string, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c.RemoteAddr().String()
			c.Close()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port, accepted
}

func TestDialDeniesThenAllowsLoopback(t *testing.T) {
	ctx := context.Background()
	port, accepted := listen(t)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	d := &Dialer{Policy: Policy{Tenant: "acme"}, Timeout: 2 * time.Second}
	_, err := d.DialContext(ctx, "tcp", addr)
	if !errors.Is(err, ErrDenied) || !strings.Contains(err.Error(), "loopback") || !strings.Contains(err.Error(), "acme") {
		t.Fatalf("default policy: %v", err)
	}
	// A rule for another port does not open this one.
	other, _ := ParseRule("127.0.0.1:" + strconv.Itoa(port+1))
	d.Policy.Rules = []Rule{other}
	if _, err := d.DialContext(ctx, "tcp", addr); !errors.Is(err, ErrDenied) {
		t.Fatalf("rule for another port: %v", err)
	}
	allow, _ := ParseRule(addr)
	d.Policy.Rules = []Rule{allow}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("allowed: %v", err)
	}
	// The listener accepts in order: a denied dial that reached it would come before this one.
	if got := <-accepted; got != c.LocalAddr().String() {
		t.Fatalf("a denied dial reached the listener (from %s)", got)
	}
	c.Close()
	if _, err := d.DialContext(ctx, "udp", addr); !errors.Is(err, ErrDenied) {
		t.Fatalf("udp: %v", err)
	}
}

func TestDialChecksResolvedAddress(t *testing.T) {
	ctx := context.Background()
	port, accepted := listen(t)
	// A name that resolves to loopback is denied even though nothing names loopback; the
	// dialer connects to the address it checked, never resolving again.
	d := &Dialer{Policy: Policy{Tenant: "acme"}, Resolver: staticResolver{netip.MustParseAddr("127.0.0.1")}}
	if _, err := d.DialContext(ctx, "tcp", "innocent.example:"+strconv.Itoa(port)); !errors.Is(err, ErrDenied) {
		t.Fatalf("rebinding name: %v", err)
	}
	// IPv4-mapped IPv6 is the same loopback.
	d.Resolver = staticResolver{netip.MustParseAddr("::ffff:127.0.0.1")}
	if _, err := d.DialContext(ctx, "tcp", "innocent.example:"+strconv.Itoa(port)); !errors.Is(err, ErrDenied) {
		t.Fatalf("mapped loopback: %v", err)
	}
	// A host rule allows that name, whatever it resolves to.
	r, _ := ParseRule("innocent.example")
	d.Policy.Rules = []Rule{r}
	c, err := d.DialContext(ctx, "tcp", "innocent.example:"+strconv.Itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	<-accepted
	// ...but not the same address reached by another name.
	if _, err := d.DialContext(ctx, "tcp", "other.example:"+strconv.Itoa(port)); !errors.Is(err, ErrDenied) {
		t.Fatalf("other name: %v", err)
	}
}

func TestHTTPRedirects(t *testing.T) {
	ctx := context.Background()
	var innerHits int
	inner := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		innerHits++
		io.WriteString(w, "internal "+r.Header.Get("X-Api-Key"))
	}))
	defer inner.Close()
	outer := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/away":
			http.Redirect(w, r, inner.URL+"/secret", http.StatusFound)
		case "/here":
			http.Redirect(w, r, "/final", http.StatusFound)
		default:
			io.WriteString(w, "final")
		}
	}))
	defer outer.Close()
	allowOuter, _ := ParseRule(strings.TrimPrefix(outer.URL, "http://"))
	allowInner, _ := ParseRule(strings.TrimPrefix(inner.URL, "http://"))
	// Both are allowed: a redirect to the other is refused all the same, so a credential
	// header never reaches a host nobody configured.
	d := &Dialer{Policy: Policy{Tenant: "acme", Rules: []Rule{allowOuter, allowInner}}}
	hc := d.HTTPClient(5 * time.Second)
	req, _ := http.NewRequestWithContext(ctx, "GET", outer.URL+"/away", nil)
	req.Header.Set("X-Api-Key", "TOPSECRET")
	if _, err := hc.Do(req); !errors.Is(err, ErrDenied) || innerHits != 0 {
		t.Fatalf("redirect to another host: %v, %d hits", err, innerHits)
	}
	req, _ = http.NewRequestWithContext(ctx, "GET", outer.URL+"/here", nil)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "final" {
		t.Fatalf("same-host redirect: %q", body)
	}
	// The policy is asked on every dial when Current is set: a rule removed stops new
	// connections at once.
	rules := []Rule{allowOuter}
	d2 := &Dialer{Current: func() Policy { return Policy{Tenant: "acme", Rules: rules} }}
	if c, err := d2.DialContext(ctx, "tcp", strings.TrimPrefix(outer.URL, "http://")); err != nil {
		t.Fatal(err)
	} else {
		c.Close()
	}
	rules = nil
	if _, err := d2.DialContext(ctx, "tcp", strings.TrimPrefix(outer.URL, "http://")); !errors.Is(err, ErrDenied) {
		t.Fatalf("after the rule is gone: %v", err)
	}
}

// TestDialMachinePostgreSQL proves the policy on a real service: the machine's PostgreSQL.
func TestDialMachinePostgreSQL(t *testing.T) {
	testenv.Require(t, "PostgreSQL", "127.0.0.1:5432", "pg_ctlcluster $(ls /etc/postgresql) main start")
	d := &Dialer{Policy: Policy{Tenant: "acme"}}
	if _, err := d.DialContext(context.Background(), "tcp", "localhost:5432"); !errors.Is(err, ErrDenied) {
		t.Fatalf("localhost:5432 by default: %v", err)
	}
	r, _ := ParseRule("127.0.0.1/32:5432")
	d.Policy.Rules = []Rule{r}
	c, err := d.DialContext(context.Background(), "tcp", "127.0.0.1:5432")
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}
