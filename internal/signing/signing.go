// Package signing owns signed requests: the canonical form of an HTTP request, the HMAC-SHA256
// signature over it, and its verification (clock skew, signature, then the nonce). It never
// looks keys up or stores nonces itself: callers hand it a key lookup and a nonce store.
package signing

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"time"
)

// Scheme is the Authorization scheme of signed requests.
const Scheme = "PSK-HMAC-SHA256"

// Headers every signature must cover; more (content-type, ...) may be added.
const (
	DateHeader  = "X-Penstock-Date"
	NonceHeader = "X-Penstock-Nonce"
)

// MaxSkew is how far a request's date may be from the server's clock.
const MaxSkew = 5 * time.Minute

var required = []string{"host", "x-penstock-date", "x-penstock-nonce"}

// Errors, each a distinct reason a signed request is refused.
var (
	ErrMalformed = errors.New("malformed signed request")
	ErrSkew      = errors.New("request date is more than 5 minutes from the server's clock")
	ErrSignature = errors.New("signature does not match")
	ErrReplay    = errors.New("nonce already used")
)

// Canonical is the string a signature covers, one element a line:
//
//	PSK-HMAC-SHA256
//	<X-Penstock-Date, RFC 3339 UTC>
//	<X-Penstock-Nonce>
//	<METHOD>
//	<path, escaped as sent>
//	<query: name=value pairs, each RFC 3986 percent-encoded, sorted, joined with &>
//	<each signed header as name:value, names lower-case and sorted, values trimmed, one a line>
//	<signed header names, lower-case, sorted, joined with ;>
//	<hex SHA-256 of the body>
func Canonical(r *http.Request, signed []string, bodySHA256 string) string {
	var b strings.Builder
	b.WriteString(Scheme + "\n")
	b.WriteString(r.Header.Get(DateHeader) + "\n")
	b.WriteString(r.Header.Get(NonceHeader) + "\n")
	b.WriteString(strings.ToUpper(r.Method) + "\n")
	path := r.URL.EscapedPath()
	if path == "" {
		path = "/"
	}
	b.WriteString(path + "\n")
	b.WriteString(canonicalQuery(r.URL.Query()) + "\n")
	names := canonicalNames(signed)
	for _, n := range names {
		v := r.Header.Values(n)
		if n == "host" {
			v = []string{r.Host}
		}
		for i := range v {
			v[i] = strings.TrimSpace(v[i])
		}
		b.WriteString(n + ":" + strings.Join(v, ",") + "\n")
	}
	b.WriteString(strings.Join(names, ";") + "\n")
	b.WriteString(bodySHA256)
	return b.String()
}

func canonicalNames(signed []string) []string {
	names := make([]string, 0, len(signed))
	for _, n := range signed {
		n = strings.ToLower(strings.TrimSpace(n))
		if n != "" && !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return names
}

func canonicalQuery(q url.Values) string {
	pairs := make([]string, 0, len(q))
	for k, vs := range q {
		for _, v := range vs {
			pairs = append(pairs, escape(k)+"="+escape(v))
		}
	}
	sort.Strings(pairs)
	return strings.Join(pairs, "&")
}

// escape percent-encodes everything but RFC 3986's unreserved characters.
func escape(s string) string {
	return strings.ReplaceAll(url.QueryEscape(s), "+", "%20")
}

// BodyHash is the hex SHA-256 of a body.
func BodyHash(body []byte) string {
	sum := sha256.Sum256(body)
	return hex.EncodeToString(sum[:])
}

func mac(key [32]byte, canonical string) string {
	m := hmac.New(sha256.New, key[:])
	m.Write([]byte(canonical))
	return hex.EncodeToString(m.Sum(nil))
}

// Sign sets the date, nonce and Authorization headers of r for key id, signing host, date,
// nonce and the extra headers named.
func Sign(r *http.Request, id string, key [32]byte, body []byte, now time.Time, nonce string, extra ...string) {
	r.Header.Set(DateHeader, now.UTC().Format(time.RFC3339))
	r.Header.Set(NonceHeader, nonce)
	signed := canonicalNames(append(slices.Clone(required), extra...))
	sig := mac(key, Canonical(r, signed, BodyHash(body)))
	r.Header.Set("Authorization", fmt.Sprintf("%s Credential=%s, SignedHeaders=%s, Signature=%s", Scheme, id, strings.Join(signed, ";"), sig))
}

// Parsed is a signed request's Authorization header.
type Parsed struct {
	ID, Signature string
	Signed        []string
}

// Parse reads the Authorization header of a signed request; ok is false for other schemes.
func Parse(h string) (p Parsed, ok bool, err error) {
	rest, found := strings.CutPrefix(h, Scheme+" ")
	if !found {
		return Parsed{}, false, nil
	}
	for _, part := range strings.Split(rest, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch k {
		case "Credential":
			p.ID = v
		case "SignedHeaders":
			p.Signed = strings.Split(v, ";")
		case "Signature":
			p.Signature = v
		}
	}
	if p.ID == "" || len(p.Signature) != 64 || len(p.Signed) == 0 {
		return Parsed{}, true, ErrMalformed
	}
	names := canonicalNames(p.Signed)
	for _, req := range required {
		if !slices.Contains(names, req) {
			return Parsed{}, true, fmt.Errorf("%w: SignedHeaders must include %s", ErrMalformed, req)
		}
	}
	return p, true, nil
}

// NonceStore remembers nonces for longer than MaxSkew on both sides; Use fails with ErrReplay
// for a nonce it has seen.
type NonceStore interface {
	Use(ctx context.Context, id, nonce string) error
}

// Verify checks a parsed signed request: its date and nonce format (Precheck), the signature
// with key, then the nonce. The nonce is recorded only for a request whose signature holds, so
// forged requests cannot fill the store.
func Verify(ctx context.Context, r *http.Request, p Parsed, key [32]byte, body []byte, now time.Time, nonces NonceStore) error {
	if err := Precheck(r, now); err != nil {
		return err
	}
	want := mac(key, Canonical(r, p.Signed, BodyHash(body)))
	if !hmac.Equal([]byte(want), []byte(p.Signature)) {
		return ErrSignature
	}
	return nonces.Use(ctx, p.ID, r.Header.Get(NonceHeader))
}

// Precheck checks what needs no key: the date within MaxSkew of now and the nonce's form. The
// server runs it before looking the key up, so the answer to a stale request does not depend on
// whether its key exists.
func Precheck(r *http.Request, now time.Time) error {
	date, err := time.Parse(time.RFC3339, r.Header.Get(DateHeader))
	if err != nil {
		return fmt.Errorf("%w: %s must be an RFC 3339 time", ErrMalformed, DateHeader)
	}
	if d := now.Sub(date); d > MaxSkew || d < -MaxSkew {
		return ErrSkew
	}
	nonce := r.Header.Get(NonceHeader)
	if len(nonce) < 16 || len(nonce) > 64 || strings.Trim(nonce, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_") != "" {
		return fmt.Errorf("%w: %s must be 16-64 of A-Z, a-z, 0-9, - and _", ErrMalformed, NonceHeader)
	}
	return nil
}
