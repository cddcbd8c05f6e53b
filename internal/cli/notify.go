package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v4"

	"github.com/penstock/penstock/internal/authz"
)

func notifyCmd(environ []string) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "notify",
		Short: "Notification channels and alerting rules (docs/notifications.md)",
		Long: `Notification channels (email, sms, voice, slack, teams, webhook) and the rules that raise
alerts through them. --tenant names the tenant; without it, the platform's own (platform-admin).

Who may, with a role bound at the tenant (or as a platform-admin):
  channel put/delete, rule put/delete, test   ` + string(authz.NotifyManage) + `: ` + holders(authz.NotifyManage) + `
  list                                        ` + string(authz.TenantRead) + `: ` + holders(authz.TenantRead),
	}
	channel := &cobra.Command{Use: "channel", Short: "Channels: where notices go, with their credentials (write-only)"}
	channel.AddCommand(notifyPutCmd(environ, "channels", `Create or replace a channel from a YAML or JSON file. Credentials (password,
auth_token, url, secret) are write-only; left out of a later put, they keep their stored values.

  penstock notify channel put --tenant acme -f ops-email.yaml ops-email`),
		notifyListCmd(environ, "channels"), notifyDeleteCmd(environ, "channels"))
	rule := &cobra.Command{Use: "rule", Short: "Rules: which events raise an alert, whom it reaches, and its escalation"}
	rule.AddCommand(notifyPutCmd(environ, "rules", `Create or replace a rule from a YAML or JSON file.

  penstock notify rule put --tenant acme -f orders-backlog.yaml orders-backlog`),
		notifyListCmd(environ, "rules"), notifyDeleteCmd(environ, "rules"))
	cmd.AddCommand(channel, rule, notifyTestCmd(environ), notifyEventsCmd(environ))
	return cmd
}

func tenantQS(tenant string) string {
	if tenant == "" {
		return ""
	}
	return "?tenant=" + url.QueryEscape(tenant)
}

// readDoc reads a YAML or JSON file (or standard input, "-") as JSON.
func readDoc(cmd *cobra.Command, file string) (any, error) {
	var b []byte
	var err error
	if file == "-" {
		b, err = io.ReadAll(io.LimitReader(cmd.InOrStdin(), 1<<20))
	} else {
		b, err = os.ReadFile(file)
	}
	if err != nil {
		return nil, err
	}
	var doc map[string]any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return doc, nil
}

func notifyPutCmd(environ []string, kind, long string) *cobra.Command {
	var tenant, file string
	cf := clientFlags{environ: environ}
	cmd := &cobra.Command{
		Use:   "put [--tenant T] -f FILE NAME",
		Short: "Create or replace one",
		Long:  long + "\n\nNeeds " + string(authz.NotifyManage) + ".",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			doc, err := readDoc(cmd, file)
			if err != nil {
				return err
			}
			var out json.RawMessage
			if err := cf.call(cmd.Context(), "PUT", "/v1/notify/"+kind+"/"+url.PathEscape(args[0])+tenantQS(tenant), doc, &out); err != nil {
				return err
			}
			return render(cmd, out, args[0]+" stored")
		},
	}
	cmd.Flags().StringVar(&tenant, "tenant", "", "the tenant (empty: the platform's)")
	cmd.Flags().StringVarP(&file, "file", "f", "", "YAML or JSON, - for standard input")
	_ = cmd.MarkFlagRequired("file")
	cf.addAuth(cmd)
	return cmd
}

func notifyListCmd(environ []string, kind string) *cobra.Command {
	var tenant string
	cf := clientFlags{environ: environ}
	cmd := &cobra.Command{
		Use:   "list [--tenant T]",
		Short: "List them (channels without their credentials)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out json.RawMessage
			if err := cf.call(cmd.Context(), "GET", "/v1/notify/"+kind+tenantQS(tenant), nil, &out); err != nil {
				return err
			}
			return render(cmd, out, "")
		},
	}
	cmd.Flags().StringVar(&tenant, "tenant", "", "the tenant (empty: the platform's)")
	cf.addAuth(cmd)
	return cmd
}

func notifyDeleteCmd(environ []string, kind string) *cobra.Command {
	var tenant string
	cf := clientFlags{environ: environ}
	cmd := &cobra.Command{
		Use:   "delete [--tenant T] NAME",
		Short: "Delete one",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := cf.call(cmd.Context(), "DELETE", "/v1/notify/"+kind+"/"+url.PathEscape(args[0])+tenantQS(tenant), nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s deleted\n", args[0])
			return nil
		},
	}
	cmd.Flags().StringVar(&tenant, "tenant", "", "the tenant (empty: the platform's)")
	cf.addAuth(cmd)
	return cmd
}

func notifyTestCmd(environ []string) *cobra.Command {
	var tenant string
	cf := clientFlags{environ: environ}
	cmd := &cobra.Command{
		Use:   "test [--tenant T] CHANNEL",
		Short: "Send a test notice through a channel now, and say whether it was taken",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := cf.call(cmd.Context(), "POST", "/v1/notify/channels/"+url.PathEscape(args[0])+"/test"+tenantQS(tenant), nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s took the test notice\n", args[0])
			return nil
		},
	}
	cmd.Flags().StringVar(&tenant, "tenant", "", "the tenant (empty: the platform's)")
	cf.addAuth(cmd)
	return cmd
}

func notifyEventsCmd(environ []string) *cobra.Command {
	cf := clientFlags{environ: environ}
	cmd := &cobra.Command{
		Use:   "events",
		Short: "List the built-in events rules can watch",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out json.RawMessage
			if err := cf.call(cmd.Context(), "GET", "/v1/notify/events", nil, &out); err != nil {
				return err
			}
			return render(cmd, out, "")
		},
	}
	cf.addAuth(cmd)
	return cmd
}

func alertsCmd(environ []string) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "alerts",
		Short: "Alerts: list, show, acknowledge (" + string(authz.AlertAck) + ": " + holders(authz.AlertAck) + ")",
	}
	var tenant, state string
	cf := clientFlags{environ: environ}
	list := &cobra.Command{
		Use:   "list [--tenant T] [--state firing|resolved|unacknowledged]",
		Short: "List alerts, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			q := url.Values{}
			if tenant != "" {
				q.Set("tenant", tenant)
			}
			if state != "" {
				q.Set("state", state)
			}
			var out json.RawMessage
			if err := cf.call(cmd.Context(), "GET", "/v1/alerts?"+q.Encode(), nil, &out); err != nil {
				return err
			}
			return render(cmd, out, "")
		},
	}
	list.Flags().StringVar(&tenant, "tenant", "", "the tenant (empty: the platform's)")
	list.Flags().StringVar(&state, "state", "", "firing, resolved or unacknowledged")
	cf.addAuth(list)
	cmd.AddCommand(list, alertCmd(environ, "show", "GET", "", "Show an alert and the delivery of each notice"),
		alertCmd(environ, "ack", "POST", "/ack", "Acknowledge an alert: its escalation stops (the resolve notice still goes out)"))
	return cmd
}

func alertCmd(environ []string, use, method, suffix, short string) *cobra.Command {
	var tenant string
	cf := clientFlags{environ: environ}
	cmd := &cobra.Command{
		Use:   use + " [--tenant T] ID",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var out json.RawMessage
			if err := cf.call(cmd.Context(), method, "/v1/alerts/"+url.PathEscape(args[0])+suffix+tenantQS(tenant), nil, &out); err != nil {
				return err
			}
			sentence := ""
			if use == "ack" {
				sentence = args[0] + " acknowledged"
			}
			return render(cmd, out, sentence)
		},
	}
	cmd.Flags().StringVar(&tenant, "tenant", "", "the tenant (empty: the platform's)")
	cf.addAuth(cmd)
	return cmd
}
