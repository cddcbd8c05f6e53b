package cli

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/penstock/penstock/internal/authz"
)

func secretsCmd(environ []string) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "secrets",
		Short: "An application's secrets, write-only: " + holders(authz.SecretWrite) + " store them",
		Long: `An application's secrets: connector credentials, sealed with the application's data key.
Write-only: no command or route returns a value.

Who may, with a role bound at the application, its environment or its tenant (or as a
platform-admin):
  put, delete   ` + string(authz.SecretWrite) + `: ` + holders(authz.SecretWrite) + `
  list          ` + string(authz.SecretRead) + `: ` + holders(authz.SecretRead),
	}
	cmd.AddCommand(secretsPutCmd(environ), secretsListCmd(environ), secretsDeleteCmd(environ))
	return cmd
}

// holders names the tenant roles that grant a, as the API decides (platform-admin holds
// every action).
func holders(a authz.Action) string {
	var names []string
	for _, r := range authz.Roles() {
		if r != authz.PlatformAdmin && slices.Contains(authz.Actions(r), a) {
			names = append(names, string(r))
		}
	}
	if len(names) < 2 {
		return strings.Join(names, "")
	}
	return strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]
}

// needs says, for a subcommand's help, who may run it.
func needs(a authz.Action) string {
	return fmt.Sprintf("Needs %s: %s at the application, its environment or its tenant, or platform-admin.", a, holders(a))
}

// appPath is the API path of an application's secrets.
func appPath(app string) (string, error) {
	base, err := fabricBase(app)
	return base + "/secrets", err
}

func secretsPutCmd(environ []string) *cobra.Command {
	var (
		app string
	)
	cf := clientFlags{environ: environ}
	cmd := &cobra.Command{
		Use:   "put --app TENANT/ENV/APP NAME < value",
		Short: "Store a secret; the value is read from standard input, never from the command line",
		Long: `Store a secret. The value is read from standard input, never from the command line, so it
stays out of shell history and process lists:

  printf '%s' "$VALUE" | penstock secrets put --app acme/production/billing db-password

Line endings at the end of the input (\n, \r\n) are removed, so echo, a here-string or a file
ending in a newline stores the value without it; a value that is empty, or only line endings,
is refused. The value must be UTF-8 text (base64-encode binary values), at most 64 KiB.

The first put of a name stores revision 1 and each later put of it the next revision; other
secrets do not change it. A deleted secret stored again starts at 1.

` + needs(authz.SecretWrite),
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			base, err := appPath(app)
			if err != nil {
				return err
			}
			value, err := io.ReadAll(io.LimitReader(bufio.NewReader(cmd.InOrStdin()), 1<<20))
			if err != nil {
				return fmt.Errorf("read the secret value from standard input: %w", err)
			}
			v := strings.TrimRight(string(value), "\r\n")
			switch {
			case v == "":
				return fmt.Errorf("no secret value on standard input: pipe it in, for example printf '%%s' \"$VALUE\" | penstock secrets put --app %s %s", app, args[0])
			case !utf8.ValidString(v):
				return errors.New("the value on standard input is not UTF-8 text: secrets are text, so encode a binary value (base64, for example)")
			}
			var out struct {
				Name     string `json:"name"`
				Revision uint64 `json:"revision"`
			}
			if err := cf.call(cmd.Context(), "PUT", base+"/"+url.PathEscape(args[0]), map[string]string{"value": v}, &out); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s stored (revision %d)\n", out.Name, out.Revision)
			return nil
		},
	}
	cmd.Flags().StringVar(&app, "app", "", "tenant/environment/application")
	_ = cmd.MarkFlagRequired("app")
	cf.addAuth(cmd)
	return cmd
}

func secretsListCmd(environ []string) *cobra.Command {
	var (
		app string
	)
	cf := clientFlags{environ: environ}
	cmd := &cobra.Command{
		Use:   "list --app TENANT/ENV/APP",
		Short: "List names, revisions and times (never values)",
		Long:  "List an application's secrets: name, revision, time of the last put and data key version, never values.\n\n" + needs(authz.SecretRead),
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			base, err := appPath(app)
			if err != nil {
				return err
			}
			var out json.RawMessage
			if err := cf.call(cmd.Context(), "GET", base, nil, &out); err != nil {
				return err
			}
			return render(cmd, out, "")
		},
	}
	cmd.Flags().StringVar(&app, "app", "", "tenant/environment/application")
	_ = cmd.MarkFlagRequired("app")
	cf.addAuth(cmd)
	return cmd
}

func secretsDeleteCmd(environ []string) *cobra.Command {
	var (
		app string
	)
	cf := clientFlags{environ: environ}
	cmd := &cobra.Command{
		Use:   "delete --app TENANT/ENV/APP NAME",
		Short: "Delete a secret",
		Long:  "Delete a secret. Stored again later, it starts again at revision 1.\n\n" + needs(authz.SecretWrite),
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			base, err := appPath(app)
			if err != nil {
				return err
			}
			if err := cf.call(cmd.Context(), "DELETE", base+"/"+url.PathEscape(args[0]), nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s deleted\n", args[0])
			return nil
		},
	}
	cmd.Flags().StringVar(&app, "app", "", "tenant/environment/application")
	_ = cmd.MarkFlagRequired("app")
	cf.addAuth(cmd)
	return cmd
}
