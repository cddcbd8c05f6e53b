package httpc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
	"golang.org/x/time/rate"

	"github.com/penstock/penstock/internal/connector"
)

type pagination struct {
	// Type is none, link (follow the Link header's rel="next"), cursor (a value from the
	// response, sent back as a query parameter) or page (a page number). Default none.
	Type string `json:"type" enum:"none,link,cursor,page"`
	// CursorPath is where the next cursor is in the response, as dot-separated keys
	// (cursor); an absent or empty value ends the run.
	CursorPath string `json:"cursor_path"`
	// Param is the query parameter carrying the cursor (default "cursor") or page number
	// (default "page").
	Param string `json:"param"`
	// StartPage is the first page's number (page; default 1).
	StartPage *int `json:"start_page" max:"1000000000"`
}

type pollConfig struct {
	URL     string            `json:"url" required:"true" url:"true"`
	Headers map[string]string `json:"headers"`
	Auth    pollAuth          `json:"auth"`
	// Records is where the records are in a response, as dot-separated keys; "" means the
	// response is the array itself.
	Records    string        `json:"records"`
	Pagination pagination    `json:"pagination"`
	RateLimit  float64       `json:"rate_limit" max:"1000" doc:"requests per second (default 5, at most 1000)"`
	Timeout    time.Duration `json:"timeout" max:"10m" doc:"per request, default 30s, at most 10m"`
	MaxPages   int           `json:"max_pages" max:"100000" doc:"per run (default 1000, at most 100000)"`
}

type pollAuth struct {
	auth
	TokenURL     string              `json:"token_url" doc:"oauth2: the token endpoint"`
	ClientID     string              `json:"client_id"`
	ClientSecret connector.SecretRef `json:"client_secret"`
	Scopes       []string            `json:"scopes"`
}

// Poll reads a JSON API page by page. Its checkpoint is where the next page starts: with
// cursor pagination it is kept at the end of a run, so the next run asks only for what is
// new; otherwise each run starts from the first page again.
type Poll struct {
	cfg     pollConfig
	res     connector.Resources
	hc      *http.Client
	lim     *rate.Limiter
	cred    string
	next    string // the URL of the page to read next; "" when done
	resume  string // the checkpoint once the current page is committed
	pages   int
	pending []connector.Record
}

var _ connector.Source = (*Poll)(nil)

func newPoll(path string, cfg map[string]any, res connector.Resources) (connector.Source, connector.Refs, error) {
	var c pollConfig
	refs, err := connector.Decode(path, cfg, &c)
	if err != nil {
		return nil, refs, err
	}
	if err := target(path+".url", c.URL, &refs); err != nil {
		return nil, refs, err
	}
	switch c.Pagination.Type {
	case "", "none":
		c.Pagination.Type = "none"
	case "cursor":
		if c.Pagination.CursorPath == "" {
			return nil, refs, fmt.Errorf("%s.pagination.cursor_path: required for cursor pagination", path)
		}
		if c.Pagination.Param == "" {
			c.Pagination.Param = "cursor"
		}
	case "page":
		if c.Pagination.Param == "" {
			c.Pagination.Param = "page"
		}
		if c.Pagination.StartPage == nil {
			one := 1
			c.Pagination.StartPage = &one
		}
	}
	if c.RateLimit == 0 {
		c.RateLimit = 5
	}
	if c.RateLimit < 0 || c.RateLimit > 1000 {
		return nil, refs, fmt.Errorf("%s.rate_limit: between 0 and 1000 requests per second", path)
	}
	if c.Timeout == 0 {
		c.Timeout = 30 * time.Second
	}
	if c.MaxPages == 0 {
		c.MaxPages = 1000
	}
	if c.MaxPages < 0 {
		return nil, refs, fmt.Errorf("%s.max_pages: at least 1", path)
	}
	if err := checkAuth(path, c.Auth.auth, c.Headers, c.URL); err != nil {
		return nil, refs, err
	}
	if c.Auth.Type == "oauth2" {
		if err := target(path+".auth.token_url", c.Auth.TokenURL, &refs); err != nil {
			return nil, refs, err
		}
		if c.Auth.ClientID == "" || c.Auth.ClientSecret == "" {
			return nil, refs, fmt.Errorf("%s.auth: client_id and client_secret required for oauth2", path)
		}
	}
	return &Poll{cfg: c, res: res}, refs, nil
}

// target checks that raw is an http(s) URL and adds the host:port it dials to refs, for the
// egress check at validation.
func target(path, raw string, refs *connector.Refs) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%s: http or https", path)
	}
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	refs.Merge(connector.Refs{Dials: map[string]string{path: net.JoinHostPort(u.Hostname(), port)}})
	return nil
}

type pollCursor struct {
	Next string `json:"next"`
}

// Connect builds the client (OAuth2 tokens are fetched through the egress dialer too) and
// loads the checkpoint.
func (p *Poll) Connect(ctx context.Context) error {
	if p.res.Dialer == nil {
		return fmt.Errorf("http: no egress dialer")
	}
	p.hc = p.res.Dialer.HTTPClient(p.cfg.Timeout)
	p.lim = rate.NewLimiter(rate.Limit(p.cfg.RateLimit), 1)
	if p.cfg.Auth.Type == "oauth2" {
		secret, err := p.res.Secrets.Secret(ctx, p.cfg.Auth.ClientSecret.Name())
		if err != nil {
			return fmt.Errorf("http: auth.client_secret: %w", err)
		}
		cc := clientcredentials.Config{ClientID: p.cfg.Auth.ClientID, ClientSecret: secret.Reveal(), TokenURL: p.cfg.Auth.TokenURL, Scopes: p.cfg.Auth.Scopes}
		// The token source outlives ctx (it refreshes); its requests use the egress client.
		base := context.WithValue(context.Background(), oauth2.HTTPClient, p.hc)
		p.hc = &http.Client{Transport: &oauth2.Transport{Source: cc.TokenSource(base), Base: p.hc.Transport},
			Timeout: p.cfg.Timeout, CheckRedirect: p.hc.CheckRedirect}
	} else {
		cred, err := credential(ctx, p.res, p.cfg.Auth.auth)
		if err != nil {
			return err
		}
		p.cred = cred
	}
	p.next = p.first()
	if p.res.State != nil {
		b, err := p.res.State.Load(ctx)
		if err != nil {
			return fmt.Errorf("load checkpoint: %w", err)
		}
		var cur pollCursor
		if len(b) > 0 && json.Unmarshal(b, &cur) == nil && cur.Next != "" {
			p.next = cur.Next
		}
	}
	return nil
}

func (p *Poll) first() string {
	if p.cfg.Pagination.Type != "page" {
		return p.cfg.URL
	}
	return withParam(p.cfg.URL, p.cfg.Pagination.Param, strconv.Itoa(*p.cfg.Pagination.StartPage))
}

func withParam(raw, k, v string) string {
	u, _ := url.Parse(raw)
	q := u.Query()
	q.Set(k, v)
	u.RawQuery = q.Encode()
	return u.String()
}

// Read fetches the next page; a page larger than max is handed out in parts, and the
// checkpoint moves when a page's last part is acknowledged.
func (p *Poll) Read(ctx context.Context, max int) ([]connector.Record, connector.AckFunc, error) {
	if len(p.pending) == 0 {
		if p.next == "" || p.pages >= p.cfg.MaxPages {
			// A continuous pipeline reads again after its flush interval: from the last
			// cursor, or from the first page.
			p.next, p.pages = p.resume, 0
			if p.cfg.Pagination.Type != "cursor" || p.next == "" {
				p.next = p.first()
			}
			return nil, nil, connector.ErrEndOfInput
		}
		this := p.next
		recs, next, err := p.fetch(ctx, this)
		if err != nil {
			return nil, nil, err
		}
		p.pages++
		if next == this {
			next = ""
		}
		p.pending, p.next = recs, next
		// Where the next run starts once this page is committed: a cursor feed asks again
		// from its last cursor (or this page, if the feed gave none); other paginations start
		// over.
		p.resume = next
		if p.cfg.Pagination.Type == "cursor" && next == "" {
			p.resume = this
		}
		if len(recs) == 0 {
			// An empty batch, so the checkpoint moves in order, after the pages before it
			// are committed; the next read ends the run.
			p.next = ""
			resume := p.resume
			return []connector.Record{}, func(ctx context.Context, err error) error {
				if err != nil {
					return nil
				}
				return p.save(ctx, resume)
			}, nil
		}
	}
	n := min(max, len(p.pending))
	out := p.pending[:n]
	p.pending = p.pending[n:]
	last := len(p.pending) == 0
	resume := p.resume
	return out, func(ctx context.Context, err error) error {
		if err != nil || !last {
			return nil
		}
		return p.save(ctx, resume)
	}, nil
}

func (p *Poll) save(ctx context.Context, next string) error {
	if p.res.State == nil {
		return nil
	}
	b, _ := json.Marshal(pollCursor{Next: next})
	return p.res.State.Save(ctx, b)
}

// fetch GETs one page, retrying 429 and 5xx (honouring Retry-After) up to three times.
func (p *Poll) fetch(ctx context.Context, target string) ([]connector.Record, string, error) {
	var lastErr error
	for attempt := range 4 {
		if err := p.lim.Wait(ctx); err != nil {
			return nil, "", err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
		if err != nil {
			return nil, "", err
		}
		req.Header.Set("Accept", "application/json")
		req.Header.Set("User-Agent", "penstock")
		for k, v := range p.cfg.Headers {
			req.Header.Set(k, v)
		}
		setCredential(req, p.cfg.Auth.auth, p.cred)
		resp, err := p.hc.Do(req)
		if err != nil {
			return nil, "", fmt.Errorf("http GET %s: %w", redactURL(target), err)
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
		resp.Body.Close()
		if err != nil {
			return nil, "", fmt.Errorf("http GET %s: %w", redactURL(target), err)
		}
		if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500 {
			lastErr = fmt.Errorf("http GET %s: %s", redactURL(target), resp.Status)
			wait := max(retryAfter(resp.Header.Get("Retry-After")), time.Duration(attempt+1)*200*time.Millisecond)
			select {
			case <-ctx.Done():
				return nil, "", ctx.Err()
			case <-time.After(wait):
			}
			continue
		}
		if resp.StatusCode < 200 || resp.StatusCode > 299 {
			return nil, "", fmt.Errorf("http GET %s: %s", redactURL(target), resp.Status)
		}
		return p.parse(target, resp.Header, body)
	}
	return nil, "", lastErr
}

func (p *Poll) parse(target string, h http.Header, body []byte) ([]connector.Record, string, error) {
	var doc any
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, "", fmt.Errorf("http GET %s: not JSON: %w", redactURL(target), err)
	}
	items, err := dig(doc, p.cfg.Records)
	if err != nil {
		return nil, "", fmt.Errorf("records %q: %w", p.cfg.Records, err)
	}
	list, ok := items.([]any)
	if !ok {
		return nil, "", fmt.Errorf("records %q: not an array", p.cfg.Records)
	}
	recs := make([]connector.Record, 0, len(list))
	for i, it := range list {
		m, ok := it.(map[string]any)
		if !ok {
			return nil, "", fmt.Errorf("records %q[%d]: not an object", p.cfg.Records, i)
		}
		recs = append(recs, m)
	}
	next := ""
	switch p.cfg.Pagination.Type {
	case "link":
		if n := nextLink(h.Values("Link")); n != "" {
			base, _ := url.Parse(target)
			ref, err := url.Parse(n)
			if err != nil {
				return nil, "", fmt.Errorf("http GET %s: Link next %q: %w", redactURL(target), n, err)
			}
			nu := base.ResolveReference(ref)
			first, _ := url.Parse(p.cfg.URL)
			if nu.Scheme != first.Scheme || !strings.EqualFold(nu.Host, first.Host) {
				// The credentials go with every page: only the configured host gets them.
				return nil, "", fmt.Errorf("http GET %s: the next page is on %s://%s, not %s://%s; pages are read from the configured host only",
					redactURL(target), nu.Scheme, nu.Host, first.Scheme, first.Host)
			}
			next = nu.String()
		}
	case "cursor":
		if c, err := dig(doc, p.cfg.Pagination.CursorPath); err == nil && c != nil && fmt.Sprint(c) != "" {
			next = withParam(p.cfg.URL, p.cfg.Pagination.Param, fmt.Sprint(c))
		}
	case "page":
		if len(recs) > 0 {
			u, _ := url.Parse(target)
			n, _ := strconv.Atoi(u.Query().Get(p.cfg.Pagination.Param))
			next = withParam(target, p.cfg.Pagination.Param, strconv.Itoa(n+1))
		}
	}
	return recs, next, nil
}

// dig follows dot-separated keys into a JSON document.
func dig(doc any, path string) (any, error) {
	if path == "" {
		return doc, nil
	}
	cur := doc
	for _, k := range strings.Split(path, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, errors.New("not found in the response")
		}
		if cur, ok = m[k]; !ok {
			return nil, errors.New("not found in the response")
		}
	}
	return cur, nil
}

// nextLink finds rel="next" in Link headers.
func nextLink(values []string) string {
	for _, v := range values {
		for _, part := range strings.Split(v, ",") {
			segs := strings.Split(part, ";")
			if len(segs) < 2 {
				continue
			}
			target := strings.Trim(strings.TrimSpace(segs[0]), "<>")
			for _, s := range segs[1:] {
				s = strings.ReplaceAll(strings.TrimSpace(s), " ", "")
				if s == `rel="next"` || s == "rel=next" {
					return target
				}
			}
		}
	}
	return ""
}

// Close releases idle connections.
func (p *Poll) Close(context.Context) error {
	if p.hc != nil {
		p.hc.CloseIdleConnections()
	}
	return nil
}
