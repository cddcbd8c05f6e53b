package connector

import (
	"encoding/json"
	"fmt"
	"math"
	"net/url"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// SecretRef is a configuration field that holds a credential: written "${secret:NAME}", naming
// a secret of the application. A literal value is refused.
type SecretRef string

// Name is the secret's name ("" when the field is empty).
func (s SecretRef) Name() string {
	if m := secretRefPattern.FindStringSubmatch(string(s)); m != nil {
		return m[1]
	}
	return ""
}

var secretRefPattern = regexp.MustCompile(`^\$\{secret:([A-Za-z0-9_-]{1,128})\}$`)

// Decode fills the struct out points to from cfg, by its fields' `json` names, and returns what
// it refers to. It reports every problem, not just the first, as FieldErrors naming each field
// path below path: unknown keys, wrong types, missing `required:"true"` fields, values outside
// `enum:"a,b"` or above `max`, literal credentials in SecretRef fields, and URLs (`url:"true"`)
// that carry a password. Fields tagged `dial:"true"` (host:port or a URL) are reported in
// Refs.Dials.
func Decode(path string, cfg map[string]any, out any) (Refs, error) {
	d := decoder{}
	d.decodeStruct(path, cfg, reflect.ValueOf(out).Elem())
	if len(d.errs) > 0 {
		return d.refs, d.errs
	}
	return d.refs, nil
}

// FieldError is one problem with one setting, named by its field path.
type FieldError struct {
	Path string
	Msg  string
	// Key says that the key itself is wrong (it is unknown), rather than its value.
	Key bool
}

func (e FieldError) Error() string { return e.Path + ": " + e.Msg }

// FieldErrors is every problem Decode found, one per line.
type FieldErrors []FieldError

func (es FieldErrors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// decoder collects what a configuration refers to and everything wrong with it.
type decoder struct {
	refs Refs
	errs FieldErrors
}

func (d *decoder) fail(p, format string, args ...any) {
	d.errs = append(d.errs, FieldError{Path: p, Msg: fmt.Sprintf(format, args...)})
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// fieldsOf maps json names to field index paths, flattening embedded structs.
func fieldsOf(t reflect.Type, prefix []int, out map[string][]int) {
	for i := range t.NumField() {
		f := t.Field(i)
		idx := append(append([]int(nil), prefix...), i)
		if f.Anonymous && f.Type.Kind() == reflect.Struct {
			fieldsOf(f.Type, idx, out)
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "" || name == "-" || !f.IsExported() {
			continue
		}
		out[name] = idx
	}
}

func (d *decoder) decodeStruct(path string, cfg map[string]any, v reflect.Value) {
	t := v.Type()
	known := map[string][]int{}
	fieldsOf(t, nil, known)
	names := make([]string, 0, len(known))
	for n := range known {
		names = append(names, n)
	}
	sort.Strings(names)
	keys := make([]string, 0, len(cfg))
	for k := range cfg {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if _, ok := known[k]; !ok {
			d.errs = append(d.errs, FieldError{Path: join(path, k), Key: true,
				Msg: "unknown key (known: " + strings.Join(names, ", ") + ")"})
		}
	}
	for _, name := range names {
		f := t.FieldByIndex(known[name])
		p := join(path, name)
		raw, present := cfg[name]
		if !present || raw == nil {
			if f.Tag.Get("required") == "true" {
				d.fail(p, "required")
			}
			continue
		}
		fv := v.FieldByIndex(known[name])
		if d.decodeValue(p, raw, fv) {
			d.checkTags(p, f, fv)
		}
	}
}

// checkTags applies a decoded field's tags; the first broken rule is its error.
func (d *decoder) checkTags(p string, f reflect.StructField, fv reflect.Value) {
	if msg := checkMax(f, fv); msg != "" {
		d.fail(p, "%s", msg)
		return
	}
	if enum := f.Tag.Get("enum"); enum != "" && fv.Kind() == reflect.String {
		if !slices.Contains(strings.Split(enum, ","), fv.String()) {
			d.fail(p, "%q is not one of %s", fv.String(), strings.ReplaceAll(enum, ",", ", "))
			return
		}
	}
	if f.Tag.Get("url") == "true" && fv.Kind() == reflect.String {
		u, err := url.Parse(fv.String())
		if err != nil || u.Scheme == "" || u.Host == "" {
			d.fail(p, "not an absolute URL")
			return
		}
		if _, has := u.User.Password(); has {
			d.fail(p, "a password in the URL is not allowed; store it with `penstock secrets put` and refer to it as ${secret:NAME} in the password field")
			return
		}
	}
	if f.Tag.Get("dial") == "true" && fv.Kind() == reflect.String && fv.String() != "" {
		if d.refs.Dials == nil {
			d.refs.Dials = map[string]string{}
		}
		d.refs.Dials[p] = fv.String()
	}
}

var durationType = reflect.TypeFor[time.Duration]()

// checkMax applies a field's `max` tag: every duration and number of a connector's
// configuration is bounded (TestEveryNumberIsBounded), and a value beyond it is refused with
// its field path. It returns what is wrong, or "".
func checkMax(f reflect.StructField, fv reflect.Value) string {
	limit := f.Tag.Get("max")
	if limit == "" {
		return ""
	}
	if fv.Kind() == reflect.Pointer {
		if fv.IsNil() {
			return ""
		}
		fv = fv.Elem()
	}
	switch {
	case fv.Type() == durationType:
		d, err := time.ParseDuration(limit)
		if err == nil && time.Duration(fv.Int()) > d {
			return "at most " + limit
		}
	case fv.CanInt():
		n, err := strconv.ParseInt(limit, 10, 64)
		if err == nil && fv.Int() > n {
			return "at most " + limit
		}
	case fv.CanFloat():
		n, err := strconv.ParseFloat(limit, 64)
		if err == nil && fv.Float() > n {
			return "at most " + limit
		}
	}
	return ""
}

// Unbounded lists the duration and number fields of a configuration type (a pointer to
// struct, as given to Decode) that have no `max` tag, by json name.
func Unbounded(cfg any) []string {
	var out []string
	var walk func(t reflect.Type, prefix string)
	walk = func(t reflect.Type, prefix string) {
		for i := range t.NumField() {
			f := t.Field(i)
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			switch {
			case f.Anonymous && ft.Kind() == reflect.Struct:
				walk(ft, prefix)
			case ft.Kind() == reflect.Struct && ft != durationType:
				walk(ft, prefix+name+".")
			case ft == durationType, ft.Kind() >= reflect.Int && ft.Kind() <= reflect.Float64:
				if f.Tag.Get("max") == "" && name != "" && name != "-" {
					out = append(out, prefix+name)
				}
			}
		}
	}
	walk(reflect.TypeOf(cfg).Elem(), "")
	return out
}

// decodeValue sets v from raw, reporting false (and its errors) when raw does not fit; the
// items of a list or mapping are all decoded, whatever their neighbours' errors.
func (d *decoder) decodeValue(p string, raw any, v reflect.Value) bool {
	if v.Type() == durationType {
		s, ok := raw.(string)
		if !ok {
			d.fail(p, "must be a duration such as 30s or 5m")
			return false
		}
		dur, err := time.ParseDuration(s)
		if err != nil || dur < 0 {
			d.fail(p, "%q is not a duration such as 30s or 5m", s)
			return false
		}
		v.SetInt(int64(dur))
		return true
	}
	if v.Type() == reflect.TypeFor[SecretRef]() {
		s, ok := raw.(string)
		if !ok {
			d.fail(p, "must be a secret reference ${secret:NAME}")
			return false
		}
		if s != "" && !secretRefPattern.MatchString(s) {
			d.fail(p, "a literal credential is not allowed; store it with `penstock secrets put` and write ${secret:NAME}")
			return false
		}
		v.SetString(s)
		if n := SecretRef(s).Name(); n != "" {
			if d.refs.Secrets == nil {
				d.refs.Secrets = map[string]string{}
			}
			d.refs.Secrets[p] = n
		}
		return true
	}
	switch v.Kind() {
	case reflect.Pointer:
		nv := reflect.New(v.Type().Elem())
		if !d.decodeValue(p, raw, nv.Elem()) {
			return false
		}
		v.Set(nv)
	case reflect.String:
		s, ok := raw.(string)
		if !ok {
			d.fail(p, "must be a string")
			return false
		}
		if secretRefPattern.MatchString(s) {
			d.fail(p, "takes no secret reference; only credential fields do")
			return false
		}
		v.SetString(s)
	case reflect.Bool:
		b, ok := raw.(bool)
		if !ok {
			d.fail(p, "must be true or false")
			return false
		}
		v.SetBool(b)
	case reflect.Int, reflect.Int64:
		n, ok := number(raw)
		if !ok || n != math.Trunc(n) || math.Abs(n) > 1<<53 {
			d.fail(p, "must be an integer")
			return false
		}
		v.SetInt(int64(n))
	case reflect.Float64:
		n, ok := number(raw)
		if !ok {
			d.fail(p, "must be a number")
			return false
		}
		v.SetFloat(n)
	case reflect.Slice:
		items, ok := raw.([]any)
		if !ok {
			d.fail(p, "must be a list")
			return false
		}
		out := reflect.MakeSlice(v.Type(), len(items), len(items))
		all := true
		for i, it := range items {
			all = d.decodeValue(fmt.Sprintf("%s[%d]", p, i), it, out.Index(i)) && all
		}
		if !all {
			return false
		}
		v.Set(out)
	case reflect.Map:
		m, ok := raw.(map[string]any)
		if !ok {
			d.fail(p, "must be a mapping")
			return false
		}
		if v.Type().Elem().Kind() == reflect.Interface {
			v.Set(reflect.ValueOf(m))
			return true
		}
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		out := reflect.MakeMapWithSize(v.Type(), len(m))
		all := true
		for _, k := range keys {
			ev := reflect.New(v.Type().Elem()).Elem()
			if d.decodeValue(join(p, k), m[k], ev) {
				out.SetMapIndex(reflect.ValueOf(k), ev)
			} else {
				all = false
			}
		}
		if !all {
			return false
		}
		v.Set(out)
	case reflect.Struct:
		m, ok := raw.(map[string]any)
		if !ok {
			d.fail(p, "must be a mapping")
			return false
		}
		before := len(d.errs)
		d.decodeStruct(p, m, v)
		return len(d.errs) == before
	case reflect.Interface:
		if raw != nil {
			v.Set(reflect.ValueOf(raw))
		}
	default:
		d.fail(p, "unsupported field type %s", v.Type())
		return false
	}
	return true
}

func number(raw any) (float64, bool) {
	switch n := raw.(type) {
	case int:
		return float64(n), true
	case int64:
		return float64(n), true
	case uint64:
		return float64(n), true
	case float64:
		return n, true
	case json.Number:
		f, err := n.Float64()
		return f, err == nil
	}
	return 0, false
}
