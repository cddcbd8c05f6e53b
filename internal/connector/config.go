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
// it refers to. Every error names its field path below path: unknown keys, wrong types,
// missing `required:"true"` fields, values outside `enum:"a,b"`, literal credentials in
// SecretRef fields, and URLs (`url:"true"`) that carry a password. Fields tagged `dial:"true"`
// (host:port or a URL) are reported in Refs.Dials.
func Decode(path string, cfg map[string]any, out any) (Refs, error) {
	var refs Refs
	err := decodeStruct(path, cfg, reflect.ValueOf(out).Elem(), &refs)
	return refs, err
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

func decodeStruct(path string, cfg map[string]any, v reflect.Value, refs *Refs) error {
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
			return fmt.Errorf("%s: unknown key (known: %s)", join(path, k), strings.Join(names, ", "))
		}
	}
	for _, name := range names {
		f := t.FieldByIndex(known[name])
		p := join(path, name)
		raw, present := cfg[name]
		if !present || raw == nil {
			if f.Tag.Get("required") == "true" {
				return fmt.Errorf("%s: required", p)
			}
			continue
		}
		fv := v.FieldByIndex(known[name])
		if err := decodeValue(p, raw, fv, refs); err != nil {
			return err
		}
		if err := checkTags(p, f, fv, refs); err != nil {
			return err
		}
	}
	return nil
}

func checkTags(p string, f reflect.StructField, fv reflect.Value, refs *Refs) error {
	if err := checkMax(p, f, fv); err != nil {
		return err
	}
	if enum := f.Tag.Get("enum"); enum != "" && fv.Kind() == reflect.String {
		if !slices.Contains(strings.Split(enum, ","), fv.String()) {
			return fmt.Errorf("%s: %q is not one of %s", p, fv.String(), strings.ReplaceAll(enum, ",", ", "))
		}
	}
	if f.Tag.Get("url") == "true" && fv.Kind() == reflect.String {
		u, err := url.Parse(fv.String())
		if err != nil || u.Scheme == "" || u.Host == "" {
			return fmt.Errorf("%s: not an absolute URL", p)
		}
		if _, has := u.User.Password(); has {
			return fmt.Errorf("%s: a password in the URL is not allowed; store it with `penstock secrets put` and refer to it as ${secret:NAME} in the password field", p)
		}
	}
	if f.Tag.Get("dial") == "true" && fv.Kind() == reflect.String && fv.String() != "" {
		if refs.Dials == nil {
			refs.Dials = map[string]string{}
		}
		refs.Dials[p] = fv.String()
	}
	return nil
}

var durationType = reflect.TypeFor[time.Duration]()

// checkMax applies a field's `max` tag: every duration and number of a connector's
// configuration is bounded (TestEveryNumberIsBounded), and a value beyond it is refused with
// its field path.
func checkMax(p string, f reflect.StructField, fv reflect.Value) error {
	limit := f.Tag.Get("max")
	if limit == "" {
		return nil
	}
	if fv.Kind() == reflect.Pointer {
		if fv.IsNil() {
			return nil
		}
		fv = fv.Elem()
	}
	switch {
	case fv.Type() == durationType:
		d, err := time.ParseDuration(limit)
		if err == nil && time.Duration(fv.Int()) > d {
			return fmt.Errorf("%s: at most %s", p, limit)
		}
	case fv.CanInt():
		n, err := strconv.ParseInt(limit, 10, 64)
		if err == nil && fv.Int() > n {
			return fmt.Errorf("%s: at most %s", p, limit)
		}
	case fv.CanFloat():
		n, err := strconv.ParseFloat(limit, 64)
		if err == nil && fv.Float() > n {
			return fmt.Errorf("%s: at most %s", p, limit)
		}
	}
	return nil
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

func decodeValue(p string, raw any, v reflect.Value, refs *Refs) error {
	if v.Type() == durationType {
		s, ok := raw.(string)
		if !ok {
			return fmt.Errorf("%s: must be a duration such as 30s or 5m", p)
		}
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 {
			return fmt.Errorf("%s: %q is not a duration such as 30s or 5m", p, s)
		}
		v.SetInt(int64(d))
		return nil
	}
	if v.Type() == reflect.TypeFor[SecretRef]() {
		s, ok := raw.(string)
		if !ok {
			return fmt.Errorf("%s: must be a secret reference ${secret:NAME}", p)
		}
		if s != "" && !secretRefPattern.MatchString(s) {
			return fmt.Errorf("%s: a literal credential is not allowed; store it with `penstock secrets put` and write ${secret:NAME}", p)
		}
		v.SetString(s)
		if n := SecretRef(s).Name(); n != "" {
			if refs.Secrets == nil {
				refs.Secrets = map[string]string{}
			}
			refs.Secrets[p] = n
		}
		return nil
	}
	switch v.Kind() {
	case reflect.Pointer:
		nv := reflect.New(v.Type().Elem())
		if err := decodeValue(p, raw, nv.Elem(), refs); err != nil {
			return err
		}
		v.Set(nv)
	case reflect.String:
		s, ok := raw.(string)
		if !ok {
			return fmt.Errorf("%s: must be a string", p)
		}
		if secretRefPattern.MatchString(s) {
			return fmt.Errorf("%s: takes no secret reference; only credential fields do", p)
		}
		v.SetString(s)
	case reflect.Bool:
		b, ok := raw.(bool)
		if !ok {
			return fmt.Errorf("%s: must be true or false", p)
		}
		v.SetBool(b)
	case reflect.Int, reflect.Int64:
		n, ok := number(raw)
		if !ok || n != math.Trunc(n) || math.Abs(n) > 1<<53 {
			return fmt.Errorf("%s: must be an integer", p)
		}
		v.SetInt(int64(n))
	case reflect.Float64:
		n, ok := number(raw)
		if !ok {
			return fmt.Errorf("%s: must be a number", p)
		}
		v.SetFloat(n)
	case reflect.Slice:
		items, ok := raw.([]any)
		if !ok {
			return fmt.Errorf("%s: must be a list", p)
		}
		out := reflect.MakeSlice(v.Type(), len(items), len(items))
		for i, it := range items {
			if err := decodeValue(fmt.Sprintf("%s[%d]", p, i), it, out.Index(i), refs); err != nil {
				return err
			}
		}
		v.Set(out)
	case reflect.Map:
		m, ok := raw.(map[string]any)
		if !ok {
			return fmt.Errorf("%s: must be a mapping", p)
		}
		if v.Type().Elem().Kind() == reflect.Interface {
			v.Set(reflect.ValueOf(m))
			return nil
		}
		out := reflect.MakeMapWithSize(v.Type(), len(m))
		for k, it := range m {
			ev := reflect.New(v.Type().Elem()).Elem()
			if err := decodeValue(join(p, k), it, ev, refs); err != nil {
				return err
			}
			out.SetMapIndex(reflect.ValueOf(k), ev)
		}
		v.Set(out)
	case reflect.Struct:
		m, ok := raw.(map[string]any)
		if !ok {
			return fmt.Errorf("%s: must be a mapping", p)
		}
		return decodeStruct(p, m, v, refs)
	case reflect.Interface:
		if raw != nil {
			v.Set(reflect.ValueOf(raw))
		}
	default:
		return fmt.Errorf("%s: unsupported field type %s", p, v.Type())
	}
	return nil
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
