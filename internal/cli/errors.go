package cli

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/danielgtaylor/huma/v2/validation"
	"github.com/spf13/cobra"

	"github.com/penstock/penstock/internal/pipeline"
	"github.com/spf13/pflag"

	"github.com/penstock/penstock/internal/names"
)

// explain is the one line printed for a command's error: what is wrong, in the command line's
// terms (its flags and arguments, not the API's fields), and what to do about it.
func explain(cmd *cobra.Command, err error) string {
	var (
		ae *apiError
		ue *usageError
		un *unreachable
		re *url.Error
		se pipeline.SpecErrors
	)
	switch {
	case errors.As(err, &se):
		// A spec's errors are a list, one per line, an expression's caret under its own.
		return err.Error()
	case errors.As(err, &ue):
		return ue.Error()
	case errors.As(err, &un):
		return un.msg
	case errors.As(err, &ae):
		return oneLine(ae.explain(cmd))
	case errors.As(err, &re) && re.Timeout():
		server := re.URL
		if u, perr := url.Parse(re.URL); perr == nil {
			server = u.Scheme + "://" + u.Host
		}
		return "no answer from " + server + " in time: is it overloaded, or is --server another service?"
	}
	msg := err.Error()
	if m := requiredFlags.FindStringSubmatch(msg); m != nil && cmd != nil {
		var missing []string
		for _, n := range strings.Split(m[1], `", "`) {
			d := "--" + n
			if f := cmd.Flags().Lookup(n); f != nil && f.Usage != "" {
				d += " (" + f.Usage + ")"
			}
			missing = append(missing, d)
		}
		return (&usageError{cmd: cmd, msg: "missing " + strings.Join(missing, " and ")}).Error()
	}
	if strings.HasPrefix(msg, "unknown command") {
		// cobra adds its suggestions on lines of their own.
		first, rest, _ := strings.Cut(msg, "\n")
		if s := strings.Fields(strings.TrimPrefix(strings.TrimSpace(rest), "Did you mean this?")); len(s) > 0 {
			first += "; did you mean " + strings.Join(s, " or ") + "?"
		}
		return first + "; run " + cmd.CommandPath() + " --help"
	}
	return oneLine(msg)
}

var (
	requiredFlags = regexp.MustCompile(`^required flag\(s\) "(.*)" not set$`)
	digits        = regexp.MustCompile(`[0-9]+`)
)

// oneLine joins the lines of a message.
func oneLine(s string) string {
	var parts []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			parts = append(parts, l)
		}
	}
	return strings.Join(parts, "; ")
}

// flagError says what is wrong with a flag of cmd and where its flags are listed.
func flagError(cmd *cobra.Command, err error) error {
	var (
		missing *pflag.NotExistError
		invalid *pflag.InvalidValueError
		empty   *pflag.ValueRequiredError
	)
	msg := err.Error()
	switch {
	case errors.As(err, &missing):
		msg = strings.Replace(msg, "flag: ", "flag ", 1)
	case errors.As(err, &invalid):
		f := invalid.GetFlag()
		msg = fmt.Sprintf("--%s %q is not %s", f.Name, invalid.GetValue(), flagTypes[f.Value.Type()])
		if flagTypes[f.Value.Type()] == "" {
			msg = oneLine(err.Error())
		}
	case errors.As(err, &empty):
		msg = "--" + empty.GetFlag().Name + " needs a value"
		if u := empty.GetFlag().Usage; u != "" {
			msg += ": " + u
		}
	}
	return &usageError{cmd: cmd, msg: msg, flag: true}
}

// flagTypes are the kinds of flag values in words.
var flagTypes = map[string]string{
	"int": "a whole number", "int64": "a whole number", "uint64": "a whole number", "int32": "a whole number",
	"duration": "a duration such as 30s, 5m or 2h", "bool": "true or false",
}

// explain is an API error in the command line's terms.
func (e *apiError) explain(cmd *cobra.Command) string {
	if cmd != nil && commandName(cmd) == "login" {
		switch e.Code {
		case "auth.invalid_credentials":
			// The server says how attempts are limited, in brackets; never whether the user exists.
			limits := ""
			if i := strings.Index(e.Message, " ("); i >= 0 {
				limits = e.Message[i:]
			}
			return "login failed: wrong user name or password; check --user and the password on standard input" + limits
		case "auth.mfa_required":
			return "login failed: a one-time code is required: add --code CODE, from your authenticator app (or a recovery code)"
		case "auth.invalid_code":
			return "login failed: the one-time code is wrong or already used: give a new one with --code"
		case "auth.locked":
			return "login failed: " + e.Message
		}
	}
	if cmd != nil && (e.Code == "invalid_request" || e.Code == "bad_request" || e.Code == "name.invalid") {
		if s := e.fields(cmd); s != "" {
			return s
		}
		if m := location.FindStringSubmatch(e.Message); m != nil {
			return phrase(cmd, m[1], m[2])
		}
	}
	msg := e.Code + ": " + e.Message
	switch e.Code {
	case "not_found", "secret.not_found":
		if h := listHint(e.Message); h != "" {
			msg += "; see what exists with " + h
		}
	case "auth.password_change_required":
		msg = e.Code + ": change your password first: penstock password < current-then-new"
	case "auth.mfa_required":
		msg = e.Code + ": enrol a second factor first: penstock mfa enrol, then penstock mfa verify CODE"
	}
	return msg
}

// fields is a validation error's details in the command line's terms, or "" when it has none.
func (e *apiError) fields(cmd *cobra.Command) string {
	var out []string
	for _, d := range e.Details {
		out = append(out, phrase(cmd, d.Location, d.Message))
	}
	return strings.Join(out, "; ")
}

// location is an API error's "body.max_deliveries: ..." prefix.
var location = regexp.MustCompile(`^((?:body|query|path|header)(?:\.[A-Za-z0-9_\[\]-]+)*): (.*)$`)

// phrasings put the API validator's messages in words; each format is one of
// huma's, so a changed wording shows as an untranslated message, never a wrong one.
var phrasings = []struct {
	format string
	words  func(v string) string
}{
	{validation.MsgExpectedMaximumNumber, func(v string) string { return "must be at most " + v }},
	{validation.MsgExpectedMinimumNumber, func(v string) string { return "must be at least " + v }},
	{validation.MsgExpectedExclusiveMaximumNumber, func(v string) string { return "must be less than " + v }},
	{validation.MsgExpectedExclusiveMinimumNumber, func(v string) string { return "must be more than " + v }},
	{validation.MsgExpectedMaxLength, func(v string) string { return "must be at most " + v + " characters" }},
	{validation.MsgExpectedMinLength, func(v string) string {
		if v == "1" {
			return "must not be empty"
		}
		return "must be at least " + v + " characters"
	}},
	{validation.MsgExpectedMaxItems, func(v string) string { return "takes at most " + v }},
	{validation.MsgExpectedMinItems, func(v string) string { return "needs at least " + v }},
	{validation.MsgExpectedOneOf, func(v string) string { return "must be one of " + v }},
	{validation.MsgExpectedMatchPattern, func(v string) string {
		if r, ok := names.RuleOf(v); ok {
			return "is not valid: " + r.Words()
		}
		return "must match " + v
	}},
	{validation.MsgExpectedRequiredProperty, func(v string) string { return v + " is required" }},
	{validation.MsgExpectedInteger, func(string) string { return "must be a whole number" }},
	{validation.MsgExpectedNumber, func(string) string { return "must be a number" }},
	{validation.MsgExpectedBoolean, func(string) string { return "must be true or false" }},
	{validation.MsgUnexpectedProperty, func(string) string { return "is not a known setting" }},
}

var phrasingRes = func() []*regexp.Regexp {
	out := make([]*regexp.Regexp, len(phrasings))
	for i, p := range phrasings {
		re := regexp.QuoteMeta(p.format)
		for _, verb := range []string{"%v", "%d", "%s"} {
			re = strings.ReplaceAll(re, verb, "(.*)")
		}
		out[i] = regexp.MustCompile("^" + re + "$")
	}
	return out
}()

// phrase says what is wrong at an API location as cmd's command line gives it:
// "--max-deliveries must be at most 1000".
func phrase(cmd *cobra.Command, loc, msg string) string {
	what := where(cmd, loc)
	if strings.HasSuffix(loc, "_ms") {
		// A flag the CLI sends in milliseconds is a duration on the command line.
		msg = digits.ReplaceAllStringFunc(msg, func(n string) string {
			ms, _ := strconv.ParseInt(n, 10, 64)
			return (time.Duration(ms) * time.Millisecond).String()
		})
	}
	for i, re := range phrasingRes {
		if m := re.FindStringSubmatch(msg); m != nil {
			v := ""
			if len(m) > 1 {
				v = m[1]
			}
			return what + " " + phrasings[i].words(v)
		}
	}
	return what + ": " + msg
}

// aliases are API fields whose flag has another name.
var aliases = map[string]string{
	"wait_ms": "--wait", "delay_ms": "--delay", "current": "the current password (first line of standard input)",
	"new": "the new password (second line of standard input)", "value": "the secret value (standard input)",
}

// where is an API location (body.max_deliveries, path.queue) as cmd's command line gives it:
// a flag, an argument, or a part of --app.
func where(cmd *cobra.Command, loc string) string {
	field := loc
	if i := strings.LastIndex(field, "."); i >= 0 {
		field = field[i+1:]
	}
	if i := strings.Index(field, "["); i >= 0 {
		field = field[:i]
	}
	if a, ok := aliases[field]; ok {
		return a
	}
	if f := strings.ReplaceAll(field, "_", "-"); cmd.Flags().Lookup(f) != nil {
		return "--" + f
	}
	for _, o := range operands(cmd.Use) {
		if strings.EqualFold(o.name, field) || field == "name" && o.name == "NAME" || kind(cmd, o) == field ||
			strings.EqualFold(o.name, strings.TrimSuffix(field, "s")) {
			return describe(cmd, o)
		}
	}
	for _, f := range []struct{ flag, parts string }{{"app", "tenant environment application"}, {"env", "tenant environment"}} {
		if cmd.Flags().Lookup(f.flag) != nil && strings.Contains(f.parts, field) {
			return "the " + field + " in --" + f.flag
		}
	}
	return loc
}

// listed are the things a not-found answer names, and the command that lists them; the
// answer's names fill in its blanks.
var listed = []struct {
	re   *regexp.Regexp
	list string
}{
	{regexp.MustCompile(`^no such (queue|exchange|pipeline|secret) ".*" in ([^ ]+/[^ ]+/[^ ]+)$`), "penstock %s list --app %s"},
	{regexp.MustCompile(`^no such dead letter \d+ of queue "(.*)" in ([^ ]+)$`), "penstock queue dead-letters list --app %[2]s %[1]s"},
	{regexp.MustCompile(`^no such binding .* to exchange "(.*)" in ([^ ]+)$`), "penstock exchange get --app %[2]s %[1]s"},
	{regexp.MustCompile(`^no such application ([^/ ]+/[^/ ]+)/[^/ ]+$`), "penstock app list --env %s"},
	{regexp.MustCompile(`^no such environment ([^/ ]+)/[^/ ]+$`), "penstock env list --tenant %s"},
	{regexp.MustCompile(`^no such tenant `), "penstock tenant list"},
	{regexp.MustCompile(`^no such user `), "penstock user list"},
	{regexp.MustCompile(`^no such role binding `), "penstock role list"},
	{regexp.MustCompile(`^no such API key `), "penstock apikey list"},
}

// listHint is the command that lists what exists where msg says something is missing.
func listHint(msg string) string {
	for _, l := range listed {
		m := l.re.FindStringSubmatch(msg)
		if m == nil {
			continue
		}
		args := make([]any, 0, len(m)-1)
		for _, s := range m[1:] {
			if s == "secret" {
				s = "secrets"
			}
			args = append(args, s)
		}
		return fmt.Sprintf(l.list, args...)
	}
	return ""
}
