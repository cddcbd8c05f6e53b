package httpc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/penstock/penstock/internal/connector"
	"github.com/penstock/penstock/internal/connector/conformance"
)

// feed is a JSON API of events with cursor pagination: GET /events?cursor=N answers up to 4
// events after N and the next cursor.
type feed struct {
	mu  sync.Mutex
	ids []int
}

func (f *feed) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer good-token" {
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	after, _ := strconv.Atoi(r.URL.Query().Get("cursor"))
	f.mu.Lock()
	defer f.mu.Unlock()
	items := []map[string]any{}
	cursor := after
	for _, id := range f.ids {
		if id > after && len(items) < 4 {
			items = append(items, map[string]any{"id": id})
			cursor = id
		}
	}
	json.NewEncoder(w).Encode(map[string]any{"data": map[string]any{"events": items}, "next": strconv.Itoa(cursor)})
}

func TestPollConformance(t *testing.T) {
	f := &feed{}
	e := &endpoint{}
	e.start(t)
	defer func() { e.close() }()
	e.srv.Handler = f
	restart := func(t *testing.T) {
		e.close()
		e.start(t)
		e.srv.Handler = f
	}
	res := conformance.Resources(conformance.Secrets{"good": "good-token", "bad": "nope"}, "")
	poll := func(token string) func(connector.Resources) connector.Source {
		return func(res connector.Resources) connector.Source {
			s, _, err := Plugin.Source("source", map[string]any{
				"url": "http://" + e.addr + "/events", "records": "data.events",
				"auth":       map[string]any{"type": "bearer", "token": "${secret:" + token + "}"},
				"pagination": map[string]any{"type": "cursor", "cursor_path": "next"}, "rate_limit": 1000.0,
			}, res)
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
	}
	conformance.RunSource(t, conformance.Source{
		New: poll("good"),
		Seed: func(t *testing.T, ids []int) {
			f.mu.Lock()
			f.ids = append(f.ids, ids...)
			f.mu.Unlock()
		},
		ID:      func(r connector.Record) int { return int(r["id"].(float64)) },
		Restart: restart,
		Bad:     poll("bad"),
		BadWant: "401 Unauthorized",
	}, res)
}

// TestPollLinkPagesAndOAuth2 follows Link headers with a client-credentials token fetched
// through the egress dialer, and page numbers until an empty page.
func TestPollLinkPagesAndOAuth2(t *testing.T) {
	var tokens int
	mux := http.NewServeMux()
	mux.HandleFunc("/token", func(w http.ResponseWriter, r *http.Request) {
		r.ParseForm()
		id, secret, _ := r.BasicAuth()
		if r.Form.Get("grant_type") != "client_credentials" || id != "penstock" || secret != "s3cret" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		tokens++
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"access_token": "tok-1", "token_type": "bearer", "expires_in": 3600}`)
	})
	mux.HandleFunc("/items", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer tok-1" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		page, _ := strconv.Atoi(r.URL.Query().Get("page"))
		if page < 3 {
			w.Header().Set("Link", fmt.Sprintf(`</items?page=%d>; rel="next", </items?page=0>; rel="first"`, page+1))
		}
		json.NewEncoder(w).Encode([]map[string]any{{"id": page*10 + 1}, {"id": page*10 + 2}})
	})
	mux.HandleFunc("/numbered", func(w http.ResponseWriter, r *http.Request) {
		page, _ := strconv.Atoi(r.URL.Query().Get("p"))
		items := []map[string]any{}
		if page <= 2 {
			items = append(items, map[string]any{"id": page})
		}
		json.NewEncoder(w).Encode(map[string]any{"items": items})
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	res := conformance.Resources(conformance.Secrets{"cs": "s3cret"}, "")
	readAll := func(cfg map[string]any) []int {
		t.Helper()
		s, _, err := Plugin.Source("source", cfg, res)
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		if err := s.Connect(ctx); err != nil {
			t.Fatal(err)
		}
		defer s.Close(ctx)
		var ids []int
		for {
			recs, ack, err := s.Read(ctx, 100)
			if errors.Is(err, connector.ErrEndOfInput) {
				return ids
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range recs {
				ids = append(ids, int(r["id"].(float64)))
			}
			ack(ctx, nil)
		}
	}
	got := readAll(map[string]any{"url": srv.URL + "/items?page=1", "pagination": map[string]any{"type": "link"}, "rate_limit": 1000.0,
		"auth": map[string]any{"type": "oauth2", "token_url": srv.URL + "/token", "client_id": "penstock", "client_secret": "${secret:cs}"}})
	if fmt.Sprint(got) != "[11 12 21 22 31 32]" || tokens != 1 {
		t.Fatalf("link pages: %v, %d tokens", got, tokens)
	}
	got = readAll(map[string]any{"url": srv.URL + "/numbered", "records": "items", "rate_limit": 1000.0,
		"pagination": map[string]any{"type": "page", "param": "p", "start_page": 0.0}})
	if fmt.Sprint(got) != "[0 1 2]" {
		t.Fatalf("numbered pages: %v", got)
	}
}

// TestPollCheckpointWaitsForTheCommit: reading ahead to the empty last page moves nothing;
// when the batch before it fails, the next run reads that batch again.
func TestPollCheckpointWaitsForTheCommit(t *testing.T) {
	f := &feed{ids: []int{1, 2, 3}}
	srv := httptest.NewServer(f)
	defer srv.Close()
	res := conformance.Resources(conformance.Secrets{"good": "good-token"}, "")
	cfg := map[string]any{"url": srv.URL + "/events", "records": "data.events", "rate_limit": 1000.0,
		"auth":       map[string]any{"type": "bearer", "token": "${secret:good}"},
		"pagination": map[string]any{"type": "cursor", "cursor_path": "next"}}
	ctx := context.Background()
	read := func() (ids []int, acks []connector.AckFunc) {
		s, _, _ := Plugin.Source("source", cfg, res)
		if err := s.Connect(ctx); err != nil {
			t.Fatal(err)
		}
		for {
			recs, ack, err := s.Read(ctx, 100)
			if err != nil {
				return
			}
			for _, r := range recs {
				ids = append(ids, int(r["id"].(float64)))
			}
			acks = append(acks, ack)
		}
	}
	ids, acks := read()
	if fmt.Sprint(ids) != "[1 2 3]" || len(acks) != 2 {
		t.Fatalf("first run: %v, %d batches", ids, len(acks))
	}
	for _, a := range acks {
		a(ctx, errors.New("the sink failed"))
	}
	if ids, _ := read(); fmt.Sprint(ids) != "[1 2 3]" {
		t.Fatalf("after a failed commit: %v", ids)
	}
}

// TestNoCredentialsToOtherHosts: a Link next page on another host is refused, and the sink
// follows no redirect (a 302 would replay the POST as a GET elsewhere).
func TestNoCredentialsToOtherHosts(t *testing.T) {
	var leaked int
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Api-Key") != "" || r.Header.Get("Authorization") != "" {
			leaked++
		}
		fmt.Fprint(w, "[]")
	}))
	defer other.Close()
	first := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == "POST" {
			http.Redirect(w, r, other.URL+"/in", http.StatusFound)
			return
		}
		w.Header().Set("Link", "<"+other.URL+"/page2>; rel=\"next\"")
		fmt.Fprint(w, `[{"id": 1}]`)
	}))
	defer first.Close()
	res := conformance.Resources(conformance.Secrets{"k": "TOPSECRET"}, "")
	ctx := context.Background()
	src, _, err := Plugin.Source("source", map[string]any{"url": first.URL, "rate_limit": 1000.0, "pagination": map[string]any{"type": "link"},
		"auth": map[string]any{"type": "header", "header": "X-Api-Key", "token": "${secret:k}"}}, res)
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	if _, _, err := src.Read(ctx, 10); err == nil || !strings.Contains(err.Error(), "configured host only") {
		t.Fatalf("next page on another host: %v", err)
	}
	sink, _, _ := Plugin.Sink("sink", map[string]any{"url": first.URL + "/in", "auth": map[string]any{"type": "header", "header": "X-Api-Key", "token": "${secret:k}"}}, res)
	sink.Connect(ctx)
	err = sink.Write(ctx, []connector.Record{{"id": 1}})
	var bad connector.RecordErrors
	if !errors.As(err, &bad) || !strings.Contains(err.Error(), "follows no redirects") {
		t.Fatalf("redirected POST: %v", err)
	}
	if leaked != 0 {
		t.Fatalf("credentials reached another host %d times", leaked)
	}
}
