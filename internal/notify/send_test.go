package notify

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/penstock/penstock/internal/egress"
)

// An SMTP server that accepts and then says nothing holds a notice until its context ends,
// not until the attempt's 30 s deadline: a shutdown is not held by it.
func TestStalledSMTPServerReleasesOnCancel(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // held open, silent, until the test ends
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	d := &egress.Dialer{Policy: egress.Policy{Tenant: "acme", Rules: []egress.Rule{{Prefix: netip.MustParsePrefix("127.0.0.1/32"), Port: port}}}}
	c := Channel{Spec: Spec{Name: "m", Type: Email, SMTPHost: "127.0.0.1", SMTPPort: port, TLS: "starttls", From: "a@example.com",
		To: []string{"b@example.com"}}}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	start := time.Now()
	err = send(ctx, d, c, message{alert: &Alert{ID: "a-0123456789abcdef", State: Firing}, kind: Test})
	if err == nil {
		t.Fatal("a silent server took the notice")
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("the attempt ended %v after it began, not at its cancellation", took)
	}
}
