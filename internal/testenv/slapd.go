package testenv

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"
)

// SlapdBinary is Debian's OpenLDAP server, which .ci/services installs (package slapd).
const SlapdBinary = "/usr/sbin/slapd"

// LDAP directory seeded for the tests. Passwords are the user name with this suffix.
const (
	LDAPBase          = "dc=example,dc=org"
	LDAPServiceDN     = "cn=penstock,ou=services," + LDAPBase
	LDAPServicePass   = "service-Secret-7f3a"
	LDAPPasswordTail  = "-Passw0rd!x"
	ldapAdminDN       = "cn=admin," + LDAPBase
	ldapAdminPassword = "admin-Secret-9c1d"
)

// LDAPSeed is the directory every LDAP test starts from:
//   - alice: in ops (mapped to platform-admin by the tests);
//   - bob: in acme-devs;
//   - carol: in acme-leads, itself a member of acme-owners (a nested group);
//   - dave: in no group;
//   - erin: in acme-devs, with the attribute that says the directory did MFA (employeeType: mfa).
var LDAPSeed = `dn: dc=example,dc=org
objectClass: dcObject
objectClass: organization
o: Example
dc: example

dn: ou=people,dc=example,dc=org
objectClass: organizationalUnit
ou: people

dn: ou=groups,dc=example,dc=org
objectClass: organizationalUnit
ou: groups

dn: ou=services,dc=example,dc=org
objectClass: organizationalUnit
ou: services

dn: cn=penstock,ou=services,dc=example,dc=org
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: penstock
userPassword: ` + LDAPServicePass + `
` + ldapPeople + `
dn: cn=ops,ou=groups,dc=example,dc=org
objectClass: groupOfNames
cn: ops
member: uid=alice,ou=people,dc=example,dc=org

dn: cn=acme-devs,ou=groups,dc=example,dc=org
objectClass: groupOfNames
cn: acme-devs
member: uid=bob,ou=people,dc=example,dc=org
member: uid=erin,ou=people,dc=example,dc=org

dn: cn=acme-leads,ou=groups,dc=example,dc=org
objectClass: groupOfNames
cn: acme-leads
member: uid=carol,ou=people,dc=example,dc=org

dn: cn=acme-owners,ou=groups,dc=example,dc=org
objectClass: groupOfNames
cn: acme-owners
member: cn=acme-leads,ou=groups,dc=example,dc=org
`

var ldapPeople = func() string {
	var b strings.Builder
	for _, u := range []string{"alice", "bob", "carol", "dave", "erin"} {
		fmt.Fprintf(&b, "\ndn: uid=%s,ou=people,dc=example,dc=org\nobjectClass: inetOrgPerson\nuid: %s\ncn: %s\nsn: %s\nmail: %s@example.org\nuserPassword: %s\n",
			u, u, u, u, u, u+LDAPPasswordTail)
		if u == "erin" {
			b.WriteString("employeeType: mfa\n")
		}
	}
	return b.String()
}()

// Slapd is an OpenLDAP server of a test's own, seeded with LDAPSeed: plain LDAP (for StartTLS)
// and LDAPS on loopback ports, a certificate for localhost (CAFile trusts it). Anonymous
// clients can read nothing; the service account reads everything but passwords.
type Slapd struct {
	LDAPURL, LDAPSURL string
	CAFile            string
	dir               string
	log               *LogBuffer
	mu                sync.Mutex
	cmd               *exec.Cmd
	exited            chan error
}

// StartSlapd starts slapd, stopped when the test ends. Without the binary the test skips,
// saying how to install it; under CI it fails.
func StartSlapd(t testing.TB) *Slapd {
	t.Helper()
	if _, err := os.Stat(SlapdBinary); err != nil {
		msg := "OpenLDAP's slapd is not installed (bash .ci/services installs it, or: apt-get install slapd ldap-utils)"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	s, err := NewSlapd(t.TempDir(), FreePort(t), FreePort(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Kill)
	s.Start(t)
	return s
}

// NewSlapd seeds a directory in dir (which must be empty) for a server on the two loopback
// ports (plain LDAP, LDAPS); StartErr starts it. For programs that are not tests (benchmarks).
func NewSlapd(dir string, ldapPort, ldapsPort int) (*Slapd, error) {
	s := &Slapd{dir: dir, log: &LogBuffer{}, CAFile: filepath.Join(dir, "cert.pem")}
	if err := writeCert(s.CAFile, filepath.Join(dir, "key.pem"), "localhost"); err != nil {
		return nil, err
	}
	s.LDAPURL = "ldap://localhost:" + strconv.Itoa(ldapPort)
	s.LDAPSURL = "ldaps://localhost:" + strconv.Itoa(ldapsPort)
	if err := os.Mkdir(filepath.Join(dir, "db"), 0o700); err != nil {
		return nil, err
	}
	conf := fmt.Sprintf(`include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
pidfile %[1]s/slapd.pid
modulepath /usr/lib/ldap
moduleload back_mdb
TLSCertificateFile %[1]s/cert.pem
TLSCertificateKeyFile %[1]s/key.pem
database mdb
maxsize 67108864
suffix "%[2]s"
rootdn "%[3]s"
rootpw %[4]s
directory %[1]s/db
access to attrs=userPassword
  by self write
  by anonymous auth
  by * none
access to *
  by dn.exact="%[5]s" read
  by self read
  by * none
`, dir, LDAPBase, ldapAdminDN, ldapAdminPassword, LDAPServiceDN)
	if err := os.WriteFile(filepath.Join(dir, "slapd.conf"), []byte(conf), 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "seed.ldif"), []byte(LDAPSeed), 0o600); err != nil {
		return nil, err
	}
	if out, err := exec.Command("/usr/sbin/slapadd", "-f", filepath.Join(dir, "slapd.conf"), "-l", filepath.Join(dir, "seed.ldif")).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("slapadd: %v\n%s", err, out)
	}
	return s, nil
}

// Start starts the server (again, on the same ports and data) and waits until it answers.
func (s *Slapd) Start(t testing.TB) {
	t.Helper()
	if err := s.StartErr(); err != nil {
		t.Fatal(err)
	}
}

// StartErr is Start for programs that are not tests.
func (s *Slapd) StartErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return nil
	}
	// -d 0: stay in the foreground (so the caller owns the process), log nothing but errors.
	cmd := exec.Command(SlapdBinary, "-f", filepath.Join(s.dir, "slapd.conf"), "-h", s.LDAPURL+"/ "+s.LDAPSURL+"/", "-d", "0")
	cmd.Stdout, cmd.Stderr = s.log, s.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	s.cmd, s.exited = cmd, exited
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		if c, err := net.DialTimeout("tcp", strings.TrimPrefix(s.LDAPSURL, "ldaps://"), time.Second); err == nil {
			c.Close()
			return nil
		}
		select {
		case err := <-exited:
			s.cmd = nil
			return fmt.Errorf("slapd exited: %v\n%s", err, s.log.String())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("slapd did not listen within a minute\n%s", s.log.String())
		}
	}
}

// Stop kills the server: the directory is down until Start.
func (s *Slapd) Stop(t testing.TB) { s.Kill() }

// Kill stops the server if it runs.
func (s *Slapd) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.exited
	s.cmd = nil
}

// UnlimitedSearches lifts the server's default size limit (500 entries, paged or not) for the
// service account, as a directory's administrator does for an application that reads groups,
// and restarts the server.
func (s *Slapd) UnlimitedSearches(t testing.TB) {
	t.Helper()
	path := filepath.Join(s.dir, "slapd.conf")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	limits := fmt.Sprintf("limits dn.exact=%q size=unlimited\n", LDAPServiceDN)
	conf := strings.Replace(string(b), "access to attrs=userPassword", limits+"access to attrs=userPassword", 1)
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	s.Kill()
	s.Start(t)
}

// Admin runs f on a connection bound as the directory's administrator (to change groups).
func (s *Slapd) Admin(t testing.TB, f func(c *ldap.Conn) error) {
	t.Helper()
	c, err := ldap.DialURL(s.LDAPURL)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Bind(ldapAdminDN, ldapAdminPassword); err != nil {
		t.Fatal(err)
	}
	if err := f(c); err != nil {
		t.Fatal(err)
	}
}

// RemoveMember takes a member (a DN) out of a group (cn=NAME,ou=groups).
func (s *Slapd) RemoveMember(t testing.TB, group, member string) {
	t.Helper()
	s.Admin(t, func(c *ldap.Conn) error {
		m := ldap.NewModifyRequest("cn="+group+",ou=groups,"+LDAPBase, nil)
		m.Delete("member", []string{member})
		return c.Modify(m)
	})
}

// AddMember puts a member (a DN) into a group (cn=NAME,ou=groups).
func (s *Slapd) AddMember(t testing.TB, group, member string) {
	t.Helper()
	s.Admin(t, func(c *ldap.Conn) error {
		m := ldap.NewModifyRequest("cn="+group+",ou=groups,"+LDAPBase, nil)
		m.Add("member", []string{member})
		return c.Modify(m)
	})
}

// UserDN is the DN of a seeded user.
func UserDN(name string) string { return "uid=" + name + ",ou=people," + LDAPBase }

// GroupDN is the DN of a seeded group.
func GroupDN(name string) string { return "cn=" + name + ",ou=groups," + LDAPBase }

// AddUser adds a person (uid=NAME,ou=people) whose password is NAME+LDAPPasswordTail; with
// mfa, it carries employeeType: mfa.
func (s *Slapd) AddUser(t testing.TB, name string, mfa bool) {
	t.Helper()
	s.Admin(t, func(c *ldap.Conn) error {
		a := ldap.NewAddRequest(UserDN(name), nil)
		a.Attribute("objectClass", []string{"inetOrgPerson"})
		a.Attribute("uid", []string{name})
		a.Attribute("cn", []string{name})
		a.Attribute("sn", []string{name})
		a.Attribute("userPassword", []string{name + LDAPPasswordTail})
		if mfa {
			a.Attribute("employeeType", []string{"mfa"})
		}
		return c.Add(a)
	})
}

// AddGroup adds a group (cn=NAME,ou=groups) with members (DNs; at least one).
func (s *Slapd) AddGroup(t testing.TB, name string, members ...string) {
	t.Helper()
	s.Admin(t, func(c *ldap.Conn) error {
		a := ldap.NewAddRequest(GroupDN(name), nil)
		a.Attribute("objectClass", []string{"groupOfNames"})
		a.Attribute("cn", []string{name})
		a.Attribute("member", members)
		return c.Add(a)
	})
}

// DeleteUser removes a person from the directory.
func (s *Slapd) DeleteUser(t testing.TB, name string) {
	t.Helper()
	s.Admin(t, func(c *ldap.Conn) error { return c.Del(ldap.NewDelRequest(UserDN(name), nil)) })
}
