package edge

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/penstock/penstock/internal/config"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// A scan from many addresses does not grow the table without bound: idle entries whose
// bucket has refilled are swept, entries with open connections are kept.
func TestIPTableSweepsIdleEntries(t *testing.T) {
	tb := newIPTable(10, 10)
	for i := range 1000 {
		if !tb.allow(fmt.Sprintf("10.0.%d.%d", i/256, i%256)) {
			t.Fatal("first request from a new address refused")
		}
	}
	tb.mu.Lock()
	tb.entries["10.0.0.1"].open = 1
	past := time.Now().Add(-2 * tb.idle)
	for _, e := range tb.entries {
		e.lastSeen = past
	}
	tb.lastSweep = past
	tb.mu.Unlock()

	tb.allow("192.0.2.1")
	tb.mu.Lock()
	defer tb.mu.Unlock()
	if len(tb.entries) != 2 {
		t.Fatalf("%d entries after the sweep, want 2 (the busy one and the new one)", len(tb.entries))
	}
	if _, ok := tb.entries["10.0.0.1"]; !ok {
		t.Fatal("entry with an open connection swept")
	}
}

func TestIPTableRateAndBurst(t *testing.T) {
	tb := newIPTable(1, 3)
	allowed := 0
	for range 10 {
		if tb.allow("198.51.100.7") {
			allowed++
		}
	}
	if allowed != 3 {
		t.Fatalf("%d of 10 immediate requests allowed, want the burst of 3", allowed)
	}
	if !tb.allow("198.51.100.8") {
		t.Fatal("another address shares the bucket")
	}
}

func TestSourceKeys(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.7:443":              "192.0.2.7",
		"[::ffff:192.0.2.7]:443":     "192.0.2.7",
		"[2001:db8:1:2:3:4:5:6]:443": "2001:db8:1:2::/64",
		"[2001:db8:1:2:ffff::1]:80":  "2001:db8:1:2::/64",
		"[2001:db8:1:3::1]:80":       "2001:db8:1:3::/64",
		"[::1]:8443":                 "::/64",
		"not-an-address":             "not-an-address",
	} {
		if got := sourceOf(in); got != want {
			t.Errorf("sourceOf(%q) = %q, want %q", in, got, want)
		}
	}
}

// When every slot holds a source that is still active, a new source is refused rather than
// growing the table; once sources go idle, the sweep makes room.
func TestIPTableFull(t *testing.T) {
	tb := newIPTable(100, 100)
	tb.max = 3
	for _, ip := range []string{"a", "b", "c"} {
		if !tb.allow(ip) {
			t.Fatalf("%s refused", ip)
		}
	}
	if tb.allow("d") {
		t.Fatal("fourth source accepted into a full table")
	}
	if !tb.allow("a") {
		t.Fatal("known source refused because the table is full")
	}
	tb.mu.Lock()
	for _, e := range tb.entries {
		e.lastSeen = time.Now().Add(-2 * tb.idle)
	}
	tb.lastSweep = time.Now().Add(-2 * time.Second)
	tb.mu.Unlock()
	if !tb.allow("d") {
		t.Fatal("new source refused after the others went idle")
	}
}

// A chunked body declares no length; it is cut and counted when it grows past the limit.
func TestChunkedBodyOverLimit(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	lim := config.Default().API.Limits
	lim.MaxBodyBytes = 1024
	read := make(chan error, 1)
	h := Requests(lim, m, func(w http.ResponseWriter, _ *http.Request, status int, code, msg string) {
		http.Error(w, code, status)
	})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, err := io.ReadAll(r.Body)
		read <- err
		if err != nil {
			http.Error(w, "too large", http.StatusRequestEntityTooLarge)
		}
	}))
	srv := httptest.NewServer(h)
	defer srv.Close()

	pr, pw := io.Pipe()
	go func() {
		pw.Write(bytes.Repeat([]byte("x"), 4096))
		pw.Close()
	}()
	req, _ := http.NewRequest(http.MethodPost, srv.URL, pr)
	req.ContentLength = -1 // chunked
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	var tooLarge *http.MaxBytesError
	if err := <-read; !errors.As(err, &tooLarge) {
		t.Fatalf("handler read: %v, want a MaxBytesError", err)
	}
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if got := testutil.ToFloat64(m.rejected.WithLabelValues(ReasonBodyTooLarge)); got != 1 {
		t.Fatalf("body_too_large counted %v times, want 1", got)
	}
}
