package identity

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"

	"github.com/penstock/penstock/internal/redact"
)

// TOTP parameters: RFC 6238 defaults, which every authenticator app supports.
const (
	totpPeriod = 30
	totpDigits = otp.DigitsSix
	// RecoveryCodes is how many one-time recovery codes an enrolment issues.
	RecoveryCodes = 10
)

// Enrolment is a new TOTP secret and where to show it (QR code of URI). The secret is sealed
// before it is stored; the recovery codes are shown once and stored only hashed.
type Enrolment struct {
	Secret        redact.Secret
	URI           redact.Secret // otpauth://totp/Penstock:alice?secret=...&issuer=Penstock
	RecoveryCodes []redact.Secret
	RecoveryHash  []string // SHA-256, hex, to store
}

// EnrolTOTP creates a TOTP secret for account (the user name) and its recovery codes.
func EnrolTOTP(account string) (Enrolment, error) {
	key, err := totp.Generate(totp.GenerateOpts{
		Issuer: "Penstock", AccountName: account, Period: totpPeriod, Digits: totpDigits,
		SecretSize: 20, Algorithm: otp.AlgorithmSHA1,
	})
	if err != nil {
		return Enrolment{}, fmt.Errorf("totp: %w", err)
	}
	e := Enrolment{Secret: redact.NewSecret(key.Secret()), URI: redact.NewSecret(key.URL())}
	for range RecoveryCodes {
		raw := make([]byte, 10)
		if _, err := rand.Read(raw); err != nil {
			return Enrolment{}, err
		}
		code := strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(raw))
		code = code[:8] + "-" + code[8:]
		e.RecoveryCodes = append(e.RecoveryCodes, redact.NewSecret(code))
		e.RecoveryHash = append(e.RecoveryHash, HashToken(code))
	}
	return e, nil
}

// ErrTOTP means the code is wrong, outside the ±1 step window, or already used.
var ErrTOTP = errors.New("invalid or already used one-time code")

// VerifyTOTP checks code against secret at now, accepting the previous, current and next
// 30-second step. lastStep is the last step a code was accepted for: a code for it or an
// earlier step is refused (replay). It returns the step to store as the new lastStep.
func VerifyTOTP(secret redact.Secret, code string, now time.Time, lastStep int64) (int64, error) {
	if len(code) != int(totpDigits) {
		return 0, ErrTOTP
	}
	step := now.Unix() / totpPeriod
	for _, s := range []int64{step - 1, step, step + 1} {
		if s <= lastStep {
			continue
		}
		want, err := totp.GenerateCodeCustom(secret.Reveal(), time.Unix(s*totpPeriod, 0), totp.ValidateOpts{
			Period: totpPeriod, Digits: totpDigits, Algorithm: otp.AlgorithmSHA1,
		})
		if err != nil {
			return 0, ErrTOTP
		}
		if subtle.ConstantTimeCompare([]byte(want), []byte(code)) == 1 {
			return s, nil
		}
	}
	return 0, ErrTOTP
}

// UseRecoveryCode finds code among the stored hashes and returns the hashes without it: each
// code works once.
func UseRecoveryCode(hashes []string, code string) ([]string, error) {
	h := HashToken(strings.ToLower(strings.TrimSpace(code)))
	for i, stored := range hashes {
		if subtle.ConstantTimeCompare([]byte(stored), []byte(h)) == 1 {
			return append(append([]string{}, hashes[:i]...), hashes[i+1:]...), nil
		}
	}
	return hashes, ErrTOTP
}

// HashToken is how tokens, recovery codes and API key secrets are stored: SHA-256, hex. They
// are 80 to 256 random bits, so a fast hash is enough and verification stays cheap.
func HashToken(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}
