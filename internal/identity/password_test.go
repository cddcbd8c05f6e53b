package identity

import (
	"errors"
	"strings"
	"testing"

	"github.com/penstock/penstock/internal/redact"
)

var cheap = Argon2Params{Memory: 1 << 10, Time: 1, Threads: 1} // tests only: fast

func TestPasswordHashRoundTripAndUpgrade(t *testing.T) {
	pw := redact.NewSecret("Tr1cky-Horse-Battery")
	h, err := HashPassword(pw, cheap)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(h, "$argon2id$v=19$m=1024,t=1,p=1$") || strings.Contains(h, pw.Reveal()) {
		t.Fatalf("hash %q", h)
	}
	h2, _ := HashPassword(pw, cheap)
	if h == h2 {
		t.Fatal("two hashes of one password are equal: no per-user salt")
	}
	ok, rehash, err := VerifyPassword(pw, h, cheap)
	if !ok || rehash || err != nil {
		t.Fatalf("verify = %v %v %v", ok, rehash, err)
	}
	if ok, _, _ := VerifyPassword(redact.NewSecret("Tr1cky-Horse-Batterx"), h, cheap); ok {
		t.Fatal("wrong password accepted")
	}
	stronger := Argon2Params{Memory: 2 << 10, Time: 2, Threads: 1}
	if ok, rehash, _ := VerifyPassword(pw, h, stronger); !ok || !rehash {
		t.Fatalf("parameters changed: ok=%v rehash=%v, want a rehash", ok, rehash)
	}
	for _, bad := range []string{"", "$argon2i$v=19$m=1,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA", "$argon2id$v=19$m=0,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
		"$argon2id$v=19$m=99999999,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA", "$argon2id$v=19$m=1024,t=1,p=1$!!$aGFzaA", "plain"} {
		if _, _, err := VerifyPassword(pw, bad, cheap); !errors.Is(err, ErrBadHash) {
			t.Errorf("VerifyPassword(%q) = %v, want ErrBadHash", bad, err)
		}
	}
}

func TestPasswordPolicy(t *testing.T) {
	cases := []struct {
		pw, rule string
	}{
		{"Sh0rt!", "too_short"},
		{"all-lower-case-9!", "no_upper"},
		{"ALL-UPPER-CASE-9!", "no_lower"},
		{"No-Digits-At-All!", "no_digit"},
		{"NoSymbols1234567", "no_symbol"},
		{"Alice-Secure-2024!", "contains_identity"},
		{"Xx-alice@example-1", "contains_identity"},
		{"Password123!", "common"},
		{"Summer2024!!", "common"},
		{"P@ssw0rd", "too_short"},
		{"Welcome@123", "too_short"},
		{"Qwertyuiop1!", "common"},
		{"Correct-Horse-Battery-9", ""},
		{"ünïcödé-Wörd-12", ""},
	}
	for _, tc := range cases {
		err := DefaultPolicy.Check(redact.NewSecret(tc.pw), "alice", "alice@example.com")
		var pe *PolicyError
		switch {
		case tc.rule == "" && err != nil:
			t.Errorf("%q refused: %v", tc.pw, err)
		case tc.rule != "" && (!errors.As(err, &pe) || pe.Rule != tc.rule):
			t.Errorf("%q: %v, want rule %s", tc.pw, err, tc.rule)
		case err != nil && strings.Contains(err.Error(), tc.pw):
			t.Errorf("error quotes the password: %v", err)
		}
	}
}

func TestGeneratedPasswordsPassThePolicy(t *testing.T) {
	seen := map[string]bool{}
	for range 200 {
		pw, err := GeneratePassword()
		if err != nil {
			t.Fatal(err)
		}
		if err := DefaultPolicy.Check(pw, "alice", "alice@example.com"); err != nil {
			t.Fatalf("generated %q: %v", pw.Reveal(), err)
		}
		if seen[pw.Reveal()] {
			t.Fatal("generated the same password twice")
		}
		seen[pw.Reveal()] = true
	}
}
