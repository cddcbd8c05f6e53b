package engine

import (
	"context"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// operator is an external NATS deployment in operator mode whose accounts Penstock manages:
// it signs an account JWT for the platform and for every tenant-environment with an operator
// signing key, pushes it to the servers' resolver through a system account user, and connects
// into each account as a user it signs itself. Tenants are isolated there as on the embedded
// engine: each tenant-environment is an account of its own, without imports or exports.
//
// An account's key pair is derived from the operator signing key and the account's name, so
// every Penstock process that holds the key reaches the same accounts with nothing stored,
// and nobody without it can sign a user into them. The users' keys live only in memory.
type operator struct {
	opts   Options
	signer nkeys.KeyPair
	root   []byte // the signing key's raw seed, from which accounts' keys are derived
	sys    *nats.Conn

	mu        sync.Mutex
	limits    map[string]AccountLimits
	pushed    map[string]*jwt.AccountClaims // account name -> what this process pushed or found current
	repairing map[string]bool
}

var _ accounts = (*operator)(nil)

// accountKeyInfo and signingKeyInfo label the derivation of accounts' keys and their user
// signing keys; changing them renames every account.
const (
	accountKeyInfo = "penstock nats account v1\x00"
	signingKeyInfo = "penstock nats account signing key v1\x00"
)

// The resolver's subjects in the system account (nats-server's full and cache resolvers).
const (
	claimsUpdateSubject = "$SYS.REQ.CLAIMS.UPDATE"
	claimsLookupSubject = "$SYS.REQ.ACCOUNT.%s.CLAIMS.LOOKUP"
)

func openOperator(ctx context.Context, o Options) (*operator, error) {
	c := o.Config
	st, err := os.Stat(c.NATSOperatorKeyFile)
	if err != nil {
		return nil, fmt.Errorf("engine.nats_operator_key_file: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		// Whoever reads it can sign users into every tenant's account.
		return nil, fmt.Errorf("engine.nats_operator_key_file %s is readable by group or others (mode %04o): run chmod 600 on it",
			c.NATSOperatorKeyFile, st.Mode().Perm())
	}
	b, err := os.ReadFile(c.NATSOperatorKeyFile)
	if err != nil {
		return nil, fmt.Errorf("engine.nats_operator_key_file: %w", err)
	}
	seed := operatorSeed(b)
	prefix, raw, err := nkeys.DecodeSeed(seed)
	if err != nil || prefix != nkeys.PrefixByteOperator {
		// The file's content is a secret: the error names the file, never what it holds.
		return nil, fmt.Errorf("engine.nats_operator_key_file %s: not an operator nkey seed (SO...)", c.NATSOperatorKeyFile)
	}
	signer, err := nkeys.FromSeed(seed)
	if err != nil {
		return nil, fmt.Errorf("engine.nats_operator_key_file %s: not an operator nkey seed (SO...)", c.NATSOperatorKeyFile)
	}
	if err := checkUserCreds(c.NATSSystemCredsFile); err != nil {
		return nil, err
	}
	op := &operator{opts: o, signer: signer, root: raw, limits: map[string]AccountLimits{}, pushed: map[string]*jwt.AccountClaims{},
		repairing: map[string]bool{}}
	op.sys, err = dialExternal(ctx, c, "penstock/system", nats.UserCredentials(c.NATSSystemCredsFile))
	if err != nil {
		return nil, fmt.Errorf("engine.nats_system_creds_file %s: %w", c.NATSSystemCredsFile, err)
	}
	if err := op.checkTrusted(ctx); err != nil {
		op.sys.Close()
		return nil, err
	}
	return op, nil
}

// checkUserCreds refuses a file that is not a user's .creds (a user JWT and its seed) before
// anything is sent: given a bare seed, the client would send the whole file as its JWT.
func checkUserCreds(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("engine.nats_system_creds_file: %w", err)
	}
	bad := fmt.Errorf("engine.nats_system_creds_file %s: not a user's .creds file (a user JWT and its nkey seed, as nsc or penstock engine operator-init write them)", path)
	token, err := jwt.ParseDecoratedJWT(b)
	if err != nil {
		return bad
	}
	if _, err := jwt.DecodeUserClaims(token); err != nil {
		return bad
	}
	if _, err := jwt.ParseDecoratedUserNKey(b); err != nil {
		return bad
	}
	return nil
}

// checkTrusted asks the servers which operators they trust and refuses a signing key none of
// them lists: the accounts it signed would be refused at every connection. Servers that do
// not answer are not waited for.
func (x *operator) checkTrusted(ctx context.Context) error {
	pub, _ := x.signer.PublicKey()
	ctx, cancel := context.WithTimeout(ctx, resolverWait)
	defer cancel()
	m, err := x.sys.RequestWithContext(ctx, "$SYS.REQ.SERVER.PING.VARZ", nil)
	if err != nil {
		return nil
	}
	var r struct {
		Data struct {
			Operators []*jwt.OperatorClaims `json:"trusted_operators_claim"`
		} `json:"data"`
	}
	if json.Unmarshal(m.Data, &r) != nil || len(r.Data.Operators) == 0 {
		return nil
	}
	for _, oc := range r.Data.Operators {
		if oc.Subject == pub || oc.SigningKeys.Contains(pub) {
			return nil
		}
	}
	return fmt.Errorf("engine.nats_operator_key_file %s: key %s is not a signing key of the operator the servers trust (nsc edit operator --sk adds one)",
		x.opts.Config.NATSOperatorKeyFile, pub)
}

// operatorSeed finds the seed in the key file: the seed alone, or an nkey/creds-style file
// whose seed block holds it.
func operatorSeed(b []byte) []byte {
	for line := range strings.Lines(string(b)) {
		if l := strings.TrimSpace(line); strings.HasPrefix(l, "SO") {
			return []byte(l)
		}
	}
	return []byte(strings.TrimSpace(string(b)))
}

// accountKey derives the named account's key pair (its identity) or, with signingKeyInfo,
// the signing key its JWT lists and Penstock's users are signed with: an operator with strict
// signing key usage accepts no user signed by the account's identity.
func (x *operator) accountKey(name string) (nkeys.KeyPair, error) {
	return x.derive(accountKeyInfo, name)
}

func (x *operator) derive(info, name string) (nkeys.KeyPair, error) {
	raw, err := hkdf.Key(sha256.New, x.root, nil, info+name, 32)
	if err != nil {
		return nil, err
	}
	return nkeys.FromRawSeed(nkeys.PrefixByteAccount, raw)
}

// accountPublicKey is the NATS account (its public key) that holds the named Penstock account.
func (x *operator) accountPublicKey(name string) (string, error) {
	kp, err := x.accountKey(name)
	if err != nil {
		return "", err
	}
	return kp.PublicKey()
}

// setLimits records an account's limits; an account already pushed (opened before, by a
// backup say) gets its JWT again with them.
func (x *operator) setLimits(name string, l AccountLimits) error {
	x.mu.Lock()
	x.limits[name] = l
	_, pushed := x.pushed[name]
	x.mu.Unlock()
	if !pushed {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*resolverWait)
	defer cancel()
	_, _, err := x.ensure(ctx, name)
	return err
}

// claims is the account JWT Penstock wants the resolver to hold for name.
func (x *operator) claims(name, pub, signer string) *jwt.AccountClaims {
	ac := jwt.NewAccountClaims(pub)
	ac.Name = name
	ac.Tags.Add("penstock")
	ac.SigningKeys.Add(signer)
	js := &ac.Limits.JetStreamLimits
	js.DiskStorage, js.Streams, js.Consumer, js.MaxAckPending = jwt.NoLimit, jwt.NoLimit, jwt.NoLimit, jwt.NoLimit
	js.DiskMaxStreamBytes, js.MemoryMaxStreamBytes = 0, 0
	if name == PlatformAccount {
		js.MemoryStorage = jwt.NoLimit
		return ac
	}
	// Tenants' streams are on disk, as on the embedded engine (its limits: MaxMemory 0).
	js.MemoryStorage = 0
	x.mu.Lock()
	l, ok := x.limits[name]
	x.mu.Unlock()
	if ok && l.Storage > 0 {
		js.DiskStorage = l.Storage
	}
	return ac
}

// same reports whether the JWT the resolver holds is the one Penstock would sign: issued by
// its signing key, for no limited time, and granting exactly the same (limits, signing keys
// and their scopes, default permissions; no imports, exports, mappings or revocations). A JWT
// another tool changed in any way is replaced.
func (x *operator) same(have, want *jwt.AccountClaims) bool {
	signer, _ := x.signer.PublicKey()
	if have.Issuer != signer || have.Subject != want.Subject || have.Name != want.Name || have.Expires != 0 || have.NotBefore != 0 {
		return false
	}
	// want as the resolver will hold it: encoded and decoded, so that defaults compare equal.
	token, err := want.Encode(x.signer)
	if err != nil {
		return false
	}
	norm, err := jwt.DecodeAccountClaims(token)
	if err != nil {
		return false
	}
	a, err1 := json.Marshal(have.Account)
	b, err2 := json.Marshal(norm.Account)
	return err1 == nil && err2 == nil && string(a) == string(b)
}

// ensure makes the resolver hold the named account's JWT as Penstock wants it: looked up
// first, pushed when missing or different.
func (x *operator) ensure(ctx context.Context, name string) (pub string, signer nkeys.KeyPair, err error) {
	kp, err := x.accountKey(name)
	if err != nil {
		return "", nil, err
	}
	signer, err = x.derive(signingKeyInfo, name)
	if err != nil {
		return "", nil, err
	}
	pub, _ = kp.PublicKey()
	spub, _ := signer.PublicKey()
	want := x.claims(name, pub, spub)
	x.mu.Lock()
	done := x.pushed[name]
	x.mu.Unlock()
	if done != nil && x.same(done, want) {
		return pub, signer, nil
	}
	have, err := x.lookup(ctx, pub)
	if err != nil {
		return "", nil, err
	}
	if have == nil || !x.same(have, want) {
		token, err := want.Encode(x.signer)
		if err != nil {
			return "", nil, fmt.Errorf("sign account JWT: %w", err)
		}
		if err := x.push(ctx, token); err != nil {
			return "", nil, err
		}
		have, _ = jwt.DecodeAccountClaims(token)
	}
	x.mu.Lock()
	x.pushed[name] = have
	x.mu.Unlock()
	return pub, signer, nil
}

// resolverWait bounds a request to the resolver: a server that takes the request but never
// answers (a resolver that cannot store it) must not hold a start for ever.
const resolverWait = 10 * time.Second

// lookup asks the resolver for the account's JWT; nil when it has none.
func (x *operator) lookup(ctx context.Context, pub string) (*jwt.AccountClaims, error) {
	ctx, cancel := context.WithTimeout(ctx, resolverWait)
	defer cancel()
	m, err := x.sys.RequestWithContext(ctx, fmt.Sprintf(claimsLookupSubject, pub), nil)
	if err != nil {
		if errors.Is(err, nats.ErrNoResponders) {
			return nil, errors.New("look up account JWT: no resolver answers (the servers need resolver: {type: full} and the system account user of engine.nats_system_creds_file)")
		}
		if errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("look up account JWT: no answer within %s (old nats-server versions, such as 2.9, do not answer for an account they lack: Penstock is tested with the nats-server version of its go.mod)", resolverWait)
		}
		return nil, fmt.Errorf("look up account JWT: %w", err)
	}
	if len(m.Data) == 0 {
		return nil, nil
	}
	ac, err := jwt.DecodeAccountClaims(string(m.Data))
	if err != nil {
		return nil, fmt.Errorf("look up account JWT: the resolver answered with an undecodable JWT: %w", err)
	}
	return ac, nil
}

// push stores an account JWT in the resolver and checks its answer.
func (x *operator) push(ctx context.Context, token string) error {
	ctx, cancel := context.WithTimeout(ctx, resolverWait)
	defer cancel()
	m, err := x.sys.RequestWithContext(ctx, claimsUpdateSubject, []byte(token))
	if err != nil {
		if errors.Is(err, nats.ErrNoResponders) {
			return errors.New("push account JWT: no resolver answers (the servers need resolver: {type: full} and the system account user of engine.nats_system_creds_file)")
		}
		return fmt.Errorf("push account JWT: %w", err)
	}
	var r struct {
		Data *struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		} `json:"data"`
		Error *struct {
			Code        int    `json:"code"`
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(m.Data, &r); err != nil {
		return fmt.Errorf("push account JWT: unreadable answer: %w", err)
	}
	if r.Error != nil {
		return fmt.Errorf("push account JWT: the resolver refused it (%d): %s", r.Error.Code, r.Error.Description)
	}
	if r.Data == nil || r.Data.Code != 200 {
		return fmt.Errorf("push account JWT: unexpected answer %s", m.Data)
	}
	return nil
}

// hasAccount reports whether the resolver holds the named account.
func (x *operator) hasAccount(ctx context.Context, name string) (bool, error) {
	pub, err := x.accountPublicKey(name)
	if err != nil {
		return false, err
	}
	ac, err := x.lookup(ctx, pub)
	return ac != nil, err
}

func (x *operator) connect(ctx context.Context, name string) (*nats.Conn, error) {
	pub, signer, err := x.ensure(ctx, name)
	if err != nil {
		return nil, err
	}
	user, err := nkeys.CreateUser()
	if err != nil {
		return nil, err
	}
	upub, _ := user.PublicKey()
	issue := func() (string, error) {
		// No expiry: the JWT is useless without the user's key, which never leaves this
		// process, and an expiring one would cut the connection in mid-request.
		uc := jwt.NewUserClaims(upub)
		uc.Name = "penstock"
		uc.IssuerAccount = pub
		return uc.Encode(signer)
	}
	repair := func(err error) {
		if err != nil && authError(err) {
			x.repair(name)
		}
	}
	// An account JWT lost or changed on the servers (a resolver directory restored from an old
	// copy, another tool) refuses the connection: it keeps trying while the JWT is pushed again.
	return dialExternal(ctx, x.opts.Config, "penstock/"+name, nats.UserJWT(issue, user.Sign), nats.IgnoreAuthErrorAbort(),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { repair(err) }),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { repair(err) }))
}

func authError(err error) bool {
	msg := strings.ToLower(err.Error())
	return errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthExpired) || errors.Is(err, nats.ErrAccountAuthExpired) ||
		strings.Contains(msg, "authorization violation") || strings.Contains(msg, "authentication expired")
}

// repair pushes an account's JWT again after the servers refused its user, once at a time.
func (x *operator) repair(name string) {
	x.mu.Lock()
	if x.repairing[name] {
		x.mu.Unlock()
		return
	}
	x.repairing[name] = true
	delete(x.pushed, name)
	x.mu.Unlock()
	go func() {
		defer func() {
			x.mu.Lock()
			delete(x.repairing, name)
			x.mu.Unlock()
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 2*resolverWait)
		defer cancel()
		if _, _, err := x.ensure(ctx, name); err != nil {
			x.opts.Logger.Warn("account JWT not pushed again after its user was refused", "account", name, "error", err)
		}
	}()
}

func (x *operator) close() {
	if x.sys != nil {
		x.sys.Close()
	}
}
