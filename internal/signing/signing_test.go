package signing

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

type memNonces struct {
	mu   sync.Mutex
	seen map[string]bool
}

func (m *memNonces) Use(_ context.Context, id, nonce string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.seen[id+"/"+nonce] {
		return ErrReplay
	}
	m.seen[id+"/"+nonce] = true
	return nil
}

var key = [32]byte{1, 2, 3}

func signed(t *testing.T, method, url string, body []byte, now time.Time, nonce string) *http.Request {
	t.Helper()
	r, err := http.NewRequest(method, url, strings.NewReader(string(body)))
	if err != nil {
		t.Fatal(err)
	}
	r.Header.Set("Content-Type", "application/json")
	Sign(r, "abcd1234abcd1234", key, body, now, nonce, "content-type")
	return r
}

func verify(r *http.Request, body []byte, now time.Time, store NonceStore) error {
	p, ok, err := Parse(r.Header.Get("Authorization"))
	if !ok {
		return errors.New("not signed")
	}
	if err != nil {
		return err
	}
	return Verify(context.Background(), r, p, key, body, now, store)
}

func TestSignedRequests(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	body := []byte(`{"value":"x"}`)
	url := "https://penstock.example/v1/tenants/acme/x?b=2&a=1&a=0&sp=a b"
	store := &memNonces{seen: map[string]bool{}}

	r := signed(t, "PUT", url, body, now, "nonce-0000000000000001")
	if err := verify(r, body, now.Add(4*time.Minute), store); err != nil {
		t.Fatalf("valid request: %v", err)
	}
	if err := verify(r, body, now.Add(4*time.Minute), store); !errors.Is(err, ErrReplay) {
		t.Fatalf("replayed request: %v", err)
	}

	cases := []struct {
		name   string
		mutate func(r *http.Request) (*http.Request, []byte)
		at     time.Time
		want   error
	}{
		{"date too old", func(r *http.Request) (*http.Request, []byte) { return r, body }, now.Add(5*time.Minute + time.Second), ErrSkew},
		{"date in the future", func(r *http.Request) (*http.Request, []byte) { return r, body }, now.Add(-5*time.Minute - time.Second), ErrSkew},
		{"body changed", func(r *http.Request) (*http.Request, []byte) { return r, []byte(`{"value":"y"}`) }, now, ErrSignature},
		{"method changed", func(r *http.Request) (*http.Request, []byte) { r.Method = "DELETE"; return r, body }, now, ErrSignature},
		{"path changed", func(r *http.Request) (*http.Request, []byte) { r.URL.Path = "/v1/tenants/globex/x"; return r, body }, now, ErrSignature},
		{"query changed", func(r *http.Request) (*http.Request, []byte) { r.URL.RawQuery = "a=1&b=2"; return r, body }, now, ErrSignature},
		{"signed header changed", func(r *http.Request) (*http.Request, []byte) {
			r.Header.Set("Content-Type", "text/plain")
			return r, body
		}, now, ErrSignature},
		{"host changed", func(r *http.Request) (*http.Request, []byte) { r.Host = "evil.example"; return r, body }, now, ErrSignature},
		{"date changed", func(r *http.Request) (*http.Request, []byte) {
			r.Header.Set(DateHeader, now.Add(time.Second).Format(time.RFC3339))
			return r, body
		}, now, ErrSignature},
		{"signature changed", func(r *http.Request) (*http.Request, []byte) {
			a := r.Header.Get("Authorization")
			r.Header.Set("Authorization", a[:len(a)-1]+map[bool]string{true: "0", false: "1"}[!strings.HasSuffix(a, "0")])
			return r, body
		}, now, ErrSignature},
		{"nonce header unsigned", func(r *http.Request) (*http.Request, []byte) {
			r.Header.Set("Authorization", strings.Replace(r.Header.Get("Authorization"), ";x-penstock-nonce", "", 1))
			return r, body
		}, now, ErrMalformed},
		{"short nonce", func(r *http.Request) (*http.Request, []byte) { r.Header.Set(NonceHeader, "short"); return r, body }, now, ErrMalformed},
		{"bad date", func(r *http.Request) (*http.Request, []byte) { r.Header.Set(DateHeader, "yesterday"); return r, body }, now, ErrMalformed},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := signed(t, "PUT", url, body, now, "nonce-10000000000000"+string(rune('a'+i)))
			r, b := tc.mutate(r)
			if err := verify(r, b, tc.at, store); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	// A refused request does not use up its nonce.
	r = signed(t, "PUT", url, body, now, "nonce-2000000000000000")
	if err := verify(r, []byte("tampered"), now, store); !errors.Is(err, ErrSignature) {
		t.Fatal(err)
	}
	if err := verify(r, body, now, store); err != nil {
		t.Fatalf("the genuine request after a forged one with its nonce: %v", err)
	}
}

func TestCanonicalForm(t *testing.T) {
	r, _ := http.NewRequest("get", "https://h.example/a%2Fb/c?z=1&y=%C3%A9&y=a+b", nil)
	r.Header.Set(DateHeader, "2026-11-23T12:00:00Z")
	r.Header.Set(NonceHeader, "n")
	r.Header.Set("X-Extra", "  v  ")
	got := Canonical(r, []string{"X-Extra", "host", "x-penstock-date"}, BodyHash(nil))
	want := strings.Join([]string{
		"PSK-HMAC-SHA256", "2026-11-23T12:00:00Z", "n", "GET", "/a%2Fb/c", "y=%C3%A9&y=a%20b&z=1",
		"host:h.example", "x-extra:v", "x-penstock-date:2026-11-23T12:00:00Z",
		"host;x-extra;x-penstock-date",
		"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
	}, "\n")
	if got != want {
		t.Fatalf("canonical form:\n%s\nwant:\n%s", got, want)
	}
}

// FuzzCanonical: any request that can be built signs and verifies, and the canonical form is
// a pure function of the request.
func FuzzCanonical(f *testing.F) {
	f.Add("GET", "/v1/x", "a=1&b=2", "text/plain", []byte("body"))
	f.Add("PUT", "/%2F/..", "a=%zz&&=", " \t", []byte{})
	f.Add("POST", "", "x=1;y=2", "a,b", []byte{0xff})
	f.Fuzz(func(t *testing.T, method, path, query, ctype string, body []byte) {
		r, err := http.NewRequest(method, "https://h.example"+path+"?"+query, nil)
		if err != nil {
			return
		}
		r.Header.Set("Content-Type", ctype)
		now := time.Unix(1_800_000_000, 0)
		Sign(r, "abcd1234abcd1234", key, body, now, "fuzz-nonce-0000000001", "content-type")
		p, _, err := Parse(r.Header.Get("Authorization"))
		if err != nil {
			t.Fatalf("parse own signature: %v", err)
		}
		c1, c2 := Canonical(r, p.Signed, BodyHash(body)), Canonical(r, p.Signed, BodyHash(body))
		if c1 != c2 {
			t.Fatal("canonical form is not deterministic")
		}
		if err := Verify(context.Background(), r, p, key, body, now, &memNonces{seen: map[string]bool{}}); err != nil {
			t.Fatalf("own signature refused: %v", err)
		}
	})
}
