package api

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/danielgtaylor/huma/v2"
	"github.com/danielgtaylor/huma/v2/adapters/humago"
)

type hostileInput struct {
	Q string `query:"q" pattern:"^<b>$" doc:"\"><img src=x onerror=alert(1)>"`
}

// Whatever text the OpenAPI document holds reaches the reference page as text, never as
// markup: titles, summaries, tags, parameter docs and patterns are escaped.
func TestDocsPageEscapesText(t *testing.T) {
	hapi := humago.New(http.NewServeMux(), huma.DefaultConfig(`<script>alert("title")</script>`, "1"))
	register(gate{reg: &routes{}}, hapi, Route{Action: Public}, huma.Operation{
		OperationID: "x", Method: http.MethodGet, Path: "/x",
		Summary: "<script>alert(1)</script>", Description: "a & b", Tags: []string{"</h2><script>"},
	}, nil, func(context.Context, *caller, *hostileInput) (*struct{}, error) { return nil, nil })
	b, err := renderDocs(hapi.OpenAPI())
	if err != nil {
		t.Fatal(err)
	}
	page := string(b)
	for _, bad := range []string{"<script", "<img", "</h2><"} {
		if strings.Contains(page, bad) {
			i := strings.Index(page, bad)
			t.Errorf("the page holds %q unescaped: %s", bad, page[max(0, i-80):i+40])
		}
	}
	for _, want := range []string{
		"&lt;script&gt;alert(1)&lt;/script&gt;",
		"a &amp; b",
		"&#34;&gt;&lt;img src=x onerror=alert(1)&gt;",
		"pattern ^&lt;b&gt;$",
		`id="tag-&lt;/h2&gt;&lt;script&gt;"`,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("the page lacks %q", want)
		}
	}
}
