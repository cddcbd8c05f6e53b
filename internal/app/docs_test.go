package app

import (
	"encoding/json"
	"html/template"
	"io"
	"regexp"
	"strings"
	"testing"
)

// /docs is a public, self-contained reference page rendered from the OpenAPI document served at
// /openapi.json: every operation of the document is on it, with the action and roles it needs,
// text is escaped, and the page loads nothing from anywhere.
func TestAPIReferencePage(t *testing.T) {
	ta := startApp(t, nil)
	c := ta.client("", nil)
	status, raw := get(t, c, ta.url("/openapi.json"))
	var doc struct {
		Paths map[string]map[string]struct {
			OperationID string   `json:"operationId"`
			Summary     string   `json:"summary"`
			Action      string   `json:"x-penstock-action"`
			Roles       []string `json:"x-penstock-roles"`
		} `json:"paths"`
	}
	if err := json.Unmarshal(raw, &doc); status != 200 || err != nil || len(doc.Paths) < 20 {
		t.Fatalf("openapi.json: %d %v (%d paths)", status, err, len(doc.Paths))
	}

	resp, err := c.Get(ta.url("/docs")) // no credentials
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	page := string(body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /docs = %d %v %.300s", resp.StatusCode, err, page)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
		t.Errorf("Content-Type %q", ct)
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.HasPrefix(csp, "default-src 'none'; style-src 'unsafe-inline'") || strings.Contains(csp, "script-src") {
		t.Errorf("Content-Security-Policy %q", csp)
	}

	ops := 0
	for path, item := range doc.Paths {
		if !strings.Contains(page, `<span class="path">`+template.HTMLEscapeString(path)+`</span>`) {
			t.Errorf("the page lacks %s", path)
		}
		for method, op := range item {
			ops++
			if op.Action == "" {
				t.Errorf("%s %s carries no x-penstock-action", method, path)
			}
			if !strings.Contains(page, `id="`+op.OperationID+`"`) || !strings.Contains(page, template.HTMLEscapeString(op.Summary)) {
				t.Errorf("the page lacks %s (%s %s) or its summary", op.OperationID, method, path)
			}
		}
	}
	t.Logf("%d paths, %d operations, %d bytes", len(doc.Paths), ops, len(page))

	put := doc.Paths["/v1/tenants/{tenant}/environments/{environment}/applications/{application}/secrets/{name}"]["put"]
	if put.Action != "secret.write" || strings.Join(put.Roles, ",") != "platform-admin,owner,admin,developer" {
		t.Errorf("secret-put in the document: action %q, roles %v", put.Action, put.Roles)
	}
	for _, want := range []string{
		"Action <code>secret.write</code>, granted by <code>platform-admin</code>, <code>owner</code>, <code>admin</code>, <code>developer</code>.",
		`<code>value</code> <span class="req">required</span></td><td>string</td><td class="rules">length 1 to 65536; write-only</td>`,
		"pattern ^[A-Za-z0-9_-]{1,128}$",
		`<span class="path">/healthz</span></h3>
<p>Liveness: the process is running and serving</p>
<p class="access">Public: no credentials needed.</p>`,
		// Text from the document is escaped, not markup.
		"psk_&lt;id&gt;_&lt;secret&gt;",
	} {
		if !strings.Contains(page, want) {
			t.Errorf("the page lacks %q", want)
		}
	}
	if strings.Contains(page, "psk_<id>") {
		t.Error("text from the document reaches the page unescaped")
	}
	// Nothing is loaded: no script, no stylesheet or font from anywhere, no link to another host.
	external := regexp.MustCompile(`(?i)(src|href|action)\s*=\s*["']?\s*(https?:)?//|<script|<link|<iframe|<img|@import|url\(`)
	if m := external.FindString(page); m != "" {
		t.Errorf("the page loads or links elsewhere: %q", m)
	}
}
