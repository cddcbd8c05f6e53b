package testenv

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"testing"
)

var (
	portsMu sync.Mutex
	given   = map[int]bool{}
)

// FreeAddr returns a loopback address nothing listens on, for a server a test starts (and may
// restart) on a port it must know beforehand. The port is chosen below the kernel's ephemeral
// range: a port from that range, once released, can be taken by any outgoing connection (a
// cluster's own routes among them) before the server binds it, and the server then fails to
// start with "address already in use". A port is never given twice in one test binary.
func FreeAddr(t testing.TB) string {
	t.Helper()
	low := ephemeralLow()
	base := max(low-16000, 10000)
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 1000 {
		port := base + rand.IntN(low-base)
		if given[port] {
			continue
		}
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		ln.Close()
		given[port] = true
		return ln.Addr().String()
	}
	t.Fatalf("no free loopback port between %d and %d", base, low)
	return ""
}

// FreePort is FreeAddr's port.
func FreePort(t testing.TB) int {
	t.Helper()
	tcp, err := net.ResolveTCPAddr("tcp", FreeAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	return tcp.Port
}

// ephemeralLow is the first port of the kernel's range for outgoing connections (32768 where
// it cannot be read).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	var lo, hi int
	if _, err := fmt.Sscan(string(b), &lo, &hi); err != nil || lo < 12000 {
		return 32768
	}
	return lo
}
