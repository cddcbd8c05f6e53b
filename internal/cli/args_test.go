package cli

import (
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// every calls f on every runnable command of the tree.
func every(c *cobra.Command, f func(*cobra.Command)) {
	for _, s := range c.Commands() {
		every(s, f)
	}
	if c.Runnable() && c.HasParent() {
		f(c)
	}
}

// Each command's Use line names the positional arguments its Args check takes: the errors
// that name what is missing read the Use line, so it must tell the truth.
func TestUseLinesAgreeWithArgs(t *testing.T) {
	n := 0
	every(commands(nil), func(c *cobra.Command) {
		n++
		given := c.Args
		if given == nil {
			given = cobra.ArbitraryArgs
		}
		least, most := bounds(operands(c.Use))
		for k := range 4 {
			args := make([]string, k)
			for i := range args {
				args[i] = "x"
			}
			byUse := k >= least && (most < 0 || k <= most)
			if byArgs := given(c, args) == nil; byArgs != byUse {
				t.Errorf("%s: %d argument(s): Args says %v, the Use line %q says %v", c.CommandPath(), k, byArgs, c.Use, byUse)
			}
		}
	})
	if n < 50 {
		t.Fatalf("only %d commands walked", n)
	}
}

func TestOperands(t *testing.T) {
	for use, want := range map[string]string{
		"create --app T/E/A NAME":                                "NAME",
		"ack --app T/E/A NAME TOKEN...":                          "NAME TOKEN...",
		"replay --app T/E/A QUEUE [SEQ...]":                      "QUEUE [SEQ...]",
		"set --tenant T [RULE ...]":                              "[RULE...]",
		"publish --app T/E/A NAME [--data TEXT | < file]":        "NAME",
		"bind --app T/E/A EXCHANGE --queue QUEUE [--key KEY]":    "EXCHANGE",
		"delete NAME --confirm NAME":                             "NAME",
		"login --user NAME [--code CODE] < password":             "",
		"export --format ndjson [--tenant T] [--since T] > FILE": "",
		"apply --app T/E/A -f FILE [--dry-run]":                  "",
		"put --app TENANT/ENV/APP NAME < value":                  "NAME",
	} {
		var got []string
		for _, o := range operands(use) {
			s := o.name
			if o.variadic {
				s += "..."
			}
			if o.optional {
				s = "[" + s + "]"
			}
			got = append(got, s)
		}
		if g := strings.Join(got, " "); g != want {
			t.Errorf("operands(%q) = %q, want %q", use, g, want)
		}
	}
}

// A command line that does not fit its command, or gives a name that breaks its rule, is
// refused before anything is sent, in one line that names what is wrong and what to do.
func TestCommandLineMistakes(t *testing.T) {
	const nameRule = "use 1 to 63 lower-case letters, digits and '-', starting with a letter or digit"
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"queue", "create", "--app", "acme/production/shop"},
			"penstock: queue create: missing the queue NAME; usage: penstock queue create --app T/E/A NAME [flags]"},
		{[]string{"queue", "create", "orders"},
			"penstock: queue create: missing --app (tenant/environment/application); usage: penstock queue create --app T/E/A NAME [flags]"},
		{[]string{"queue", "dead-letters", "get", "--app", "a/b/c"},
			"penstock: queue dead-letters get: missing the QUEUE and the SEQ; usage: penstock queue dead-letters get --app T/E/A QUEUE SEQ [flags]"},
		{[]string{"queue", "ack", "--app", "a/b/c", "orders"},
			"penstock: queue ack: missing at least one TOKEN; usage: penstock queue ack --app T/E/A NAME TOKEN... [flags]"},
		{[]string{"role", "revoke"}, "penstock: role revoke: missing the role binding ID; usage: penstock role revoke ID [flags]"},
		{[]string{"app", "create", "--env", "acme/production"},
			"penstock: app create: missing the application NAME; usage: penstock app create --env T/E NAME [flags]"},
		{[]string{"queue", "list", "--app", "a/b/c", "orders"},
			`penstock: queue list: takes no arguments, not also "orders"; usage: penstock queue list --app T/E/A [flags]`},
		{[]string{"tenant", "create", "acme", "globex"},
			`penstock: tenant create: takes the tenant NAME, not also "globex"; usage: penstock tenant create NAME [flags]`},
		{[]string{"queue", "create", "--app", "a/b/c", "orders", "--foo"},
			"penstock: queue create: unknown flag --foo; run penstock queue create --help"},
		{[]string{"queue", "create", "--app", "a/b/c", "orders", "--max-deliveries", "many"},
			`penstock: queue create: --max-deliveries "many" is not a whole number; run penstock queue create --help`},
		{[]string{"queue", "consume", "--app", "a/b/c", "orders", "--wait", "soon"},
			`penstock: queue consume: --wait "soon" is not a duration such as 30s, 5m or 2h; run penstock queue consume --help`},
		{[]string{"exchange", "create", "--app", "a/b/c", "events", "--type"},
			"penstock: exchange create: --type needs a value: direct, fanout or topic; run penstock exchange create --help"},
		{[]string{"quue", "list"}, `penstock: unknown command "quue" for "penstock"; did you mean queue?; run penstock --help`},
		{[]string{"queue", "craete"}, `penstock: unknown command "craete" for "penstock queue"; did you mean create?; run penstock queue --help`},
		{[]string{"queue", "create", "--app", "a/b/c", "Bad_Name"}, `penstock: queue name "Bad_Name" is not valid: ` + nameRule},
		{[]string{"queue", "create", "--app", "Acme/b/c", "orders"}, `penstock: --app: tenant name "Acme" is not valid: ` + nameRule},
		{[]string{"queue", "stats", "--app", "acme/production", "orders"}, `penstock: --app "acme/production": must be tenant/environment/application`},
		{[]string{"exchange", "bind", "--app", "a/b/c", "events", "--queue", "Orders"}, `penstock: --queue: queue name "Orders" is not valid: ` + nameRule},
		{[]string{"secrets", "put", "--app", "a/b/c", "db.password"},
			`penstock: secret name "db.password" is not valid: use 1 to 128 letters, digits, '_' and '-'`},
		{[]string{"pipeline", "get", "--app", "a/b/c", strings.Repeat("p", 59)},
			`penstock: pipeline name "` + strings.Repeat("p", 59) + `" is not valid: use 1 to 58 lower-case letters, digits and '-', starting with a letter or digit`},
		{[]string{"user", "disable", "Bob"}, `penstock: user name "Bob" is not valid: ` + nameRule},
		{[]string{"env", "create", "--tenant", "ACME", "qa"}, `penstock: --tenant: tenant name "ACME" is not valid: ` + nameRule},
		{[]string{"login", "--user", "root@host"}, `penstock: --user: user name "root@host" is not valid: ` + nameRule},
	} {
		// No server: each mistake is caught before a request, even before the CA is read.
		code, out, errOut := run(t, nil, c.args...)
		if code != 1 || out != "" || errOut != c.want+"\n" {
			t.Errorf("penstock %s: exit %d, stdout %q, stderr\n%q, want\n%q", strings.Join(c.args, " "), code, out, errOut, c.want+"\n")
		}
	}
}
