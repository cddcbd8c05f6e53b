package identity

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/penstock/penstock/internal/testenv"
)

func TestTOTP(t *testing.T) {
	e, err := EnrolTOTP("alice")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(e.URI.Reveal(), "otpauth://totp/Penstock:alice?") || !strings.Contains(e.URI.Reveal(), "issuer=Penstock") {
		t.Fatalf("uri %q", e.URI.Reveal())
	}
	now := time.Unix(1_800_000_015, 0) // 15 s into a step
	secret := e.Secret.Reveal()
	step, err := VerifyTOTP(e.Secret, testenv.TOTPCode(t, secret, now), now, 0)
	if err != nil || step != now.Unix()/30 {
		t.Fatalf("current code: step %d, %v", step, err)
	}
	// The same code again is a replay.
	if _, err := VerifyTOTP(e.Secret, testenv.TOTPCode(t, secret, now), now, step); !errors.Is(err, ErrTOTP) {
		t.Fatalf("replayed code: %v", err)
	}
	// So is the previous step's code once the current one was used.
	if _, err := VerifyTOTP(e.Secret, testenv.TOTPCode(t, secret, now.Add(-30*time.Second)), now, step); !errors.Is(err, ErrTOTP) {
		t.Fatalf("older code after a newer one: %v", err)
	}
	// ±1 step is accepted, ±2 is not.
	for off, ok := range map[time.Duration]bool{-30 * time.Second: true, 30 * time.Second: true, -60 * time.Second: false, 60 * time.Second: false} {
		_, err := VerifyTOTP(e.Secret, testenv.TOTPCode(t, secret, now.Add(off)), now, 0)
		if ok != (err == nil) {
			t.Errorf("code from %v: %v, want ok=%v", off, err, ok)
		}
	}
	for _, bad := range []string{"", "12345", "1234567", "abcdef"} {
		if _, err := VerifyTOTP(e.Secret, bad, now, 0); !errors.Is(err, ErrTOTP) {
			t.Errorf("code %q: %v", bad, err)
		}
	}

	if len(e.RecoveryCodes) != RecoveryCodes || len(e.RecoveryHash) != RecoveryCodes {
		t.Fatalf("%d recovery codes", len(e.RecoveryCodes))
	}
	left, err := UseRecoveryCode(e.RecoveryHash, strings.ToUpper(e.RecoveryCodes[3].Reveal()))
	if err != nil || len(left) != RecoveryCodes-1 {
		t.Fatalf("recovery code: %v, %d left", err, len(left))
	}
	if _, err := UseRecoveryCode(left, e.RecoveryCodes[3].Reveal()); !errors.Is(err, ErrTOTP) {
		t.Fatal("a recovery code worked twice")
	}
	for _, h := range e.RecoveryHash {
		for _, c := range e.RecoveryCodes {
			if strings.Contains(h, c.Reveal()) {
				t.Fatal("recovery code stored in the clear")
			}
		}
	}
}

func TestAPIKeys(t *testing.T) {
	key, id, digest, err := NewAPIKey()
	if err != nil {
		t.Fatal(err)
	}
	k := key.Reveal()
	if !strings.HasPrefix(k, "psk_"+id+"_") || len(k) != 4+16+1+64 {
		t.Fatalf("key shape %q", k)
	}
	gotID, gotDigest, err := ParseAPIKey(k)
	if err != nil || gotID != id || !DigestEqual(gotDigest, digest) {
		t.Fatalf("parse: %v", err)
	}
	tampered := k[:len(k)-1] + string("0123456789abcdef"[(strings.IndexByte("0123456789abcdef", k[len(k)-1])+1)%16])
	if _, d, err := ParseAPIKey(tampered); err != nil || DigestEqual(d, digest) {
		t.Fatal("a changed secret has the same digest")
	}
	for _, bad := range []string{"", "psk_", "psk_" + id, "pk_" + k[4:], k + "0", strings.ToUpper(k), strings.Replace(k, "_", "-", 2)} {
		if _, _, err := ParseAPIKey(bad); !errors.Is(err, ErrAPIKeyFormat) {
			t.Errorf("ParseAPIKey(%q) = %v", bad, err)
		}
	}
}

func TestLockoutDoublesWithoutSleeping(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	l := NewLockout()
	l.Now = func() time.Time { return now }
	keys := []string{"user:alice", "ip:192.0.2.1"}
	for i := range 4 {
		l.Fail(keys...)
		if locked, _ := l.Locked(keys...); locked {
			t.Fatalf("locked after %d failures", i+1)
		}
	}
	want := []time.Duration{time.Minute, 2 * time.Minute, 4 * time.Minute}
	for _, d := range want {
		l.Fail(keys...)
		locked, until := l.Locked("user:alice")
		if !locked || until.Sub(now) != d {
			t.Fatalf("lock %v until %v, want %v", locked, until.Sub(now), d)
		}
		now = until.Add(-time.Second)
		if locked, _ := l.Locked("user:alice"); !locked {
			t.Fatal("unlocked before the lock ended")
		}
		now = until
		if locked, _ := l.Locked("user:alice"); locked {
			t.Fatal("still locked when the lock ended")
		}
	}
	for range 20 {
		l.Fail(keys...)
	}
	if _, until := l.Locked("user:alice"); until.Sub(now) != time.Hour {
		t.Fatalf("lock capped at %v, want 1h", until.Sub(now))
	}
	// Another account from another address is not affected; a success clears the account only.
	if locked, _ := l.Locked("user:bob", "ip:192.0.2.9"); locked {
		t.Fatal("an unrelated account is locked")
	}
	l.Succeed("user:alice")
	if locked, _ := l.Locked("user:alice"); locked {
		t.Fatal("account still locked after a success")
	}
	if locked, _ := l.Locked("ip:192.0.2.1"); !locked {
		t.Fatal("a success cleared the source address too")
	}
	if l.Lockouts() < 3 {
		t.Fatalf("%d lockouts counted", l.Lockouts())
	}
}
