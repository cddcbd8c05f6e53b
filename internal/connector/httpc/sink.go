// Package httpc is the HTTP connector: a sink that POSTs JSON. It connects only through the
// egress dialer (no proxies, every redirect checked) and reads credentials only from secrets.
package httpc

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/penstock/penstock/internal/connector"
)

// Plugin is the HTTP connector.
var Plugin = connector.Plugin{
	Name:   "http",
	Doc:    "HTTP endpoints: poll a JSON API, POST JSON",
	Source: newPoll,
	Sink:   newSink,
}

type auth struct {
	Type     string              `json:"type" enum:"none,bearer,basic,header,oauth2" doc:"default none; oauth2 (client credentials) for the poll source"`
	Token    connector.SecretRef `json:"token" doc:"bearer token or header value"`
	User     string              `json:"user"`
	Password connector.SecretRef `json:"password"`
	Header   string              `json:"header" doc:"the header for type header, such as X-API-Key"`
}

type sinkConfig struct {
	URL     string            `json:"url" required:"true" url:"true"`
	Method  string            `json:"method" enum:"POST,PUT,PATCH" doc:"default POST"`
	Headers map[string]string `json:"headers"`
	Auth    auth              `json:"auth"`
	// Batching is array (one request per batch, a JSON array) or each (one request per
	// record). Default array.
	Batching string        `json:"batching" enum:"array,each"`
	Timeout  time.Duration `json:"timeout" max:"10m" doc:"per request, default 30s, at most 10m"`
}

// Sink posts records.
type Sink struct {
	cfg  sinkConfig
	res  connector.Resources
	hc   *http.Client
	cred string // the Authorization or custom header value
}

var _ connector.Sink = (*Sink)(nil)

func newSink(path string, cfg map[string]any, res connector.Resources) (connector.Sink, connector.Refs, error) {
	var c sinkConfig
	refs, err := connector.Decode(path, cfg, &c)
	if err != nil {
		return nil, refs, err
	}
	if err := target(path+".url", c.URL, &refs); err != nil {
		return nil, refs, err
	}
	if c.Method == "" {
		c.Method = http.MethodPost
	}
	if c.Batching == "" {
		c.Batching = "array"
	}
	if c.Timeout == 0 {
		c.Timeout = 30 * time.Second
	}
	if c.Auth.Type == "oauth2" {
		return nil, refs, fmt.Errorf("%s.auth.type: oauth2 is available on the poll source only", path)
	}
	if err := checkAuth(path, c.Auth, c.Headers, c.URL); err != nil {
		return nil, refs, err
	}
	return &Sink{cfg: c, res: res}, refs, nil
}

// Connect resolves the credentials and builds the client.
func (s *Sink) Connect(ctx context.Context) error {
	if s.res.Dialer == nil {
		return fmt.Errorf("http: no egress dialer")
	}
	s.hc = s.res.Dialer.HTTPClient(s.cfg.Timeout)
	// A redirected POST would be replayed as a GET (and its 2xx taken for a commit): the
	// sink follows no redirects.
	s.hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	cred, err := credential(ctx, s.res, s.cfg.Auth)
	if err != nil {
		return err
	}
	s.cred = cred
	return nil
}

// Write posts the batch. 2xx commits it; 429 and 5xx ask for a retry (after Retry-After when
// given); other answers reject the records for good.
func (s *Sink) Write(ctx context.Context, batch []connector.Record) error {
	if s.cfg.Batching == "array" {
		if err := s.post(ctx, batch); err != nil {
			if p, ok := err.(permanent); ok {
				bad := connector.RecordErrors{}
				for i := range batch {
					bad[i] = p
				}
				return bad
			}
			return err
		}
		return nil
	}
	bad := connector.RecordErrors{}
	for i, r := range batch {
		if err := s.post(ctx, r); err != nil {
			if p, ok := err.(permanent); ok {
				bad[i] = p
				continue
			}
			// Records already posted are posted again on retry: at least once.
			return err
		}
	}
	if len(bad) > 0 {
		return bad
	}
	return nil
}

type permanent struct{ error }

func (s *Sink) post(ctx context.Context, body any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return permanent{fmt.Errorf("encode: %w", err)}
	}
	req, err := http.NewRequestWithContext(ctx, s.cfg.Method, s.cfg.URL, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "penstock")
	for k, v := range s.cfg.Headers {
		req.Header.Set(k, v)
	}
	setCredential(req, s.cfg.Auth, s.cred)
	resp, err := s.hc.Do(req)
	if err != nil {
		return fmt.Errorf("http %s %s: %w", s.cfg.Method, redactURL(s.cfg.URL), err)
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	resp.Body.Close()
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return nil
	case resp.StatusCode >= 300 && resp.StatusCode < 400:
		return permanent{fmt.Errorf("http %s %s: %s to %s: the sink follows no redirects; set url to the final address",
			s.cfg.Method, redactURL(s.cfg.URL), resp.Status, redactURL(resp.Header.Get("Location")))}
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return &connector.RetryError{Err: fmt.Errorf("http %s %s: %s", s.cfg.Method, redactURL(s.cfg.URL), resp.Status),
			After: retryAfter(resp.Header.Get("Retry-After"))}
	}
	return permanent{fmt.Errorf("http %s %s: %s", s.cfg.Method, redactURL(s.cfg.URL), resp.Status)}
}

// redactURL drops the query, which may carry tokens.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(url)"
	}
	u.RawQuery, u.User = "", nil
	return u.String()
}

func retryAfter(h string) time.Duration {
	if h == "" {
		return 0
	}
	if n, err := strconv.Atoi(h); err == nil && n >= 0 {
		return min(time.Duration(n)*time.Second, 10*time.Minute)
	}
	if t, err := http.ParseTime(h); err == nil {
		return min(max(time.Until(t), 0), 10*time.Minute)
	}
	return 0
}

// Close releases idle connections.
func (s *Sink) Close(context.Context) error {
	if s.hc != nil {
		s.hc.CloseIdleConnections()
	}
	return nil
}
