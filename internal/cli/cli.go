// Package cli owns the penstock command line: parsing, printing and exit codes. It is the
// only package that writes to stdout or exits the process, and for everything beyond serve it
// is a client of the HTTPS API.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
)

// exitError carries an exit code for errors that were already reported.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit %d", e.code) }

// Main runs the command line and exits with its status.
func Main(ctx context.Context) {
	os.Exit(Run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Environ()))
}

// Run executes one command line and returns the exit code; tests call it directly.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer, environ []string) int {
	root := commands(environ)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetArgs(args)
	root.SetFlagErrorFunc(flagError)
	guard(root)
	cmd, err := root.ExecuteContextC(ctx)
	if cmd == nil {
		cmd = root
	}
	var ee exitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.code
	default:
		fmt.Fprintln(stderr, "penstock: "+safeText(explain(cmd, err)))
		return 1
	}
}

// commands is the command tree.
func commands(environ []string) *cobra.Command {
	root := &cobra.Command{
		Use:           "penstock",
		Short:         "Penstock: secure multi-tenant message fabric and ETL pipelines",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	addOutputFlag(root)
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		_, err := outputFormat(cmd)
		return err
	}
	root.AddCommand(serveCmd(environ), doctorCmd(environ), versionCmd(), configCmd(environ), statusCmd(), keysCmd(environ), secretsCmd(environ))
	root.AddCommand(accessCmds(environ)...)
	root.AddCommand(auditCmd(environ), backupCmd(environ), queueCmd(environ), exchangeCmd(environ), pipelineCmd(environ))
	root.AddCommand(clusterCmd(environ), nodeCmd(environ), engineCmd(), notifyCmd(environ), alertsCmd(environ), retentionCmd(environ))
	root.AddCommand(authCmd(environ), directoryCmd(environ))
	return root
}
