package cli

import (
	"os"
	"strings"
	"testing"
)

// The secrets commands' help says who may run them, as the API's roles grant the actions.
func TestSecretsHelpSaysWhoMay(t *testing.T) {
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"secrets", "--help"}, []string{"secret.write: owner, admin or developer", "secret.read: owner, admin, developer, operator or viewer"}},
		{[]string{"secrets", "put", "--help"}, []string{"Needs secret.write: owner, admin or developer", "revision 1", "printf '%s' \"$VALUE\" | penstock secrets put"}},
		{[]string{"secrets", "list", "--help"}, []string{"Needs secret.read: owner, admin, developer, operator or viewer"}},
		{[]string{"secrets", "delete", "--help"}, []string{"Needs secret.write: owner, admin or developer"}},
		{[]string{"--help"}, []string{"owner, admin or developer store them"}},
	} {
		code, out, errOut := run(t, nil, c.args...)
		if code != 0 {
			t.Fatalf("penstock %s: %d %s", strings.Join(c.args, " "), code, errOut)
		}
		for _, want := range c.want {
			if !strings.Contains(out, want) {
				t.Errorf("penstock %s lacks %q:\n%s", strings.Join(c.args, " "), want, out)
			}
		}
		if c.args[0] == "--help" { // other commands are the platform admin's alone
			for _, line := range strings.Split(out, "\n") {
				if strings.HasPrefix(strings.TrimSpace(line), "secrets ") {
					out = line
				}
			}
		}
		if strings.Contains(out, "platform admin") {
			t.Errorf("penstock %s still says only a platform admin may:\n%s", strings.Join(c.args, " "), out)
		}
	}
}

// secrets put refuses, before calling any server, standard input that holds no value (nothing,
// or only line endings) or that is not text, and says how to give one.
func TestSecretsPutNeedsAValueOnStandardInput(t *testing.T) {
	for _, c := range []struct{ stdin, want string }{
		{"", `no secret value on standard input: pipe it in, for example printf '%s' "$VALUE" | penstock secrets put --app acme/production/billing db-password`},
		{"\n", "no secret value on standard input"},
		{"\r\n\n", "no secret value on standard input"},
		{"\xff\xfe\n", "not UTF-8 text"},
	} {
		f, err := os.CreateTemp(t.TempDir(), "stdin")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString(c.stdin); err != nil {
			t.Fatal(err)
		}
		if _, err := f.Seek(0, 0); err != nil {
			t.Fatal(err)
		}
		saved := os.Stdin
		os.Stdin = f
		// No server listens at this address: an answer that mentions it means the value was sent.
		code, out, errOut := run(t, nil, "secrets", "put", "--server", "https://127.0.0.1:1", "--app", "acme/production/billing", "db-password")
		os.Stdin = saved
		f.Close()
		if code != 1 || out != "" || !strings.Contains(errOut, c.want) {
			t.Errorf("stdin %q: exit %d, stdout %q, stderr %q; want exit 1 with %q", c.stdin, code, out, errOut, c.want)
		}
	}
}
