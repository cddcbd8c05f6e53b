package testenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/penstock/penstock/internal/engine"
)

const natsServerModule = "github.com/nats-io/nats-server/v2"

// OperatorNATS is a nats-server in operator mode that a test started as a process of its own:
// an operator with a signing key (strict: accounts must be signed by it), a system account,
// and a full resolver that takes account JWTs pushed by a system account user.
type OperatorNATS struct {
	URL string
	// OperatorKeyFile holds the operator signing key's seed; SystemCredsFile a system
	// account user's credentials. They are what engine.nats_operator_key_file and
	// engine.nats_system_creds_file name.
	OperatorKeyFile, SystemCredsFile string
	// Signer is the operator signing key, for a test that signs accounts of its own.
	Signer nkeys.KeyPair
	Dir    string
	log    *LogBuffer
	bin    string
	conf   string
	stop   func()
}

// Log is what the server printed so far.
func (o *OperatorNATS) Log() string { return o.log.String() }

// NATSServerBinary builds the nats-server of the version Penstock embeds (go.mod's) into
// ToolsDir once, and returns its path. Without a Go toolchain the test skips; under CI it fails.
func NATSServerBinary(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	// The version go.mod requires (test binaries carry no module list of their own).
	v, err := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Version}}", natsServerModule).Output()
	version := strings.TrimSpace(string(v))
	if err != nil || version == "" {
		msg := fmt.Sprintf("go list -m %s: %v (a Go toolchain is needed to build the nats-server the operator-mode tests start)", natsServerModule, err)
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	bin := filepath.Join(ToolsDir(), "nats-server-"+version)
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	if err := os.MkdirAll(ToolsDir(), 0o755); err != nil {
		t.Fatal(err)
	}
	tmp := fmt.Sprintf("%s.%d.tmp", bin, os.Getpid())
	out, err := exec.CommandContext(ctx, "go", "build", "-o", tmp, natsServerModule).CombinedOutput()
	if err != nil {
		msg := fmt.Sprintf("build nats-server %s: %v\n%s", version, err, out)
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	if err := os.Rename(tmp, bin); err != nil { // atomic: another package's test may build it too
		t.Fatal(err)
	}
	return bin
}

// StartOperatorNATS starts a nats-server in operator mode with JetStream on a random loopback
// port, its store and resolver in a temporary directory, stopped when the test ends.
func StartOperatorNATS(t testing.TB) *OperatorNATS {
	t.Helper()
	bin := NATSServerBinary(t)
	dir := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	setup, err := engine.NewOperatorSetup("penstock-test")
	must(err)
	signer, err := nkeys.FromSeed(setup.SigningSeed)
	must(err)
	o := &OperatorNATS{Signer: signer, Dir: dir, log: &LogBuffer{}, bin: bin}
	must(setup.Write(filepath.Join(dir, "operator")))
	o.OperatorKeyFile = filepath.Join(dir, "operator", engine.OperatorSigningFile)
	o.SystemCredsFile = filepath.Join(dir, "operator", engine.SystemCredsFile)

	port := FreePort(t)
	conf := fmt.Sprintf("server_name: penstock-test-operator\nlisten: 127.0.0.1:%d\njetstream: { store_dir: %q }\ninclude %q\n",
		port, filepath.Join(dir, "js"), "operator/"+engine.ResolverConfFile) // relative to the file that includes it
	o.conf = filepath.Join(dir, "nats.conf")
	must(os.WriteFile(o.conf, []byte(conf), 0o600))
	o.URL = "nats://127.0.0.1:" + strconv.Itoa(port)
	o.start(t)
	return o
}

// start runs the server on its configuration and waits until the system user gets in.
func (o *OperatorNATS) start(t testing.TB) {
	t.Helper()

	cmd := exec.Command(o.bin, "-c", o.conf)
	cmd.Stdout, cmd.Stderr = o.log, o.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // no server left behind by a killed test
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	o.stop = func() {
		_ = cmd.Process.Kill()
		<-exited
	}
	t.Cleanup(o.stop)
	deadline := time.Now().Add(time.Minute)
	for {
		nc, err := nats.Connect(o.URL, nats.UserCredentials(o.SystemCredsFile), nats.Timeout(2*time.Second))
		if err == nil {
			nc.Close()
			return
		}
		select {
		case <-exited:
			t.Fatalf("nats-server in operator mode exited: %v\n%s", waitErr, o.log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("nats-server in operator mode did not accept the system user within a minute: %v\n%s", err, o.log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Restart stops the server and starts it again on the same port and store; with dropJWTs,
// without the account JWTs its resolver held (a resolver directory lost or restored from
// before the accounts were made).
func (o *OperatorNATS) Restart(t testing.TB, dropJWTs bool) {
	t.Helper()
	o.stop()
	if dropJWTs {
		if err := os.RemoveAll(filepath.Join(o.Dir, "operator", "server", "jwt")); err != nil {
			t.Fatal(err)
		}
	}
	o.start(t)
}

// AddAccount signs a new account with the operator signing key, pushes it to the resolver
// as another tool would, and returns a .creds file of a user of it: a test's outside client.
func (o *OperatorNATS) AddAccount(t testing.TB, name string) string {
	t.Helper()
	acct, err := nkeys.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	signer, err := nkeys.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := acct.PublicKey()
	spub, _ := signer.PublicKey()
	ac := jwt.NewAccountClaims(pub)
	ac.Name = name
	ac.SigningKeys.Add(spub)
	token, err := ac.Encode(o.Signer)
	if err != nil {
		t.Fatal(err)
	}
	o.Push(t, token)
	p := filepath.Join(t.TempDir(), name+".creds")
	if err := os.WriteFile(p, userCreds(t, pub, signer, name), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// Push stores an account JWT in the resolver through the system user.
func (o *OperatorNATS) Push(t testing.TB, token string) {
	t.Helper()
	nc, err := nats.Connect(o.URL, nats.UserCredentials(o.SystemCredsFile))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	m, err := nc.Request("$SYS.REQ.CLAIMS.UPDATE", []byte(token), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(m.Data), `"code":200`) {
		t.Fatalf("push account JWT: %s", m.Data)
	}
}

// userCreds is a .creds file's content for a new user of an account, signed by its signing key.
func userCreds(t testing.TB, account string, signer nkeys.KeyPair, name string) []byte {
	t.Helper()
	user, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	upub, _ := user.PublicKey()
	uc := jwt.NewUserClaims(upub)
	uc.Name = name
	uc.IssuerAccount = account
	token, err := uc.Encode(signer)
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := user.Seed()
	creds, err := jwt.FormatUserConfig(token, seed)
	if err != nil {
		t.Fatal(err)
	}
	return creds
}
