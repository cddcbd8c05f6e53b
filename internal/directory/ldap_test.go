package directory

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/redact"
	"github.com/penstock/penstock/internal/testenv"
)

func testConfig(s *testenv.Slapd) config.LDAP {
	c := config.Default().Directory.LDAP
	c.URL, c.CAFile = s.LDAPSURL, s.CAFile
	c.BindDN, c.BindPassword = testenv.LDAPServiceDN, redact.NewSecret(testenv.LDAPServicePass)
	c.UserBase, c.GroupBase = "ou=people,"+testenv.LDAPBase, "ou=groups,"+testenv.LDAPBase
	c.MFAAttribute = "employeeType=mfa"
	return c
}

func open(t *testing.T, c config.LDAP) *LDAP {
	t.Helper()
	l, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	return l
}

func pw(user string) redact.Secret { return redact.NewSecret(user + testenv.LDAPPasswordTail) }

func TestAuthenticateOverLDAPSAndStartTLS(t *testing.T) {
	s := testenv.StartSlapd(t)
	ctx := context.Background()
	starttls := testConfig(s)
	starttls.URL, starttls.StartTLS = s.LDAPURL, true
	for name, c := range map[string]config.LDAP{"ldaps": testConfig(s), "starttls": starttls} {
		t.Run(name, func(t *testing.T) {
			l := open(t, c)
			e, err := l.Authenticate(ctx, "alice", pw("alice"))
			if err != nil {
				t.Fatal(err)
			}
			if e.DN != testenv.UserDN("alice") || len(e.Groups) != 1 || NormalizeDN(e.Groups[0]) != NormalizeDN(testenv.GroupDN("ops")) || e.MFA {
				t.Fatalf("alice: %+v", e)
			}
			e, err = l.Authenticate(ctx, "erin", pw("erin"))
			if err != nil || !e.MFA {
				t.Fatalf("erin carries the MFA attribute: %+v, %v", e, err)
			}
		})
	}
}

func TestNestedGroups(t *testing.T) {
	s := testenv.StartSlapd(t)
	c := testConfig(s)
	e, err := open(t, c).Lookup(context.Background(), "carol")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{NormalizeDN(testenv.GroupDN("acme-leads")), NormalizeDN(testenv.GroupDN("acme-owners"))}
	if got := normalized(e.Groups); strings.Join(got, ";") != strings.Join(want, ";") {
		t.Fatalf("carol's groups: %v, want %v", got, want)
	}
	c.NestedGroups = false
	e, err = open(t, c).Lookup(context.Background(), "carol")
	if err != nil || len(e.Groups) != 1 || NormalizeDN(e.Groups[0]) != want[0] {
		t.Fatalf("direct groups only: %v, %v", e.Groups, err)
	}
	// A cycle (a group in a group that contains it) ends.
	s.AddMember(t, "acme-leads", testenv.GroupDN("acme-owners"))
	e, err = open(t, testConfig(s)).Lookup(context.Background(), "carol")
	if err != nil || len(e.Groups) != 2 {
		t.Fatalf("with a cycle: %v, %v", e.Groups, err)
	}
}

func normalized(dns []string) []string {
	var out []string
	for _, d := range dns {
		out = append(out, NormalizeDN(d))
	}
	return out
}

// Wrong password, unknown user, empty password and names built to widen the search filter
// all get the one answer.
func TestRefusalsAreAlike(t *testing.T) {
	s := testenv.StartSlapd(t)
	l := open(t, testConfig(s))
	ctx := context.Background()
	cases := map[string]redact.Secret{
		"alice":                  redact.NewSecret("wrong-Passw0rd!"),
		"nobody":                 pw("nobody"),
		"bob":                    redact.NewSecret(""),
		"*":                      pw("alice"),
		"al*":                    pw("alice"),
		"alice)(uid=*":           pw("alice"),
		"*)(|(uid=*":             pw("alice"),
		"alice\x00":              pw("alice"),
		"(uid=alice)":            pw("alice"),
		"alice)(|(cn=*)":         pw("alice"),
		strings.Repeat("a", 300): pw("alice"),
	}
	for name, p := range cases {
		_, err := l.Authenticate(ctx, name, p)
		if !errors.Is(err, ErrInvalidCredentials) || err.Error() != ErrInvalidCredentials.Error() {
			t.Errorf("%q: %v, want exactly %v", name, err, ErrInvalidCredentials)
		}
	}
	for _, name := range []string{"*", "al*", "alice)(uid=*", "*)(|(uid=*"} {
		if e, err := l.Lookup(ctx, name); !errors.Is(err, ErrNotFound) {
			t.Errorf("lookup %q: %+v, %v, want not found", name, e, err)
		}
	}
	// The pool is still healthy after all of that.
	if _, err := l.Authenticate(ctx, "bob", pw("bob")); err != nil {
		t.Fatal(err)
	}
}

func TestDirectoryDownAndBack(t *testing.T) {
	s := testenv.StartSlapd(t)
	l := open(t, testConfig(s))
	ctx := context.Background()
	if _, err := l.Authenticate(ctx, "bob", pw("bob")); err != nil {
		t.Fatal(err)
	}
	s.Stop(t)
	start := time.Now()
	_, err := l.Authenticate(ctx, "bob", pw("bob"))
	if !errors.Is(err, ErrUnavailable) || errors.Is(err, ErrInvalidCredentials) {
		t.Fatalf("directory down: %v, want unavailable", err)
	}
	if _, err := l.Lookup(ctx, "bob"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("lookup, directory down: %v", err)
	}
	t.Logf("down: %v after %v", err, time.Since(start))
	s.Start(t)
	if _, err := l.Authenticate(ctx, "bob", pw("bob")); err != nil {
		t.Fatalf("directory back: %v", err)
	}
}

func TestMisconfigurationIsUnavailableNotInvalid(t *testing.T) {
	s := testenv.StartSlapd(t)
	ctx := context.Background()
	bad := testConfig(s)
	bad.BindPassword = redact.NewSecret("not-the-service-password")
	_, err := open(t, bad).Authenticate(ctx, "bob", pw("bob"))
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "bind_dn") || strings.Contains(err.Error(), "not-the-service-password") {
		t.Fatalf("wrong service password: %v", err)
	}
	other := testConfig(s)
	other.CAFile = ""
	if _, err := open(t, other).Authenticate(ctx, "bob", pw("bob")); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("untrusted certificate: %v", err)
	}
	base := testConfig(s)
	base.UserBase = "ou=nowhere," + testenv.LDAPBase
	if _, err := open(t, base).Authenticate(ctx, "bob", pw("bob")); !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "user_base") {
		t.Fatalf("missing user base: %v", err)
	}
}

// Logins share a few connections: concurrent ones wait for a free one rather than opening
// more, and the connections are reused.
func TestPoolBoundsConnections(t *testing.T) {
	s := testenv.StartSlapd(t)
	c := testConfig(s)
	c.PoolSize = 3
	l := open(t, c)
	var dials atomic.Int64
	l.dial = func() (*ldap.Conn, error) { dials.Add(1); return l.connect() }
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			user := []string{"alice", "bob", "carol", "dave"}[i%4]
			if _, err := l.Authenticate(context.Background(), user, pw(user)); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := dials.Load(); n > 3 {
		t.Fatalf("%d connections opened for a pool of 3", n)
	}
}

// Two entries that answer to one name: nobody logs in as either, and a lookup says so.
func TestAmbiguousNames(t *testing.T) {
	s := testenv.StartSlapd(t)
	s.Admin(t, func(c *ldap.Conn) error {
		a := ldap.NewAddRequest("cn=bob-twin,ou=services,"+testenv.LDAPBase, nil)
		a.Attribute("objectClass", []string{"inetOrgPerson"})
		a.Attribute("uid", []string{"bob"})
		a.Attribute("cn", []string{"bob-twin"})
		a.Attribute("sn", []string{"twin"})
		a.Attribute("userPassword", []string{"bob" + testenv.LDAPPasswordTail})
		return c.Add(a)
	})
	c := testConfig(s)
	c.UserBase = testenv.LDAPBase // wide enough to see both
	l := open(t, c)
	if _, err := l.Authenticate(context.Background(), "bob", pw("bob")); !errors.Is(err, ErrAmbiguous) {
		t.Fatalf("login: %v, want ambiguous", err)
	}
	if _, err := l.Lookup(context.Background(), "bob"); !errors.Is(err, ErrAmbiguous) {
		t.Fatalf("lookup: %v, want ambiguous", err)
	}
	if _, err := l.Authenticate(context.Background(), "carol", pw("carol")); err != nil {
		t.Fatalf("another user: %v", err)
	}
}
