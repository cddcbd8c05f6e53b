package cli

import (
	"context"
	"errors"
	"fmt"
	"net/url"

	"github.com/spf13/cobra"

	"github.com/penstock/penstock/internal/authz"
)

// envGetCmd shows an environment with its retention.
func envGetCmd(environ []string) *cobra.Command {
	return withFlag(apiCmd(environ, "get --tenant T NAME", "Show an environment: its applications, its last use, when retention warns and deletes it",
		cobra.ExactArgs(1), func(ctx context.Context, cf *clientFlags, cmd *cobra.Command, a []string) error {
			t, _ := cmd.Flags().GetString("tenant")
			return jsonCall("GET", func([]string) string { return "/v1/tenants/" + esc(t) + "/environments/" + esc(a[0]) }, nil)(ctx, cf, cmd, a)
		}), "tenant", "tenant")
}

// envDeleteCmd deletes an environment now (a tenant owner's early deletion).
func envDeleteCmd(environ []string) *cobra.Command {
	c := apiCmd(environ, "delete --tenant T NAME --confirm T/NAME",
		"Delete an environment now and crypto-shred its keys: its data becomes unrecoverable, from the store and from every backup", cobra.ExactArgs(1),
		func(ctx context.Context, cf *clientFlags, cmd *cobra.Command, a []string) error {
			t, _ := cmd.Flags().GetString("tenant")
			want := t + "/" + a[0]
			if c, _ := cmd.Flags().GetString("confirm"); c != want {
				return fmt.Errorf("--confirm must repeat the environment as %s: deletion cannot be undone", want)
			}
			if err := cf.call(ctx, "DELETE", "/v1/tenants/"+esc(t)+"/environments/"+esc(a[0])+"?confirm="+url.QueryEscape(want), nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "environment %s deleted; its data can no longer be decrypted\n", want)
			return nil
		})
	c.Long = "Needs " + string(authz.TenantDelete) + " (" + holders(authz.TenantDelete) + " or platform-admin). The same deletion as retention's: pipelines stop, native\nclients are closed, queues and exchanges are deleted, the environment's keys are destroyed, and\nthe audit log records it."
	c.Flags().String("tenant", "", "tenant")
	c.Flags().String("confirm", "", "repeat tenant/environment")
	return c
}

func retentionCmd(environ []string) *cobra.Command {
	report := apiCmd(environ, "report [--tenant T]", "Every environment: its last use, the dates of its warnings and of its deletion", cobra.NoArgs,
		func(ctx context.Context, cf *clientFlags, cmd *cobra.Command, a []string) error {
			p := "/v1/retention"
			if t, _ := cmd.Flags().GetString("tenant"); t != "" {
				p += "?tenant=" + url.QueryEscape(t)
			}
			return jsonCall("GET", func([]string) string { return p }, nil)(ctx, cf, cmd, a)
		})
	report.Flags().String("tenant", "", "one tenant (without it, every tenant: platform-admin)")
	run := apiCmd(environ, "run [--dry-run]", "Run retention now, as the scheduler does every retention.check_every", cobra.NoArgs,
		func(ctx context.Context, cf *clientFlags, cmd *cobra.Command, a []string) error {
			dry, _ := cmd.Flags().GetBool("dry-run")
			return jsonCall("POST", func([]string) string { return "/v1/retention/run" }, func([]string) any { return map[string]bool{"dry_run": dry} })(ctx, cf, cmd, a)
		})
	run.Flags().Bool("dry-run", false, "list what would be warned and deleted, and change nothing")
	set := apiCmd(environ, "set TENANT [--inactive-after 30d] [--exempt production,...]",
		"Set a tenant's retention: its own inactive_after (0: never) and its exempt environments", cobra.ExactArgs(1),
		func(ctx context.Context, cf *clientFlags, cmd *cobra.Command, a []string) error {
			if !cmd.Flags().Changed("inactive-after") && !cmd.Flags().Changed("exempt") {
				return errors.New("give --inactive-after, --exempt or both")
			}
			// What a flag leaves out stays as it is.
			path := "/v1/retention/tenants/" + esc(a[0])
			var body struct {
				InactiveAfter string   `json:"inactive_after,omitempty"`
				Exempt        []string `json:"exempt"`
			}
			if err := cf.call(ctx, "GET", path, nil, &body); err != nil {
				return err
			}
			if cmd.Flags().Changed("inactive-after") {
				body.InactiveAfter, _ = cmd.Flags().GetString("inactive-after")
			}
			if cmd.Flags().Changed("exempt") {
				body.Exempt, _ = cmd.Flags().GetStringSlice("exempt")
			}
			return jsonCall("PUT", func([]string) string { return path }, func([]string) any { return body })(ctx, cf, cmd, a)
		})
	set.Flags().String("inactive-after", "", "how long the tenant's environments may go unused (90d, 720h; 0: never deleted); \"\": the platform's")
	set.Flags().StringSlice("exempt", nil, "environments of the tenant never deleted for inactivity (replaces the list; --exempt= empties it)")
	cmd := group("retention", "Retention of unused environments (docs/retention.md)", report, run,
		group("policy", "A tenant's own retention (setting it: "+string(authz.RetentionManage)+", platform-admin only)", set,
			apiCmd(environ, "get TENANT", "Show a tenant's own retention (empty: the platform's)", cobra.ExactArgs(1),
				jsonCall("GET", func(a []string) string { return "/v1/retention/tenants/" + esc(a[0]) }, nil))))
	cmd.Long = `Environments nobody uses are warned 30, 7 and 1 days before and then deleted with their keys
(retention.inactive_after, 90d by default). report shows every environment's last use and dates;
run --dry-run lists what the next run would do.`
	return cmd
}
