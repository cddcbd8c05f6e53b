package api

import (
	"bytes"
	"context"
	_ "embed"
	"fmt"
	"html/template"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/danielgtaylor/huma/v2"

	"github.com/penstock/penstock/internal/authz"
)

// The API reference at /docs is rendered here, once, from the OpenAPI document served at
// /openapi.json. huma's own docs page loads its scripts from a CDN; this one is a single
// self-contained page that loads nothing.

//go:embed docs.html
var docsSource string

var docsTemplate = template.Must(template.New("docs").Parse(docsSource))

// docsCSP lets the page use its inline styles and nothing else: no script, font, image,
// frame or request to any host.
const docsCSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// Extensions each operation carries in the OpenAPI document: the action its route declares
// and the roles that grant it.
const (
	extAction = "x-penstock-action"
	extRoles  = "x-penstock-roles"
)

// describeAccess records in the operation what its route needs.
func describeAccess(op *huma.Operation, a authz.Action) {
	if op.Extensions == nil {
		op.Extensions = map[string]any{}
	}
	op.Extensions[extAction] = string(a)
	if a == Public {
		return
	}
	var roles []string
	for _, r := range authz.Roles() {
		if slices.Contains(authz.Actions(r), a) {
			roles = append(roles, string(r))
		}
	}
	op.Extensions[extRoles] = roles
}

type docsOutput struct {
	ContentType string `header:"Content-Type"`
	CSP         string `header:"Content-Security-Policy"`
	Body        []byte
}

// registerDocs serves the reference page; call it after every other route is registered.
func registerDocs(g gate, hapi huma.API) {
	page, err := renderDocs(hapi.OpenAPI())
	if err != nil {
		panic(fmt.Sprintf("render the API reference: %v", err)) // the template and the document are the program's own
	}
	register(g, hapi, Route{Action: Public}, huma.Operation{
		OperationID: "docs", Method: http.MethodGet, Path: "/docs",
		Summary: "This API reference as an HTML page",
		Hidden:  true, // a page about the document, not part of it
	}, nil, func(context.Context, *caller, *struct{}) (*docsOutput, error) {
		return &docsOutput{ContentType: "text/html; charset=utf-8", CSP: docsCSP, Body: page}, nil
	})
}

type docsPage struct {
	Title, Version, Description string
	Schemes                     []docsScheme
	Error                       []docsField
	Tags                        []docsTag
}

type docsScheme struct{ Name, Kind, Description string }

type docsTag struct {
	Name, Anchor string
	Ops          []docsOp
}

type docsOp struct {
	Anchor, Method, Path, Summary, Description, Action string
	Roles, Auth                                        []string
	Params                                             []docsField
	BodyTypes                                          []string
	BodyRequired                                       bool
	Body                                               []docsField
	Responses                                          []docsResponse
}

type docsField struct {
	Name, In, Type, Rules, Description string
	Required                           bool
	Depth                              int
}

type docsResponse struct {
	Code, Description string
	Body              []docsField
}

func renderDocs(doc *huma.OpenAPI) ([]byte, error) {
	var reg huma.Registry
	if doc.Components != nil {
		reg = doc.Components.Schemas
	}
	d := docsBuilder{reg: reg}
	p := docsPage{}
	if doc.Info != nil {
		p.Title, p.Version, p.Description = doc.Info.Title, doc.Info.Version, doc.Info.Description
	}
	if doc.Components != nil {
		for _, name := range slices.Sorted(maps.Keys(doc.Components.SecuritySchemes)) {
			s := doc.Components.SecuritySchemes[name]
			kind := s.Type
			switch {
			case s.Type == "http":
				kind = "HTTP " + s.Scheme
			case s.Type == "apiKey":
				kind = "API key in the " + s.In + " " + s.Name
			}
			p.Schemes = append(p.Schemes, docsScheme{Name: name, Kind: kind, Description: s.Description})
		}
		if reg != nil && reg.Map()["Error"] != nil {
			p.Error = d.fields(reg.Map()["Error"], "", 0, nil)
		}
	}
	tags := map[string][]docsOp{}
	for _, path := range slices.Sorted(maps.Keys(doc.Paths)) {
		item := doc.Paths[path]
		for _, m := range []struct {
			method string
			op     *huma.Operation
		}{{"GET", item.Get}, {"POST", item.Post}, {"PUT", item.Put}, {"PATCH", item.Patch}, {"DELETE", item.Delete}, {"HEAD", item.Head}, {"OPTIONS", item.Options}} {
			if m.op == nil {
				continue
			}
			tag := "other"
			if len(m.op.Tags) > 0 {
				tag = m.op.Tags[0]
			}
			tags[tag] = append(tags[tag], d.op(m.method, path, m.op))
		}
	}
	for _, name := range slices.Sorted(maps.Keys(tags)) {
		p.Tags = append(p.Tags, docsTag{Name: name, Anchor: "tag-" + strings.Join(strings.Fields(name), "-"), Ops: tags[name]})
	}
	var b bytes.Buffer
	if err := docsTemplate.Execute(&b, p); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

type docsBuilder struct{ reg huma.Registry }

func (d docsBuilder) op(method, path string, op *huma.Operation) docsOp {
	o := docsOp{Anchor: op.OperationID, Method: method, Path: path, Summary: op.Summary, Description: op.Description}
	if o.Anchor == "" {
		o.Anchor = strings.ToLower(method) + "-" + path
	}
	if a, ok := op.Extensions[extAction].(string); ok {
		o.Action = a
	}
	if r, ok := op.Extensions[extRoles].([]string); ok {
		o.Roles = r
	}
	for _, req := range op.Security {
		o.Auth = append(o.Auth, slices.Sorted(maps.Keys(req))...)
	}
	for _, prm := range op.Parameters {
		f := docsField{Name: prm.Name, In: prm.In, Required: prm.Required, Description: prm.Description}
		if prm.Schema != nil {
			s := d.resolve(prm.Schema)
			f.Type, f.Rules = d.typeOf(s), rules(s)
			if f.Description == "" {
				f.Description = s.Description
			}
		}
		o.Params = append(o.Params, f)
	}
	if rb := op.RequestBody; rb != nil {
		o.BodyRequired = rb.Required
		o.BodyTypes = slices.Sorted(maps.Keys(rb.Content))
		if mt := rb.Content["application/json"]; mt != nil && mt.Schema != nil {
			o.Body = d.fields(mt.Schema, "", 0, nil)
		}
	}
	codes := slices.Sorted(maps.Keys(op.Responses))
	for _, code := range codes {
		r := op.Responses[code]
		resp := docsResponse{Code: code, Description: r.Description}
		if mt := r.Content["application/json"]; strings.HasPrefix(code, "2") && mt != nil && mt.Schema != nil {
			resp.Body = d.fields(mt.Schema, "", 0, nil)
		}
		o.Responses = append(o.Responses, resp)
	}
	return o
}

func (d docsBuilder) resolve(s *huma.Schema) *huma.Schema {
	if s != nil && s.Ref != "" && d.reg != nil {
		if r := d.reg.SchemaFromRef(s.Ref); r != nil {
			return r
		}
	}
	return s
}

// fields lists an object's properties, and those of the objects inside it, as rows named by
// their path (source.type, messages[].data), the way validation errors name them.
func (d docsBuilder) fields(s *huma.Schema, prefix string, depth int, seen []string) []docsField {
	if s == nil || depth > 8 {
		return nil
	}
	if s.Ref != "" {
		if slices.Contains(seen, s.Ref) {
			return nil // a recursive type: described where it started
		}
		seen = append(seen, s.Ref)
	}
	s = d.resolve(s)
	if s.Type == "array" && s.Items != nil {
		return d.fields(s.Items, prefix+"[].", depth, seen)
	}
	var out []docsField
	for _, name := range slices.Sorted(maps.Keys(s.Properties)) {
		p := s.Properties[name]
		rp := d.resolve(p)
		out = append(out, docsField{Name: prefix + name, Type: d.typeOf(rp), Rules: rules(rp), Description: rp.Description,
			Required: slices.Contains(s.Required, name), Depth: depth})
		switch {
		case rp.Type == "object" && len(rp.Properties) > 0:
			out = append(out, d.fields(p, prefix+name+".", depth+1, seen)...)
		case rp.Type == "array" && rp.Items != nil:
			if it := d.resolve(rp.Items); it.Type == "object" && len(it.Properties) > 0 {
				out = append(out, d.fields(rp.Items, prefix+name+"[].", depth+1, seen)...)
			}
		}
	}
	return out
}

func (d docsBuilder) typeOf(s *huma.Schema) string {
	if s == nil {
		return ""
	}
	t := s.Type
	switch {
	case t == "array" && s.Items != nil:
		t = "array of " + d.typeOf(d.resolve(s.Items))
	case t == "object" && s.AdditionalProperties != nil:
		if ap, ok := s.AdditionalProperties.(*huma.Schema); ok {
			t = "object of " + d.typeOf(d.resolve(ap))
		}
	case t == "" && len(s.OneOf)+len(s.AnyOf) > 0:
		var alts []string
		for _, a := range append(slices.Clone(s.OneOf), s.AnyOf...) {
			alts = append(alts, d.typeOf(d.resolve(a)))
		}
		t = "one of " + strings.Join(alts, ", ")
	case t == "":
		t = "any"
	}
	if s.Format != "" {
		t += " (" + s.Format + ")"
	}
	if s.Nullable {
		t += " or null"
	}
	return t
}

// rules says what a value must be beyond its type.
func rules(s *huma.Schema) string {
	if s == nil {
		return ""
	}
	var r []string
	if len(s.Enum) > 0 {
		var vs []string
		for _, v := range s.Enum {
			vs = append(vs, fmt.Sprint(v))
		}
		r = append(r, "one of "+strings.Join(vs, ", "))
	}
	if s.Pattern != "" {
		r = append(r, "pattern "+s.Pattern)
	}
	r = appendRange(r, "length", s.MinLength, s.MaxLength)
	r = appendRange(r, "items", s.MinItems, s.MaxItems)
	if s.Minimum != nil {
		r = append(r, "at least "+strconv.FormatFloat(*s.Minimum, 'f', -1, 64))
	}
	if s.Maximum != nil {
		r = append(r, "at most "+strconv.FormatFloat(*s.Maximum, 'f', -1, 64))
	}
	if s.Default != nil {
		r = append(r, fmt.Sprintf("default %v", s.Default))
	}
	if s.ReadOnly {
		r = append(r, "read-only")
	}
	if s.WriteOnly {
		r = append(r, "write-only")
	}
	return strings.Join(r, "; ")
}

func appendRange(r []string, what string, lo, hi *int) []string {
	switch {
	case lo != nil && hi != nil:
		return append(r, fmt.Sprintf("%s %d to %d", what, *lo, *hi))
	case lo != nil:
		return append(r, fmt.Sprintf("%s at least %d", what, *lo))
	case hi != nil:
		return append(r, fmt.Sprintf("%s at most %d", what, *hi))
	}
	return r
}
