package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

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
		appFlag(runNowCmd(environ, path)),
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

// runNowCmd starts a run and, with --wait (the default on a terminal), follows it: progress on
// standard error, the run's totals at the end, and a non-zero exit with its error when it
// fails.
func runNowCmd(environ []string, path func(*cobra.Command, string) (string, error)) *cobra.Command {
	cmd := apiCmd(environ, "run-now --app T/E/A NAME [--wait]",
		"Start a run now, whatever the schedule; --wait follows it to its end (the default on a terminal)", cobra.ExactArgs(1),
		func(ctx context.Context, cf *clientFlags, cmd *cobra.Command, a []string) error {
			p, err := path(cmd, a[0])
			if err != nil {
				return err
			}
			var started struct {
				Run string `json:"run"`
			}
			var raw json.RawMessage
			if err := cf.call(ctx, "POST", p+"/run", nil, &raw); err != nil {
				return err
			}
			if err := json.Unmarshal(raw, &started); err != nil || started.Run == "" {
				return fmt.Errorf("the server did not name the run it started: %s", raw)
			}
			if !waitFlag(cmd) {
				return render(cmd, raw, "")
			}
			return followRun(ctx, cf, cmd, p, started.Run)
		})
	cmd.Flags().Bool("wait", false, "follow the run to its end and exit non-zero if it fails (default: on when the output is a terminal)")
	return cmd
}

// followRun polls a pipeline's runs until run ends.
func followRun(ctx context.Context, cf *clientFlags, cmd *cobra.Command, path, id string) error {
	pr := newProgress(cmd)
	var run pipeline.Run
	absent := 0
	err := poll(ctx, 500*time.Millisecond, func() (bool, error) {
		var out struct {
			Runs []pipeline.Run `json:"runs"`
		}
		if err := cf.call(ctx, "GET", path+"/runs", nil, &out); err != nil {
			return false, err
		}
		for _, r := range out.Runs {
			switch {
			case r.ID != id:
				continue
			case r.Status == "queued":
				absent = 0
				pr.show("run " + id + ": waiting for the run before it to end")
				return false, nil
			}
			run = r
			pr.show(runLine(r))
			return r.Status != "running", nil
		}
		// A run the server answered for is queued, running or done: one that is none of these
		// was dropped before it began (the pipeline was paused, changed or deleted, or the
		// server restarted). Twice, so that a run moving from one to the next is not taken
		// for one.
		if absent++; absent >= 2 {
			return false, fmt.Errorf("run %s did not start and will not: the pipeline was paused, changed or deleted, or the server restarted, "+
				"before it began (penstock pipeline runs; start another with penstock pipeline run-now)", id)
		}
		return false, nil
	})
	pr.end()
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("stopped following run %s; it goes on (penstock pipeline runs)", id)
		}
		return err
	}
	if f, _ := outputFormat(cmd); f != formatTable {
		b, _ := json.Marshal(run)
		if err := render(cmd, b, ""); err != nil {
			return err
		}
	} else {
		fmt.Fprintln(cmd.OutOrStdout(), runLine(run))
	}
	if run.Failed > 0 {
		app, _ := cmd.Flags().GetString("app")
		fmt.Fprintf(cmd.ErrOrStderr(), "%s record(s) went to the dead-letter queue with their error: penstock queue consume --app %s %s-dlq\n",
			count(run.Failed), app, path[strings.LastIndex(path, "/")+1:])
	}
	if run.Status != "succeeded" {
		msg := run.Error
		if msg == "" {
			msg = "no error recorded"
		}
		return fmt.Errorf("run %s %s: %s", run.ID, run.Status, msg)
	}
	return nil
}

// runLine is a run's state and totals in one line.
func runLine(r pipeline.Run) string {
	d := time.Duration(r.Seconds * float64(time.Second))
	rate := ""
	if r.Seconds > 0 && r.In > 0 {
		rate = fmt.Sprintf("  %s records/s", count(int64(float64(r.In)/r.Seconds)))
	}
	return fmt.Sprintf("run %s %s: %s read, %s written, %s filtered, %s dead-lettered in %s%s",
		r.ID, r.Status, count(r.In), count(r.Out), count(r.Filtered), count(r.Failed), elapsed(d), rate)
}
