package engine

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"
)

// OperatorSetup is a new NATS operator for Penstock's operator mode: an operator that requires
// signing keys, one signing key (Penstock's), a system account and a user of it. Deployments
// with an operator of their own give Penstock a signing key of it and a system user instead.
type OperatorSetup struct {
	OperatorJWT   string
	OperatorSeed  []byte // signs the operator JWT: keep it offline
	SigningSeed   []byte // engine.nats_operator_key_file
	SystemAccount string
	SystemJWT     string
	SystemCreds   []byte // engine.nats_system_creds_file
}

// The files Write creates, under its directory: what nats-server reads (and its resolver's
// directory, server/jwt) apart from Penstock's secrets and the operator's own key.
const (
	OperatorJWTFile     = "server/operator.jwt"
	ResolverConfFile    = "server/resolver.conf"
	OperatorSigningFile = "penstock/operator-signing.nk"
	SystemCredsFile     = "penstock/system.creds"
	OperatorSeedFile    = "offline/operator.nk"
)

// NewOperatorSetup creates the keys and JWTs of a new operator.
func NewOperatorSetup(name string) (*OperatorSetup, error) {
	opKey, err := nkeys.CreateOperator()
	if err != nil {
		return nil, err
	}
	signer, err := nkeys.CreateOperator()
	if err != nil {
		return nil, err
	}
	sysKey, err := nkeys.CreateAccount()
	if err != nil {
		return nil, err
	}
	sysSigner, err := nkeys.CreateAccount()
	if err != nil {
		return nil, err
	}
	opPub, _ := opKey.PublicKey()
	signPub, _ := signer.PublicKey()
	sysPub, _ := sysKey.PublicKey()
	sysSignPub, _ := sysSigner.PublicKey()

	oc := jwt.NewOperatorClaims(opPub)
	oc.Name = name
	oc.SigningKeys.Add(signPub)
	oc.StrictSigningKeyUsage = true // accounts and users only from signing keys
	oc.SystemAccount = sysPub
	s := &OperatorSetup{SystemAccount: sysPub}
	if s.OperatorJWT, err = oc.Encode(opKey); err != nil {
		return nil, err
	}
	sc := jwt.NewAccountClaims(sysPub)
	sc.Name = "SYS"
	sc.SigningKeys.Add(sysSignPub)
	if s.SystemJWT, err = sc.Encode(signer); err != nil {
		return nil, err
	}
	user, err := nkeys.CreateUser()
	if err != nil {
		return nil, err
	}
	upub, _ := user.PublicKey()
	uc := jwt.NewUserClaims(upub)
	uc.Name = "penstock-system"
	uc.IssuerAccount = sysPub
	token, err := uc.Encode(sysSigner)
	if err != nil {
		return nil, err
	}
	useed, _ := user.Seed()
	if s.SystemCreds, err = jwt.FormatUserConfig(token, useed); err != nil {
		return nil, err
	}
	s.OperatorSeed, _ = opKey.Seed()
	s.SigningSeed, _ = signer.Seed()
	return s, nil
}

// ServerConfig is the part of nats-server's configuration that trusts the operator: its JWT
// (at operatorJWT), the system account and a full resolver keeping account JWTs in
// resolverDir, which takes the accounts Penstock pushes.
func (s *OperatorSetup) ServerConfig(operatorJWT, resolverDir string) string {
	return fmt.Sprintf(`operator: %q
system_account: %s
resolver: { type: full, dir: %q, allow_delete: false, interval: "2m" }
resolver_preload: { %s: %q }
`, operatorJWT, s.SystemAccount, resolverDir, s.SystemAccount, s.SystemJWT)
}

// Write puts the setup's files in dir, a new directory: server/ (mode 0755, files 0644) holds
// the operator JWT and resolver.conf for nats-server to include, and will hold the resolver's
// JWTs; penstock/ (0700, files 0600) the signing key and the system user's credentials;
// offline/ (0700) the operator's own key, which signs only the operator JWT.
func (s *OperatorSetup) Write(dir string) error {
	if err := os.Mkdir(dir, 0o755); err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("%s exists: give a new directory, so that no key is overwritten", dir)
		}
		return err
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	for sub, mode := range map[string]os.FileMode{"server": 0o755, "penstock": 0o700, "offline": 0o700} {
		if err := os.Mkdir(filepath.Join(dir, sub), mode); err != nil {
			return err
		}
	}
	files := []struct {
		name string
		b    []byte
		mode os.FileMode
	}{
		{OperatorJWTFile, []byte(s.OperatorJWT), 0o644},
		{ResolverConfFile, []byte(s.ServerConfig(filepath.Join(abs, OperatorJWTFile), filepath.Join(abs, "server", "jwt"))), 0o644},
		{OperatorSigningFile, s.SigningSeed, 0o600},
		{SystemCredsFile, s.SystemCreds, 0o600},
		{OperatorSeedFile, s.OperatorSeed, 0o600},
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(dir, f.name), f.b, f.mode); err != nil {
			return err
		}
	}
	return nil
}
