package cli

import (
	"context"
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
	kinds := map[string]string{"channels": `Create or replace a channel from a YAML or JSON file. Credentials (password,
auth_token, url, secret) are write-only; left out of a later put, they keep their stored values
as long as the channel still sends them to the same server, provider or URL.

  penstock notify channel put --tenant acme -f ops-email.yaml ops-email`,
		"rules": `Create or replace a rule from a YAML or JSON file.

  penstock notify rule put --tenant acme -f orders-backlog.yaml orders-backlog`}
	sub := func(kind string) []*cobra.Command {
		base := func(a []string) string { return "/v1/notify/" + kind + "/" + esc(a[0]) }
		put := tenantCmd(environ, "put [--tenant T] -f FILE NAME", "Create or replace one", cobra.ExactArgs(1), "PUT", base, readDoc, nil)
		put.Long = kinds[kind] + "\n\nNeeds " + string(authz.NotifyManage) + "."
		put.Flags().StringP("file", "f", "", "YAML or JSON, - for standard input")
		_ = put.MarkFlagRequired("file")
		return []*cobra.Command{put,
			tenantCmd(environ, "list [--tenant T]", "List them (channels without their credentials)", cobra.NoArgs, "GET",
				func([]string) string { return "/v1/notify/" + kind }, nil, nil),
			tenantCmd(environ, "delete [--tenant T] NAME", "Delete one", cobra.ExactArgs(1), "DELETE", base, nil,
				func(a []string) string { return a[0] + " deleted" })}
	}
	cmd.AddCommand(
		group("channel", "Channels: where notices go, with their credentials (write-only)", sub("channels")...),
		group("rule", "Rules: which events raise an alert, whom it reaches, and its escalation", sub("rules")...),
		tenantCmd(environ, "test [--tenant T] CHANNEL", "Send a test notice through a channel now, and say whether it was taken",
			cobra.ExactArgs(1), "POST", func(a []string) string { return "/v1/notify/channels/" + esc(a[0]) + "/test" }, nil,
			func(a []string) string { return a[0] + " took the test notice" }),
		apiCmd(environ, "events", "List the built-in events rules can watch", cobra.NoArgs,
			jsonCall("GET", func([]string) string { return "/v1/notify/events" }, nil)))
	return cmd
}

func alertsCmd(environ []string) *cobra.Command {
	byID := func(suffix string) func(a []string) string {
		return func(a []string) string { return "/v1/alerts/" + esc(a[0]) + suffix }
	}
	list := tenantCmd(environ, "list [--tenant T] [--state firing|resolved|unacknowledged]", "List alerts, newest first", cobra.NoArgs, "GET",
		func([]string) string { return "/v1/alerts" }, nil, nil)
	list.Flags().String("state", "", "firing, resolved or unacknowledged")
	return group("alerts", "Alerts: list, show, acknowledge ("+string(authz.AlertAck)+": "+holders(authz.AlertAck)+")", list,
		tenantCmd(environ, "show [--tenant T] ID", "Show an alert and the delivery of each notice", cobra.ExactArgs(1), "GET", byID(""), nil, nil),
		tenantCmd(environ, "ack [--tenant T] ID", "Acknowledge an alert: its escalation stops (the resolve notice still goes out)",
			cobra.ExactArgs(1), "POST", byID("/ack"), nil, nil))
}

// tenantCmd is a command of notify or alerts: it calls method on path(args), with --tenant
// (none: the platform's) and --state when the command has it, and the body from body. It
// prints the answer, or the sentence said gives.
func tenantCmd(environ []string, use, short string, args cobra.PositionalArgs, method string, path func([]string) string,
	body func(*cobra.Command) (any, error), said func([]string) string) *cobra.Command {
	cmd := apiCmd(environ, use, short, args, func(ctx context.Context, cf *clientFlags, cmd *cobra.Command, a []string) error {
		q := url.Values{}
		for _, f := range []string{"tenant", "state"} {
			if v, _ := cmd.Flags().GetString(f); v != "" {
				q.Set(f, v)
			}
		}
		p := path(a)
		if len(q) > 0 {
			p += "?" + q.Encode()
		}
		var b any
		if body != nil {
			var err error
			if b, err = body(cmd); err != nil {
				return err
			}
		}
		var out json.RawMessage
		if err := cf.call(ctx, method, p, b, &out); err != nil {
			return err
		}
		if said != nil {
			fmt.Fprintln(cmd.OutOrStdout(), said(a))
			return nil
		}
		return render(cmd, out, "")
	})
	return withFlag(cmd, "tenant", "the tenant (empty: the platform's)")
}

// readDoc reads --file, a YAML or JSON document (- for standard input), as the API's JSON.
func readDoc(cmd *cobra.Command) (any, error) {
	file, _ := cmd.Flags().GetString("file")
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
