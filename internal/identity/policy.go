package identity

import (
	"bufio"
	"crypto/rand"
	_ "embed"
	"fmt"
	"math/big"
	"strings"
	"unicode"

	"github.com/penstock/penstock/internal/redact"
)

// PasswordPolicy is what a password must satisfy. The zero value is not usable; see
// DefaultPolicy.
type PasswordPolicy struct {
	MinLength                                               int
	RequireUpper, RequireLower, RequireDigit, RequireSymbol bool
}

// DefaultPolicy: at least 12 characters with upper, lower, digit and symbol.
var DefaultPolicy = PasswordPolicy{MinLength: 12, RequireUpper: true, RequireLower: true, RequireDigit: true, RequireSymbol: true}

// PolicyError names the first rule a password breaks, as a stable code suffix
// (user.weak_password.<Rule>) and a message that never contains the password.
type PolicyError struct {
	Rule string // too_short, no_upper, no_lower, no_digit, no_symbol, contains_identity, common
	Msg  string
}

func (e *PolicyError) Error() string { return "password " + e.Msg }

//go:embed common-passwords.txt
var commonList string

// common holds the shipped list of common passwords, lower-cased.
var common = func() map[string]bool {
	m := map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(commonList))
	for sc.Scan() {
		if w := strings.TrimSpace(sc.Text()); w != "" && !strings.HasPrefix(w, "#") {
			m[strings.ToLower(w)] = true
		}
	}
	return m
}()

// Describe says in words what a password must be, for people about to choose one.
func (p PasswordPolicy) Describe() string {
	var classes []string
	for _, c := range []struct {
		on   bool
		name string
	}{{p.RequireUpper, "an upper-case letter"}, {p.RequireLower, "a lower-case letter"}, {p.RequireDigit, "a digit"}, {p.RequireSymbol, "a symbol"}} {
		if c.on {
			classes = append(classes, c.name)
		}
	}
	s := fmt.Sprintf("at least %d characters", p.MinLength)
	switch len(classes) {
	case 0:
	case 1:
		s += " with " + classes[0]
	default:
		s += " with " + strings.Join(classes[:len(classes)-1], ", ") + " and " + classes[len(classes)-1]
	}
	return s + "; not containing your user name or email; not a common password"
}

// Check returns nil or the *PolicyError of the first rule pw breaks. identities are the user
// name and email, which the password must not contain (case-insensitively).
func (p PasswordPolicy) Check(pw redact.Secret, identities ...string) error {
	s := pw.Reveal()
	if n := len([]rune(s)); n < p.MinLength {
		return &PolicyError{"too_short", fmt.Sprintf("must be at least %d characters", p.MinLength)}
	}
	var upper, lower, digit, symbol bool
	for _, r := range s {
		switch {
		case unicode.IsUpper(r):
			upper = true
		case unicode.IsLower(r):
			lower = true
		case unicode.IsDigit(r):
			digit = true
		default:
			symbol = true
		}
	}
	switch {
	case p.RequireUpper && !upper:
		return &PolicyError{"no_upper", "must contain an upper-case letter"}
	case p.RequireLower && !lower:
		return &PolicyError{"no_lower", "must contain a lower-case letter"}
	case p.RequireDigit && !digit:
		return &PolicyError{"no_digit", "must contain a digit"}
	case p.RequireSymbol && !symbol:
		return &PolicyError{"no_symbol", "must contain a symbol"}
	}
	low := strings.ToLower(s)
	for _, id := range identities {
		id = strings.ToLower(strings.TrimSpace(id))
		local, _, _ := strings.Cut(id, "@")
		for _, part := range []string{id, local} {
			if len(part) >= 3 && strings.Contains(low, part) {
				return &PolicyError{"contains_identity", "must not contain the user name or email"}
			}
		}
	}
	if common[low] || common[strings.TrimRightFunc(low, func(r rune) bool { return !unicode.IsLetter(r) })] {
		return &PolicyError{"common", "is in the list of common passwords"}
	}
	return nil
}

// GeneratePassword returns a random 20-character password with every character class, which
// satisfies DefaultPolicy; its owner must change it at first login.
func GeneratePassword() (redact.Secret, error) {
	const (
		upper  = "ABCDEFGHJKLMNPQRSTUVWXYZ"
		lower  = "abcdefghijkmnopqrstuvwxyz"
		digits = "23456789"
		symbol = "!#%+-=?@^_~"
	)
	classes := []string{upper, lower, digits, symbol}
	all := upper + lower + digits + symbol
	out := make([]byte, 20)
	for i := range out {
		set := all
		if i < len(classes) {
			set = classes[i]
		}
		n, err := rand.Int(rand.Reader, big.NewInt(int64(len(set))))
		if err != nil {
			return redact.Secret{}, err
		}
		out[i] = set[n.Int64()]
	}
	// Shuffle so the classes are not always at the front.
	for i := len(out) - 1; i > 0; i-- {
		n, err := rand.Int(rand.Reader, big.NewInt(int64(i+1)))
		if err != nil {
			return redact.Secret{}, err
		}
		j := n.Int64()
		out[i], out[j] = out[j], out[i]
	}
	return redact.NewSecret(string(out)), nil
}
