package cli

import (
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/penstock/penstock/internal/config"
)

func configCmd(environ []string) *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "Work with configuration files"}
	check := &cobra.Command{
		Use:   "check FILE",
		Short: "Validate a configuration file, with the PENSTOCK_* environment, as serve would read them",
		Long: `Validate a configuration file together with the PENSTOCK_* environment variables,
exactly as serve would read them. Every problem is printed on its own line as
"field.path: message"; the exit status is 1 if there is any.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, err := config.Load(config.Sources{File: args[0], Environ: environ})
			if err != nil {
				printConfigErrors(cmd.ErrOrStderr(), err)
				return exitError{code: 1}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: ok\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(check)
	return cmd
}

// printConfigErrors prints one line per field error.
func printConfigErrors(w io.Writer, err error) {
	var fe config.FieldErrors
	if errors.As(err, &fe) {
		fmt.Fprintf(w, "configuration has %d error(s):\n", len(fe))
		for _, e := range fe {
			fmt.Fprintf(w, "  %s\n", e)
		}
		return
	}
	fmt.Fprintf(w, "configuration: %v\n", err)
}
