package cli

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/penstock/penstock/internal/app"
)

func doctorCmd(environ []string) *cobra.Command {
	var opts app.DoctorOptions
	var quick bool
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check a data directory: key files, and every stream against what was recorded",
		Long: `Check a data directory. On a stopped directory it opens the store as serve does (no
listeners), names any missing or damaged key file, compares every stream with the counts
recorded at the last clean stop (or the last periodic record after a crash), and reads every
message back (--quick skips that). On a directory a server is running on, it shows the
findings that server recorded.

Exit status: 0 when healthy, 1 when something is damaged or cannot be opened.
After restoring the damaged streams (docs/operations.md), or to accept the loss,
run it again with --accept on the stopped directory.`,
		Args: cobra.NoArgs,
	}
	keys := configFlags(cmd.Flags())
	cmd.Flags().BoolVar(&quick, "quick", false, "compare counts only; do not read every message")
	cmd.Flags().BoolVar(&opts.Accept, "accept", false, "clear the findings and record the streams as they are now")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		cfg, err := loadConfig(cmd.Flags(), keys, environ)
		if err != nil {
			printConfigErrors(cmd.ErrOrStderr(), err)
			return exitError{code: 2}
		}
		opts.Scan = !quick
		rep, err := app.Doctor(cmd.Context(), cfg, opts)
		if err != nil {
			fmt.Fprintf(cmd.ErrOrStderr(), "penstock doctor: %s: %v\n", cfg.DataDir, err)
			return exitError{code: 1}
		}
		printDoctor(cmd.OutOrStdout(), cfg.DataDir, rep, opts)
		if len(rep.Findings) > 0 && rep.Accepted == 0 {
			return exitError{code: 1}
		}
		return nil
	}
	return cmd
}

func printDoctor(w io.Writer, dir string, rep app.DoctorReport, opts app.DoctorOptions) {
	recorded := "no record yet (first start, or a directory from before records)"
	if !rep.Recorded.IsZero() {
		kind := "a periodic record (the last stop was not clean)"
		if rep.RecordedClean {
			kind = "the last clean stop"
		}
		recorded = fmt.Sprintf("%s at %s", kind, stamp(rep.Recorded))
	}
	if rep.Running {
		fmt.Fprintf(w, "%s: a server is running on it; the findings it has recorded (its latest record: %s):\n", dir, stamp(rep.Recorded))
	} else {
		how := "counts compared"
		if opts.Scan {
			how = "counts compared and every message read"
		}
		fmt.Fprintf(w, "%s: %d streams, %d messages; %s with %s\n", dir, rep.Streams, rep.Messages, how, recorded)
	}
	if len(rep.Findings) == 0 {
		fmt.Fprintln(w, "ok: no damage found")
		return
	}
	fmt.Fprintf(w, "DAMAGED: %d finding(s)\n", len(rep.Findings))
	for _, f := range rep.Findings {
		line := fmt.Sprintf("  %s: %s: %s", f.Name(), f.Problem, f.Detail)
		if f.Missing != "" {
			line += fmt.Sprintf(" (sequences %s)", f.Missing)
		}
		fmt.Fprintln(w, line)
	}
	if rep.Accepted > 0 {
		fmt.Fprintf(w, "accepted: %d finding(s) cleared; the streams as they are now are the new record\n", rep.Accepted)
		return
	}
	fmt.Fprintln(w, "recover: restore the directory from a copy or a backup taken before the damage (docs/operations.md); "+
		"to accept the loss instead, run penstock doctor --accept on the stopped directory")
}
