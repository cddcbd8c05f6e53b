package config

import (
	"errors"
	"fmt"
	"math"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/knadh/koanf/parsers/yaml"
	"github.com/knadh/koanf/providers/confmap"
	"github.com/knadh/koanf/providers/file"
	"github.com/knadh/koanf/v2"
	"github.com/spf13/pflag"
)

// EnvPrefix starts every environment variable Penstock reads.
const EnvPrefix = "PENSTOCK_"

// EnvConfigFile names the configuration file when no --config flag is given. It is the one
// PENSTOCK_ variable that is not a configuration key.
const EnvConfigFile = EnvPrefix + "CONFIG"

// EnvAPIKey holds an API key for the command-line client; serve ignores it.
const EnvAPIKey = EnvPrefix + "API_KEY"

// EnvCrashpoint names a step at which the process kills itself, for the crash tests (see
// package crashpoint); it is not configuration.
const EnvCrashpoint = EnvPrefix + "CRASHPOINT"

// Sources says where configuration comes from. Later sources override earlier ones:
// defaults, then File, then Environ, then the flags of Flags that were set.
type Sources struct {
	// File is a YAML file; empty means none.
	File string
	// Environ is the process environment as os.Environ returns it.
	Environ []string
	// Flags holds command-line flags; FlagKeys maps a flag's name to the key it sets.
	Flags    *pflag.FlagSet
	FlagKeys map[string]string
}

// Load builds the configuration from its sources and validates it. The error, if any, is a
// FieldErrors naming every problem found, each with its field path.
func Load(src Sources) (Config, error) {
	cfg := Default()
	var errs FieldErrors
	k := koanf.New(".")

	if src.File != "" {
		fk := koanf.New(".")
		if err := fk.Load(file.Provider(src.File), yaml.Parser()); err != nil {
			return cfg, FieldErrors{{Path: src.File, Msg: cleanYAMLError(err)}}
		}
		for _, key := range fk.Keys() {
			if _, ok := leafPaths[key]; ok {
				continue
			}
			if sectionPaths[key] {
				if m, isMap := fk.Get(key).(map[string]any); !isMap || len(m) > 0 {
					errs = append(errs, FieldError{Path: key, Msg: "expected a mapping of keys"})
				}
				continue
			}
			if leaf, t, ok := leafPrefix(key); ok {
				errs = append(errs, FieldError{Path: leaf, Msg: describeDecodeError(t, map[string]any{})})
				continue
			}
			path := key
			if strings.Trim(path, ".") == "" || strings.Contains(path, "..") || strings.HasPrefix(path, ".") || strings.HasSuffix(path, ".") {
				path = fmt.Sprintf("%q", key) // an empty key, or one made of separators
			}
			errs = append(errs, FieldError{Path: path, Msg: "unknown key"})
		}
		errs = dedupe(errs)
		if err := k.Merge(fk); err != nil {
			return cfg, err
		}
	}

	envMap := map[string]any{}
	for _, kv := range src.Environ {
		name, val, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, EnvPrefix) || name == EnvConfigFile || name == EnvAPIKey || name == EnvCrashpoint {
			continue
		}
		key, ok := envKeys[name]
		if !ok {
			errs = append(errs, FieldError{Path: name, Msg: "unknown environment variable"})
			continue
		}
		envMap[key] = envValue(key, val)
	}
	if err := k.Load(confmap.Provider(envMap, "."), nil); err != nil {
		return cfg, err
	}

	if src.Flags != nil {
		flagMap := map[string]any{}
		src.Flags.Visit(func(f *pflag.Flag) {
			if key, ok := src.FlagKeys[f.Name]; ok {
				flagMap[key] = flagValue(key, f)
			}
		})
		if err := k.Load(confmap.Provider(flagMap, "."), nil); err != nil {
			return cfg, err
		}
	}

	// Decode one leaf at a time so a type error names its own path.
	for _, key := range k.Keys() {
		t, ok := leafPaths[key]
		if !ok {
			continue // reported above
		}
		if err := decodeLeaf(&cfg, key, t, k.Get(key)); err != nil {
			errs = append(errs, FieldError{Path: key, Msg: err.Error()})
		}
	}
	errs = append(errs, cfg.validate()...)
	if len(errs) > 0 {
		errs.sort()
		return cfg, errs
	}
	return cfg, nil
}

// envValue splits list-valued variables on commas.
func envValue(key, val string) any {
	if leafPaths[key].Kind() == reflect.Slice {
		if val == "" {
			return []string{}
		}
		return strings.Split(val, ",")
	}
	return val
}

// flagValue is a flag's value; a list-valued key given as a text flag is split on commas,
// as in the environment.
func flagValue(key string, f *pflag.Flag) any {
	if sv, ok := f.Value.(pflag.SliceValue); ok {
		return sv.GetSlice()
	}
	return envValue(key, f.Value.String())
}

// decodeLeaf sets one key. Text (the environment, flags, quoted YAML) is parsed into the
// field's type; other YAML values must already be of that type: true is not a number, 2.9 is
// not an integer, 8443 is not a string.
func decodeLeaf(cfg *Config, key string, t reflect.Type, raw any) error {
	if !compatible(t, raw) {
		return errors.New(describeDecodeError(t, raw))
	}
	field := fieldByPath(reflect.ValueOf(cfg).Elem(), strings.Split(key, "."))
	dst := reflect.New(t)
	dec, err := mapstructure.NewDecoder(&mapstructure.DecoderConfig{
		DecodeHook: mapstructure.ComposeDecodeHookFunc(
			daysHook,
			mapstructure.StringToTimeDurationHookFunc(),
			mapstructure.TextUnmarshallerHookFunc(),
		),
		WeaklyTypedInput: true,
		Result:           dst.Interface(),
	})
	if err != nil {
		return err
	}
	if err := dec.Decode(raw); err != nil {
		return errors.New(describeDecodeError(t, raw))
	}
	field.Set(dst.Elem())
	return nil
}

func compatible(t reflect.Type, raw any) bool {
	if _, isText := raw.(string); isText {
		return true
	}
	switch k := t.Kind(); {
	case t == reflect.TypeOf(time.Duration(0)):
		return false // durations are written as text: 30s
	case k >= reflect.Int && k <= reflect.Uint64:
		switch v := raw.(type) {
		case int, int64, uint64:
			return true
		case float64:
			return v == math.Trunc(v)
		}
		return false
	case k == reflect.Bool:
		_, ok := raw.(bool)
		return ok
	case k == reflect.Float64:
		switch raw.(type) {
		case int, int64, uint64, float64:
			return true
		}
		return false
	case k == reflect.Slice:
		if _, ok := raw.([]string); ok {
			return true
		}
		items, ok := raw.([]any)
		if !ok {
			return false
		}
		for _, it := range items {
			if _, ok := it.(string); !ok {
				return false
			}
		}
		return true
	}
	return false
}

// describeDecodeError says what was expected without echoing the value, which may be a secret.
func describeDecodeError(t reflect.Type, raw any) string {
	want := t.Kind().String()
	switch {
	case t == reflect.TypeOf(time.Duration(0)):
		want = "a duration such as 30s or 2m"
	case t.Kind() == reflect.Slice:
		want = "a list of strings"
	case t.Kind() == reflect.Float64:
		want = "a number"
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Uint64:
		want = "an integer"
	case t.Kind() == reflect.Bool:
		want = "true or false"
	case t.Kind() == reflect.Struct || t.Kind() == reflect.String:
		want = "a string"
	}
	return fmt.Sprintf("expected %s, got %s", want, describeKind(raw))
}

func describeKind(raw any) string {
	switch v := raw.(type) {
	case string:
		return "a string that does not parse"
	case float64:
		if v != math.Trunc(v) {
			return "a fractional number"
		}
		return "a number"
	case int, int64, uint64:
		return "a number"
	case bool:
		return "a boolean"
	case map[string]any:
		return "a mapping"
	case []any:
		return "a list"
	case nil:
		return "nothing"
	default:
		return reflect.TypeOf(raw).Kind().String()
	}
}

// leafPrefix finds a leaf key that key lies under, which means a mapping was given where a
// value belongs (nats_password: {nested: x}).
func leafPrefix(key string) (string, reflect.Type, bool) {
	for i := strings.LastIndexByte(key, '.'); i > 0; i = strings.LastIndexByte(key[:i], '.') {
		if t, ok := leafPaths[key[:i]]; ok {
			return key[:i], t, true
		}
	}
	return "", nil, false
}

func dedupe(errs FieldErrors) FieldErrors {
	seen := map[FieldError]bool{}
	out := errs[:0]
	for _, e := range errs {
		if !seen[e] {
			seen[e] = true
			out = append(out, e)
		}
	}
	return out
}

func fieldByPath(v reflect.Value, parts []string) reflect.Value {
	for _, p := range parts {
		t := v.Type()
		for i := 0; i < t.NumField(); i++ {
			if t.Field(i).Tag.Get("koanf") == p {
				v = v.Field(i)
				break
			}
		}
	}
	return v
}

// leafPaths maps every configuration key to its Go type, sectionPaths holds the keys that
// are mappings of other keys, and envKeys maps PENSTOCK_ variable names to leaf keys. Both come from the struct tags, so a new field needs no other change.
var leafPaths, sectionPaths, envKeys = func() (map[string]reflect.Type, map[string]bool, map[string]string) {
	leaves := map[string]reflect.Type{}
	sections := map[string]bool{}
	var walk func(t reflect.Type, prefix string)
	walk = func(t reflect.Type, prefix string) {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			tag := f.Tag.Get("koanf")
			if tag == "" {
				continue
			}
			path := prefix + tag
			if f.Type.Kind() == reflect.Struct && !reflect.PointerTo(f.Type).Implements(textUnmarshaler) {
				sections[path] = true
				walk(f.Type, path+".")
				continue
			}
			leaves[path] = f.Type
		}
	}
	walk(reflect.TypeOf(Config{}), "")
	env := map[string]string{}
	for p := range leaves {
		env[EnvName(p)] = p
	}
	return leaves, sections, env
}()

var textUnmarshaler = reflect.TypeOf((*interface{ UnmarshalText([]byte) error })(nil)).Elem()

// EnvName is the environment variable that sets key.
func EnvName(key string) string {
	return EnvPrefix + strings.ToUpper(strings.NewReplacer(".", "_", "-", "_").Replace(key))
}

// Keys lists every configuration key, sorted.
func Keys() []string {
	out := make([]string, 0, len(leafPaths))
	for k := range leafPaths {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// cleanYAMLError keeps the parser's location and reason but drops the quoted input it
// includes, which may be a secret.
func cleanYAMLError(err error) string {
	if errors.Is(err, os.ErrNotExist) {
		return "file does not exist"
	}
	msg := quotedInput.ReplaceAllString(err.Error(), "[value]")
	return "not valid YAML: " + strings.TrimPrefix(msg, "yaml: ")
}

var quotedInput = regexp.MustCompile("`[^`]*`|\"[^\"]*\"|'[^']*'")

// ParseDuration is time.ParseDuration with days: "90d", "1d12h". Retention periods are
// written in days.
func ParseDuration(s string) (time.Duration, error) {
	days, rest, ok := strings.Cut(s, "d")
	if !ok || days == "" || strings.ContainsAny(days, "+-.") {
		return time.ParseDuration(s)
	}
	n, err := strconv.ParseUint(days, 10, 16)
	if err != nil {
		return time.ParseDuration(s)
	}
	d := time.Duration(n) * 24 * time.Hour
	if rest != "" {
		r, err := time.ParseDuration(rest)
		if err != nil || r < 0 {
			return 0, fmt.Errorf("time: invalid duration %q", s)
		}
		d += r
	}
	return d, nil
}

// daysHook decodes durations written with days.
func daysHook(from, to reflect.Type, data any) (any, error) {
	if from.Kind() != reflect.String || to != reflect.TypeFor[time.Duration]() {
		return data, nil
	}
	return ParseDuration(data.(string))
}
