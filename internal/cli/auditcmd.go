package cli

import (
	"context"
	"fmt"
	"net/url"

	"github.com/spf13/cobra"
)

func auditCmd(environ []string) *cobra.Command {
	list := apiCmd(environ, "list [--tenant T] [--actor A] [--action X] [--result R] [--since T] [--until T]",
		"Audit events, oldest first; --cursor continues a page", cobra.NoArgs,
		func(ctx context.Context, cf *clientFlags, cmd *cobra.Command, _ []string) error {
			q := url.Values{}
			for _, f := range []string{"tenant", "actor", "action", "result", "since", "until", "cursor", "limit"} {
				if v, _ := cmd.Flags().GetString(f); v != "" {
					q.Set(f, v)
				}
			}
			return jsonCall("GET", func([]string) string { return "/v1/audit?" + q.Encode() }, nil)(ctx, cf, cmd, nil)
		})
	for _, f := range []struct{ name, usage string }{
		{"tenant", "a tenant's events (tenant auditors and owners must give theirs)"}, {"actor", "user:<name>, apikey:<id>, anonymous, system"},
		{"action", "such as secret.write or auth.login"}, {"result", "ok, denied, error or started"},
		{"since", "RFC 3339 time"}, {"until", "RFC 3339 time"}, {"cursor", "next_cursor of the previous page"}, {"limit", "events per page (1-1000)"},
	} {
		list.Flags().String(f.name, "", f.usage)
	}
	verify := apiCmd(environ, "verify", "Walk every chain and checkpoint; exit 1 at the first break", cobra.NoArgs,
		func(ctx context.Context, cf *clientFlags, cmd *cobra.Command, _ []string) error {
			var rep struct {
				OK          bool           `json:"ok"`
				Events      int            `json:"events"`
				Checkpoints int            `json:"checkpoints"`
				Chains      int            `json:"chains"`
				Break       map[string]any `json:"break"`
			}
			if err := cf.call(ctx, "GET", "/v1/audit/verify", nil, &rep); err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if !rep.OK {
				fmt.Fprintf(w, "BROKEN: %v at sequence %v (chain %v): %v\n", rep.Break["kind"], rep.Break["seq"], rep.Break["chain"], rep.Break["detail"])
				return exitError{code: 1}
			}
			fmt.Fprintf(w, "ok: %d events in %d chains, %d checkpoints\n", rep.Events, rep.Chains, rep.Checkpoints)
			return nil
		})
	return group("audit", "The tamper-evident audit log", list, verify)
}
