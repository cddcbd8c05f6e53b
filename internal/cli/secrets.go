package cli

import (
	"bufio"
	"fmt"
	"io"
	"net/url"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

func secretsCmd(environ []string) *cobra.Command {
	cmd := &cobra.Command{Use: "secrets", Short: "An application's secrets: write-only (platform admin)"}
	cmd.AddCommand(secretsPutCmd(environ), secretsListCmd(environ), secretsDeleteCmd(environ))
	return cmd
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
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			base, err := appPath(app)
			if err != nil {
				return err
			}
			value, err := io.ReadAll(io.LimitReader(bufio.NewReader(cmd.InOrStdin()), 1<<20))
			if err != nil {
				return err
			}
			v := strings.TrimRight(string(value), "\r\n")
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
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			base, err := appPath(app)
			if err != nil {
				return err
			}
			var out struct {
				Secrets []struct {
					Name       string `json:"name"`
					Revision   uint64 `json:"revision"`
					Updated    string `json:"updated"`
					KeyVersion int    `json:"key_version"`
				} `json:"secrets"`
			}
			if err := cf.call(cmd.Context(), "GET", base, nil, &out); err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tREVISION\tUPDATED\tKEY VERSION")
			for _, s := range out.Secrets {
				fmt.Fprintf(tw, "%s\t%d\t%s\t%d\n", s.Name, s.Revision, s.Updated, s.KeyVersion)
			}
			return tw.Flush()
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
