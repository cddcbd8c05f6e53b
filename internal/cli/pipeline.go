package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"

	"github.com/spf13/cobra"

	"github.com/penstock/penstock/internal/app"
	"github.com/penstock/penstock/internal/pipeline"
)

func pipelineCmd(environ []string) *cobra.Command {
	cmd := &cobra.Command{Use: "pipeline", Short: "Pipelines: source -> transforms -> sink, scheduled or continuous"}
	cmd.AddCommand(pipelineValidateCmd())
	path := func(cmd *cobra.Command, name string) (string, error) {
		a, _ := cmd.Flags().GetString("app")
		base, err := fabricBase(a)
		if err != nil {
			return "", err
		}
		if name == "" {
			return base + "/pipelines", nil
		}
		return base + "/pipelines/" + url.PathEscape(name), nil
	}
	on := func(method, suffix string) func(context.Context, *clientFlags, *cobra.Command, []string) error {
		return func(ctx context.Context, cf *clientFlags, cmd *cobra.Command, a []string) error {
			name := ""
			if len(a) > 0 {
				name = a[0]
			}
			p, err := path(cmd, name)
			if err != nil {
				return err
			}
			return jsonCall(method, func([]string) string { return p + suffix }, nil)(ctx, cf, cmd, a)
		}
	}
	appFlag := func(c *cobra.Command) *cobra.Command {
		c.Flags().String("app", "", "tenant/environment/application")
		_ = c.MarkFlagRequired("app")
		return c
	}
	apply := apiCmd(environ, "apply --app T/E/A -f FILE [--dry-run]", "Create or update a pipeline from YAML or JSON (validated completely by the server first)", cobra.NoArgs,
		func(ctx context.Context, cf *clientFlags, cmd *cobra.Command, a []string) error {
			file, _ := cmd.Flags().GetString("file")
			dry, _ := cmd.Flags().GetBool("dry-run")
			spec, err := readSpec(file)
			if err != nil {
				return err
			}
			p, err := path(cmd, spec.Name)
			if err != nil {
				return err
			}
			if dry {
				p += "?dry_run=true"
			}
			return jsonCall("PUT", func([]string) string { return p }, func([]string) any { return json.RawMessage(spec.JSON()) })(ctx, cf, cmd, a)
		})
	apply.Flags().StringP("file", "f", "", "the spec (YAML or JSON)")
	apply.Flags().Bool("dry-run", false, "validate on the server (secrets, egress) without storing")
	_ = apply.MarkFlagRequired("file")
	cmd.AddCommand(
		appFlag(apply),
		appFlag(apiCmd(environ, "list --app T/E/A", "List an application's pipelines", cobra.NoArgs, on("GET", ""))),
		appFlag(apiCmd(environ, "get --app T/E/A NAME", "Show a pipeline: spec, version, state, last run", cobra.ExactArgs(1), on("GET", ""))),
		appFlag(apiCmd(environ, "delete --app T/E/A NAME", "Stop and delete a pipeline (its dead-letter queue stays)", cobra.ExactArgs(1), on("DELETE", ""))),
		appFlag(apiCmd(environ, "pause --app T/E/A NAME", "Pause: the batch in flight commits, then the pipeline stops", cobra.ExactArgs(1), on("POST", "/pause"))),
		appFlag(apiCmd(environ, "resume --app T/E/A NAME", "Resume a paused pipeline", cobra.ExactArgs(1), on("POST", "/resume"))),
		appFlag(apiCmd(environ, "run-now --app T/E/A NAME", "Start a run now, whatever the schedule", cobra.ExactArgs(1), on("POST", "/run"))),
		appFlag(apiCmd(environ, "runs --app T/E/A NAME", "The last 50 runs: counts, duration, error", cobra.ExactArgs(1), on("GET", "/runs"))),
		appFlag(apiCmd(environ, "logs --app T/E/A NAME", "The last 500 log lines (redacted)", cobra.ExactArgs(1), on("GET", "/logs"))),
	)
	return cmd
}

func readSpec(file string) (pipeline.Spec, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return pipeline.Spec{}, err
	}
	// Every error names file, with its line and column.
	spec, _, err := pipeline.Load(file, b, app.Connectors())
	return spec, err
}

func pipelineValidateCmd() *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "validate -f FILE",
		Short: "Validate a spec offline: structure, connectors' settings, transforms (the server also checks secrets and egress)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			spec, err := readSpec(file)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: valid (pipeline %s, schedule %s)\n", file, spec.Name, spec.Schedule)
			return nil
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "the spec (YAML or JSON)")
	_ = cmd.MarkFlagRequired("file")
	return cmd
}
