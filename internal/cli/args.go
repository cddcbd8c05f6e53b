package cli

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/penstock/penstock/internal/names"
)

// operand is one positional argument as a command's Use line names it: NAME, QUEUE, SEQ.
type operand struct {
	name     string
	optional bool // [SEQ...]
	variadic bool // TOKEN..., [RULE ...]
}

// operands reads a command's positional arguments from its Use line: the words after the
// command's name that are not flags, flag values or redirections. The Use line is what --help
// shows, so the words an error uses are the ones the user has read.
func operands(use string) []operand {
	words := strings.Fields(use)
	var out []operand
	for i := 1; i < len(words); i++ {
		w := words[i]
		switch {
		case w == "<" || w == ">":
			return out
		case strings.HasPrefix(w, "[-"): // an optional flag: skip to the end of its brackets
			for !strings.HasSuffix(words[i], "]") && i+1 < len(words) {
				i++
			}
		case strings.HasPrefix(w, "-"): // a flag and, unless another flag follows, its value
			if i+1 < len(words) && !strings.HasPrefix(words[i+1], "-") && !strings.HasPrefix(words[i+1], "[") {
				i++
			}
		case strings.HasPrefix(w, "..."):
			if len(out) > 0 {
				out[len(out)-1].variadic = true
			}
		default:
			o := operand{optional: strings.HasPrefix(w, "[")}
			w = strings.Trim(w, "[]")
			o.variadic = strings.HasSuffix(w, "...")
			o.name = strings.TrimSuffix(w, "...")
			out = append(out, o)
		}
	}
	return out
}

// bounds are how many arguments operands take; most is -1 without a limit.
func bounds(ops []operand) (least, most int) {
	for _, o := range ops {
		if !o.optional {
			least++
		}
		if o.variadic {
			most = -1
		} else if most >= 0 {
			most++
		}
	}
	return least, most
}

// nouns are what a command group's NAME or ID stands for.
var nouns = map[string]string{
	"tenant": "tenant", "env": "environment", "app": "application", "user": "user", "queue": "queue",
	"exchange": "exchange", "pipeline": "pipeline", "secrets": "secret", "role": "role binding", "apikey": "API key",
}

// kind is what an operand of cmd names (queue, tenant), or "" when it is not a name of
// anything (a sequence, a token).
func kind(cmd *cobra.Command, o operand) string {
	switch o.name {
	case "NAME":
		if cmd.HasParent() {
			return nouns[cmd.Parent().Name()]
		}
	case "QUEUE":
		return "queue"
	case "EXCHANGE":
		return "exchange"
	}
	return ""
}

// describe is an operand as an error names it: "the queue NAME", "the SEQ".
func describe(cmd *cobra.Command, o operand) string {
	noun := kind(cmd, o)
	if o.name == "ID" && cmd.HasParent() {
		noun = nouns[cmd.Parent().Name()]
	}
	the := "the "
	if o.variadic {
		the = "at least one "
	}
	if noun == "" || strings.EqualFold(noun, o.name) {
		return the + o.name
	}
	return the + noun + " " + o.name
}

// rule is the naming rule of a kind of thing.
func rule(kind string) names.Rule {
	switch kind {
	case "secret":
		return names.Secret
	case "pipeline":
		return names.Pipeline
	}
	return names.Name
}

// usageError is a command line that does not fit its command: it says what is wrong and
// shows the usage line, or for a flag where the flags are listed.
type usageError struct {
	cmd  *cobra.Command
	msg  string
	flag bool
}

func (e *usageError) Error() string {
	if e.flag {
		return commandName(e.cmd) + ": " + e.msg + "; run " + e.cmd.CommandPath() + " --help"
	}
	return commandName(e.cmd) + ": " + e.msg + "; usage: " + e.cmd.UseLine()
}

// commandName is cmd's path without the program's name: "queue create".
func commandName(cmd *cobra.Command) string {
	if !cmd.HasParent() {
		return cmd.Name()
	}
	return strings.TrimPrefix(cmd.CommandPath(), cmd.Root().Name()+" ")
}

// guard gives every runnable command under root the positional-argument check its Use line
// describes, naming what is missing, and checks the names a command line gives, arguments and
// flags, before anything is sent.
func guard(root *cobra.Command) {
	for _, c := range root.Commands() {
		guard(c)
	}
	if !root.HasParent() {
		return
	}
	if !root.Runnable() {
		// A group (queue, tenant) shows its commands, and names a word that is none of them.
		root.RunE = func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return cmd.Help()
			}
			msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
			cmd.SuggestionsMinimumDistance = 2 // cobra sets this default only for the root command
			if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
				msg += "\n\nDid you mean this?\n\t" + strings.Join(s, "\n\t")
			}
			return errors.New(msg)
		}
		return
	}
	given := root.Args
	if given == nil {
		given = cobra.ArbitraryArgs
	}
	ops := operands(root.Use)
	root.Args = func(cmd *cobra.Command, args []string) error {
		if err := given(cmd, args); err != nil {
			return argsError(cmd, ops, args, err)
		}
		return checkNames(cmd, ops, args)
	}
}

// argsError says which arguments are missing, or that there are too many.
func argsError(cmd *cobra.Command, ops []operand, args []string, err error) error {
	least, most := bounds(ops)
	switch {
	case len(args) < least:
		var missing []string
		for _, o := range ops[len(args):] {
			if !o.optional {
				missing = append(missing, describe(cmd, o))
			}
		}
		return &usageError{cmd: cmd, msg: "missing " + strings.Join(missing, " and ")}
	case most >= 0 && len(args) > most:
		extra := make([]string, 0, len(args)-most)
		for _, a := range args[most:] {
			extra = append(extra, fmt.Sprintf("%q", a))
		}
		what := "takes no arguments"
		if most > 0 {
			var takes []string
			for _, o := range ops {
				takes = append(takes, describe(cmd, o))
			}
			what = "takes " + strings.Join(takes, " and ")
		}
		return &usageError{cmd: cmd, msg: fmt.Sprintf("%s, not also %s", what, strings.Join(extra, " "))}
	}
	return &usageError{cmd: cmd, msg: err.Error()}
}

// checkNames refuses a name, given as an argument or in a flag, that breaks its rule.
func checkNames(cmd *cobra.Command, ops []operand, args []string) error {
	for i, o := range ops {
		if k := kind(cmd, o); k != "" && i < len(args) {
			if err := rule(k).Check(k, args[i]); err != nil {
				return err
			}
		}
	}
	for _, f := range []struct {
		flag  string
		parts []string
	}{
		{"app", []string{"tenant", "environment", "application"}},
		{"env", []string{"tenant", "environment"}},
		{"tenant", []string{"tenant"}},
		{"queue", []string{"queue"}},
		{"user", []string{"user"}},
	} {
		fl := cmd.Flags().Lookup(f.flag)
		if fl == nil || fl.Value.String() == "" || fl.Value.Type() != "string" {
			continue
		}
		v := fl.Value.String()
		parts := strings.Split(v, "/")
		if len(parts) != len(f.parts) {
			return fmt.Errorf("--%s %q: must be %s", f.flag, v, strings.Join(f.parts, "/"))
		}
		for i, p := range parts {
			if err := names.Name.Check(f.parts[i], p); err != nil {
				return fmt.Errorf("--%s: %w", f.flag, err)
			}
		}
	}
	return nil
}
