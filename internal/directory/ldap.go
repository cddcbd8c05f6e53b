// Package directory finds the users of an LDAP directory and their groups: it checks a
// password by binding as the user, and reads groups (nested ones too) with a service account.
// It knows nothing of roles: internal/identity maps groups to roles and keeps them current.
package directory

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/redact"
)

var (
	// ErrInvalidCredentials is the answer to a wrong password, an unknown user and a name
	// that cannot be a user alike: it never says which.
	ErrInvalidCredentials = errors.New("invalid user name or password")
	// ErrNotFound means the directory answered and has no such user (only Lookup says so).
	ErrNotFound = errors.New("no such user in the directory")
	// ErrAmbiguous means more than one entry answers to a name: nobody logs in as either, and
	// a re-check takes the user's roles away.
	ErrAmbiguous = errors.New("directory.ldap.user_filter matches more than one entry for one name")
	// ErrUnreadable means the directory answered but could not give this user's entry or
	// groups (a size limit on the service account, say): the user cannot log in, and a
	// re-check withholds its roles without stopping for the others.
	ErrUnreadable = errors.New("the directory could not read this user's entry or groups")
	// ErrUnavailable means the directory could not be asked: down, too slow, TLS refused, or
	// the service account refused. The wrapped error says which, for the operator's log.
	ErrUnavailable = errors.New("the directory cannot be reached")
)

// maxNesting bounds how many levels of groups in groups are followed.
const maxNesting = 10

// Entry is a directory user as Penstock sees it.
type Entry struct {
	Name   string   // the login name, as typed (lower case)
	DN     string   // the user's entry
	Groups []string // DNs of every group the user is in, nested ones included, sorted
	MFA    bool     // the entry carries the configured MFA attribute
	// ID is the entry's unique identifier (directory.ldap.id_attribute: entryUUID, or
	// objectGUID in hex), empty if the entry has none: a new entry given a departed user's
	// name has another.
	ID string
}

// LDAP is a connection pool to one directory server.
type LDAP struct {
	cfg  config.LDAP
	tls  *tls.Config
	url  *url.URL
	idle chan *ldap.Conn // connections bound as the service account
	sem  chan struct{}   // one token per connection in use
	dial func() (*ldap.Conn, error)
}

// New checks the configuration and prepares the pool; it connects on first use.
func New(cfg config.LDAP) (*LDAP, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("directory.ldap.url: not a URL such as ldaps://ldap.example.org")
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: u.Hostname()}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("directory.ldap.ca_file: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("directory.ldap.ca_file: no PEM certificate in %s", cfg.CAFile)
		}
	}
	size := max(cfg.PoolSize, 1)
	l := &LDAP{cfg: cfg, tls: tc, url: u, idle: make(chan *ldap.Conn, size), sem: make(chan struct{}, size)}
	l.dial = l.connect
	return l, nil
}

// connect opens a connection (TLS from the first byte, or upgraded by StartTLS).
func (l *LDAP) connect() (*ldap.Conn, error) {
	d := &net.Dialer{Timeout: l.cfg.Timeout}
	c, err := ldap.DialURL(l.cfg.URL, ldap.DialWithDialer(d), ldap.DialWithTLSConfig(l.tls))
	if err != nil {
		return nil, fmt.Errorf("%w: connect to %s: %v", ErrUnavailable, l.url.Host, err)
	}
	c.SetTimeout(l.cfg.Timeout)
	if l.cfg.StartTLS {
		if err := c.StartTLS(l.tls); err != nil {
			c.Close()
			return nil, fmt.Errorf("%w: StartTLS with %s: %v", ErrUnavailable, l.url.Host, err)
		}
	}
	return c, nil
}

// serviceBind binds c as the service account.
func (l *LDAP) serviceBind(c *ldap.Conn) error {
	if err := c.Bind(l.cfg.BindDN, l.cfg.BindPassword.Reveal()); err != nil {
		if ldap.IsErrorWithCode(err, ldap.LDAPResultInvalidCredentials) {
			return fmt.Errorf("%w: the service account (directory.ldap.bind_dn) was refused: check its DN and password", ErrUnavailable)
		}
		return fmt.Errorf("%w: service bind: %v", ErrUnavailable, err)
	}
	return nil
}

// get takes a connection bound as the service account: an idle one, or a new one.
func (l *LDAP) get(ctx context.Context) (*ldap.Conn, error) {
	select {
	case l.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, ctx.Err())
	}
	for {
		select {
		case c := <-l.idle:
			if c.IsClosing() {
				c.Close()
				continue
			}
			return c, nil
		default:
		}
		c, err := l.dial()
		if err == nil {
			if err = l.serviceBind(c); err != nil {
				c.Close()
			}
		}
		if err != nil {
			<-l.sem
			return nil, err
		}
		return c, nil
	}
}

// put gives a connection back: kept if it is still good and bound as the service account.
func (l *LDAP) put(c *ldap.Conn, good bool) {
	defer func() { <-l.sem }()
	if !good || c.IsClosing() {
		c.Close()
		return
	}
	select {
	case l.idle <- c:
	default:
		c.Close()
	}
}

// Close closes the idle connections.
func (l *LDAP) Close() {
	for {
		select {
		case c := <-l.idle:
			c.Close()
		default:
			return
		}
	}
}

// do runs f on a service-bound connection, once more on a new connection if the pooled one
// turns out dead (the server restarted, an idle timeout).
func (l *LDAP) do(ctx context.Context, f func(c *ldap.Conn) error) error {
	for attempt := 0; ; attempt++ {
		c, err := l.get(ctx)
		if err != nil {
			return err
		}
		err = f(c)
		network := err != nil && isNetwork(err)
		l.put(c, err == nil || !network && !errors.Is(err, errRebind))
		if network && attempt == 0 {
			continue
		}
		if network {
			return fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		return err
	}
}

var errRebind = errors.New("the connection could not be bound as the service account again")

func isNetwork(err error) bool {
	var le *ldap.Error
	if errors.As(err, &le) {
		return le.ResultCode == ldap.ErrorNetwork || le.ResultCode == ldap.LDAPResultServerDown ||
			le.ResultCode == ldap.LDAPResultUnavailable || le.ResultCode == ldap.LDAPResultBusy ||
			le.ResultCode == ldap.LDAPResultTimeLimitExceeded
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, ErrUnavailable)
}

// Authenticate checks name's password by binding as the user and returns the entry. An
// unknown user and a wrong password give ErrInvalidCredentials after the same work (a search,
// a bind, a bind back), so neither the answer nor its time says whether the user exists; the
// groups are read only once the password is right. Any other failure of the directory is
// ErrUnavailable or ErrUnreadable: never a wrong password.
func (l *LDAP) Authenticate(ctx context.Context, name string, password redact.Secret) (Entry, error) {
	var e Entry
	err := l.do(ctx, func(c *ldap.Conn) error {
		var err error
		e, err = l.find(c, name)
		dn := e.DN
		if errors.Is(err, ErrNotFound) {
			// Bind to an entry that does not exist, as a known user's bind would cost.
			dn, err = "uid=penstock-no-such-user,"+l.cfg.UserBase, nil
		}
		if err != nil {
			return err
		}
		pw := password.Reveal()
		if pw == "" || len(pw) > 1024 {
			// An empty password is an unauthenticated bind, which many servers accept.
			return ErrInvalidCredentials
		}
		berr := c.Bind(dn, pw)
		// The connection is bound as the user now: bind it back as the service account
		// before it returns to the pool.
		if rerr := l.serviceBind(c); rerr != nil {
			return fmt.Errorf("%w: %v", errRebind, rerr)
		}
		switch {
		case berr == nil && e.DN != "":
			return l.fillGroups(c, &e)
		case berr == nil, ldap.IsErrorWithCode(berr, ldap.LDAPResultInvalidCredentials),
			ldap.IsErrorWithCode(berr, ldap.LDAPResultInappropriateAuthentication),
			ldap.IsErrorWithCode(berr, ldap.LDAPResultNoSuchObject):
			return ErrInvalidCredentials
		default:
			return berr
		}
	})
	switch {
	case err == nil, errors.Is(err, ErrInvalidCredentials), errors.Is(err, ErrAmbiguous), errors.Is(err, ErrUnavailable):
	case errors.Is(err, ErrNotFound):
		err = ErrInvalidCredentials
	default:
		err = fmt.Errorf("%w: %v", ErrUnreadable, err)
	}
	return e, err
}

// Lookup finds a user and its groups with the service account, without a password: what
// roles it would get, and the periodic re-check. ErrNotFound if the directory has no such user.
func (l *LDAP) Lookup(ctx context.Context, name string) (Entry, error) {
	var e Entry
	err := l.do(ctx, func(c *ldap.Conn) error {
		var err error
		if e, err = l.find(c, name); err != nil {
			return err
		}
		return l.fillGroups(c, &e)
	})
	switch {
	case err == nil, errors.Is(err, ErrNotFound), errors.Is(err, ErrAmbiguous), errors.Is(err, ErrUnavailable):
	default:
		err = fmt.Errorf("%w: %v", ErrUnreadable, err)
	}
	return e, err
}

// find searches the user entry; the name is escaped into the filter.
func (l *LDAP) find(c *ldap.Conn, name string) (Entry, error) {
	if name == "" || len(name) > 256 {
		return Entry{}, ErrNotFound
	}
	filter := strings.ReplaceAll(l.cfg.UserFilter, "{user}", ldap.EscapeFilter(name))
	attrs := []string{"1.1", l.idAttr()}
	if a := l.mfaAttr(); a != "" {
		attrs = append(attrs, a)
	}
	if l.cfg.MemberOfAttribute != "" {
		attrs = append(attrs, l.cfg.MemberOfAttribute)
	}
	if len(attrs) > 1 {
		attrs = attrs[1:]
	}
	res, err := c.Search(ldap.NewSearchRequest(l.cfg.UserBase, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases, 2,
		int(l.cfg.Timeout/time.Second), false, filter, attrs, nil))
	if err != nil && !ldap.IsErrorWithCode(err, ldap.LDAPResultSizeLimitExceeded) {
		if ldap.IsErrorWithCode(err, ldap.LDAPResultNoSuchObject) {
			return Entry{}, fmt.Errorf("%w: directory.ldap.user_base %q does not exist", ErrUnavailable, l.cfg.UserBase)
		}
		return Entry{}, err
	}
	switch {
	case res == nil || len(res.Entries) == 0:
		return Entry{}, ErrNotFound
	case len(res.Entries) > 1:
		// Two entries answer to one name: the filter is too wide; nobody logs in as either.
		return Entry{}, ErrAmbiguous
	}
	ent := res.Entries[0]
	e := Entry{Name: name, DN: ent.DN}
	raw := ent.GetEqualFoldRawAttributeValue(l.idAttr())
	if len(raw) == 0 {
		// Without it a new entry of a departed user's name could not be told apart.
		return Entry{}, fmt.Errorf("%w: the entry has no %s (directory.ldap.id_attribute; objectGUID on Active Directory)", ErrUnreadable, l.idAttr())
	}
	if strings.EqualFold(l.idAttr(), "objectGUID") {
		e.ID = hex.EncodeToString(raw)
	} else {
		e.ID = string(raw)
	}
	if a := l.mfaAttr(); a != "" {
		want := l.mfaValue()
		e.MFA = slices.ContainsFunc(ent.GetEqualFoldAttributeValues(a), func(v string) bool { return strings.EqualFold(v, want) })
	}
	if l.cfg.MemberOfAttribute != "" {
		e.Groups = ent.GetEqualFoldAttributeValues(l.cfg.MemberOfAttribute)
	}
	return e, nil
}

func (l *LDAP) idAttr() string {
	if l.cfg.IDAttribute == "" {
		return "entryUUID"
	}
	return l.cfg.IDAttribute
}

func (l *LDAP) mfaAttr() string  { a, _, _ := strings.Cut(l.cfg.MFAAttribute, "="); return a }
func (l *LDAP) mfaValue() string { _, v, _ := strings.Cut(l.cfg.MFAAttribute, "="); return v }

// fillGroups finds e's groups: by group search from the user's DN, or from memberOf; nested
// groups level by level while NestedGroups is set.
func (l *LDAP) fillGroups(c *ldap.Conn, e *Entry) error {
	seen := map[string]string{} // normalized DN -> DN
	var frontier []string
	add := func(dns []string) {
		for _, dn := range dns {
			n := NormalizeDN(dn)
			if _, ok := seen[n]; !ok && n != NormalizeDN(e.DN) {
				seen[n] = dn
				frontier = append(frontier, dn)
			}
		}
	}
	if l.cfg.MemberOfAttribute != "" {
		add(e.Groups)
	} else {
		dns, err := l.groupsOf(c, []string{e.DN})
		if err != nil {
			return err
		}
		add(dns)
	}
	for level := 1; l.cfg.NestedGroups && level < maxNesting && len(frontier) > 0; level++ {
		members := frontier
		frontier = nil
		var dns []string
		var err error
		if l.cfg.MemberOfAttribute != "" {
			dns, err = l.memberOf(c, members)
		} else {
			dns, err = l.groupsOf(c, members)
		}
		if err != nil {
			return err
		}
		add(dns)
	}
	e.Groups = e.Groups[:0]
	for _, dn := range seen {
		e.Groups = append(e.Groups, dn)
	}
	slices.SortFunc(e.Groups, func(a, b string) int { return strings.Compare(NormalizeDN(a), NormalizeDN(b)) })
	return nil
}

// groupsOf searches the groups that have any of members as a member.
func (l *LDAP) groupsOf(c *ldap.Conn, members []string) ([]string, error) {
	var out []string
	for chunk := range slices.Chunk(members, 50) {
		var f strings.Builder
		f.WriteString("(|")
		for _, m := range chunk {
			f.WriteString(strings.ReplaceAll(l.cfg.GroupFilter, "{dn}", ldap.EscapeFilter(m)))
		}
		f.WriteString(")")
		// Paged: a user may be in more groups than the server returns at once.
		res, err := c.SearchWithPaging(ldap.NewSearchRequest(l.cfg.GroupBase, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases, 0,
			int(l.cfg.Timeout/time.Second), false, f.String(), []string{"1.1"}, nil), 500)
		if err != nil {
			if ldap.IsErrorWithCode(err, ldap.LDAPResultNoSuchObject) {
				return nil, fmt.Errorf("%w: directory.ldap.group_base %q does not exist", ErrUnavailable, l.cfg.GroupBase)
			}
			return nil, err
		}
		for _, e := range res.Entries {
			out = append(out, e.DN)
		}
	}
	return out, nil
}

// memberOf reads the memberOf attribute of each group.
func (l *LDAP) memberOf(c *ldap.Conn, groups []string) ([]string, error) {
	var out []string
	for _, g := range groups {
		res, err := c.Search(ldap.NewSearchRequest(g, ldap.ScopeBaseObject, ldap.NeverDerefAliases, 1,
			int(l.cfg.Timeout/time.Second), false, "(objectClass=*)", []string{l.cfg.MemberOfAttribute}, nil))
		if ldap.IsErrorWithCode(err, ldap.LDAPResultNoSuchObject) {
			continue
		}
		if err != nil {
			return nil, err
		}
		for _, e := range res.Entries {
			out = append(out, e.GetEqualFoldAttributeValues(l.cfg.MemberOfAttribute)...)
		}
	}
	return out, nil
}

// NormalizeDN is a DN's comparable form: attribute types and values in lower case, no spaces
// around separators. A string that does not parse as a DN is compared in lower case; a group
// of an OpenID provider (oidc:NAME) exactly.
func NormalizeDN(dn string) string {
	if strings.HasPrefix(dn, GroupPrefixOIDC) {
		return dn // an OpenID provider's group name: compared exactly
	}
	p, err := ldap.ParseDN(dn)
	if err != nil {
		return strings.ToLower(strings.TrimSpace(dn))
	}
	var rdns []string
	for _, r := range p.RDNs {
		var parts []string
		for _, a := range r.Attributes {
			parts = append(parts, strings.ToLower(a.Type)+"="+ldap.EscapeDN(strings.ToLower(a.Value)))
		}
		slices.Sort(parts)
		rdns = append(rdns, strings.Join(parts, "+"))
	}
	return strings.Join(rdns, ",")
}
