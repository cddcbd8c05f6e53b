// Command directory measures what LDAP directory users cost, each beside a peer in the same
// run: a login through the pooled client (search, bind as the user, bind back, group search)
// against the same login opening its own TLS connection each time, as a client without a pool
// would; and a directory user's principal (roles from groups through 100 mappings) against a
// local user's (roles granted in Penstock). It starts its own OpenLDAP server (Debian's slapd).
//
//	go run ./bench/directory
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/penstock/penstock/internal/authz"
	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/directory"
	"github.com/penstock/penstock/internal/identity"
	"github.com/penstock/penstock/internal/keyring/keyringtest"
	"github.com/penstock/penstock/internal/redact"
	"github.com/penstock/penstock/internal/testenv"
)

func main() {
	n := flag.Int("n", 400, "logins per measurement")
	conc := flag.Int("c", 8, "concurrent logins in the throughput measurement")
	flag.Parse()
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "bench-directory")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	s, err := testenv.NewSlapd(dir, freePort(), freePort())
	if err != nil {
		log.Fatal(err)
	}
	if err := s.StartErr(); err != nil {
		log.Fatal(err)
	}
	defer s.Kill()

	cfg := config.Default().Directory.LDAP
	cfg.URL, cfg.CAFile = s.LDAPSURL, s.CAFile
	cfg.BindDN, cfg.BindPassword = testenv.LDAPServiceDN, redact.NewSecret(testenv.LDAPServicePass)
	cfg.UserBase, cfg.GroupBase = "ou=people,"+testenv.LDAPBase, "ou=groups,"+testenv.LDAPBase
	l, err := directory.New(cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer l.Close()
	pw := redact.NewSecret("carol" + testenv.LDAPPasswordTail)
	login := func() {
		if e, err := l.Authenticate(ctx, "carol", pw); err != nil || len(e.Groups) != 2 {
			log.Fatalf("login: %v %v", e, err)
		}
	}
	// The peer: the same login on a new connection each time (dial, TLS, service bind, search,
	// user bind, group searches of two levels), closed after.
	naive := func() {
		c, err := ldap.DialURL(cfg.URL, ldap.DialWithTLSConfig(tlsFor(cfg)))
		if err != nil {
			log.Fatal(err)
		}
		defer c.Close()
		must(c.Bind(cfg.BindDN, cfg.BindPassword.Reveal()))
		res, err := c.Search(ldap.NewSearchRequest(cfg.UserBase, ldap.ScopeWholeSubtree, 0, 2, 0, false, "(&(objectClass=person)(uid=carol))", []string{"1.1"}, nil))
		must(err)
		must(c.Bind(res.Entries[0].DN, pw.Reveal()))
		must(c.Bind(cfg.BindDN, cfg.BindPassword.Reveal()))
		g1, err := c.Search(ldap.NewSearchRequest(cfg.GroupBase, ldap.ScopeWholeSubtree, 0, 0, 0, false, "(|(member="+ldap.EscapeFilter(res.Entries[0].DN)+"))", []string{"1.1"}, nil))
		must(err)
		_, err = c.Search(ldap.NewSearchRequest(cfg.GroupBase, ldap.ScopeWholeSubtree, 0, 0, 0, false, "(|(member="+ldap.EscapeFilter(g1.Entries[0].DN)+"))", []string{"1.1"}, nil))
		must(err)
	}
	fmt.Printf("%-46s %14s %34s %8s\n", "", "penstock", "peer", "ratio")
	a, b := each(*n, login), each(*n, naive)
	fmt.Printf("%-46s %14s %34s %7.2fx\n", "LDAPS login, one at a time (nested groups)", a.Round(time.Microsecond), b.Round(time.Microsecond).String()+" (new connection each)", float64(a)/float64(b))
	ra, rb := rate(*n, *conc, login), rate(*n, *conc, naive)
	fmt.Printf("%-46s %12.0f/s %32.0f/s %7.2fx\n", fmt.Sprintf("LDAPS logins/s, %d at once (pool of %d)", *conc, cfg.PoolSize), ra, rb, ra/rb)

	st, closeStack, err := keyringtest.OpenTemp(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer closeStack()
	icfg := identity.DefaultConfig()
	icfg.Argon2 = identity.Argon2Params{Memory: 19 << 10, Time: 1, Threads: 1}
	icfg.Directory, icfg.DirectoryValidFor = true, time.Hour
	store, err := identity.Open(ctx, st.Platform, st.Keyring, icfg, slog.New(slog.DiscardHandler))
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	if _, err := store.CreateTenant(ctx, "acme"); err != nil {
		log.Fatal(err)
	}
	scope := authz.Scope{Tenant: "acme", Environment: "production"}
	for i := range 98 {
		if _, err := store.AddDirectoryMapping(ctx, fmt.Sprintf("cn=other-%d,ou=groups,%s", i, testenv.LDAPBase), authz.Viewer, scope); err != nil {
			log.Fatal(err)
		}
	}
	for _, g := range []string{"acme-leads", "acme-owners"} {
		if _, err := store.AddDirectoryMapping(ctx, testenv.GroupDN(g), authz.Owner, authz.Scope{Tenant: "acme"}); err != nil {
			log.Fatal(err)
		}
	}
	if _, _, err := store.LoginDirectory(ctx, identity.NewLockout(), l, "carol", pw, "", "192.0.2.1"); err != nil {
		log.Fatal(err)
	}
	if _, _, err := store.CreateUser(ctx, "alice", "", redact.Secret{}); err != nil {
		log.Fatal(err)
	}
	if _, err := store.Grant(ctx, "user:alice", authz.Owner, authz.Scope{Tenant: "acme"}); err != nil {
		log.Fatal(err)
	}
	if len(store.Principal("user:carol").Bindings) != 1 || len(store.Principal("user:alice").Bindings) != 1 {
		log.Fatalf("principals: %v %v", store.Principal("user:carol"), store.Principal("user:alice"))
	}
	pd := measure(func() { _ = store.Principal("user:carol") })
	pl := measure(func() { _ = store.Principal("user:alice") })
	fmt.Printf("%-46s %14s %34s %7.2fx\n", "principal: directory user (2 groups, 100 maps)", pd, pl.String()+" (local user, granted)", float64(pd)/float64(pl))
}

func tlsFor(cfg config.LDAP) *tls.Config {
	pem, err := os.ReadFile(cfg.CAFile)
	must(err)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return &tls.Config{RootCAs: pool, ServerName: "localhost", MinVersion: tls.VersionTLS12}
}

func must(err error) {
	if err != nil {
		log.Fatal(err)
	}
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// each is the mean time of one call over n sequential calls (after a few to warm up).
func each(n int, f func()) time.Duration {
	for range 5 {
		f()
	}
	start := time.Now()
	for range n {
		f()
	}
	return time.Since(start) / time.Duration(n)
}

// rate is calls per second with c goroutines making n calls in all.
func rate(n, c int, f func()) float64 {
	var wg sync.WaitGroup
	jobs := make(chan struct{}, n)
	for range n {
		jobs <- struct{}{}
	}
	close(jobs)
	start := time.Now()
	for range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range jobs {
				f()
			}
		}()
	}
	wg.Wait()
	return float64(n) / time.Since(start).Seconds()
}

// measure is the mean time of f over about a second.
func measure(f func()) time.Duration {
	for range 1000 {
		f()
	}
	k, start := 0, time.Now()
	for time.Since(start) < time.Second {
		for range 1000 {
			f()
		}
		k += 1000
	}
	return time.Since(start) / time.Duration(k)
}
