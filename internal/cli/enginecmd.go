package cli

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/penstock/penstock/internal/engine"
)

func engineCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "engine", Short: "The NATS JetStream engine (docs/operations.md#external-nats)"}
	cmd.AddCommand(operatorInitCmd())
	return cmd
}

func operatorInitCmd() *cobra.Command {
	var dir, name string
	cmd := &cobra.Command{
		Use:   "operator-init --dir DIR",
		Short: "Create a NATS operator for an external deployment in operator mode: keys, JWTs and the servers' resolver configuration",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" {
				return errors.New("--dir is required: a new directory for the operator's files")
			}
			s, err := engine.NewOperatorSetup(name)
			if err != nil {
				return err
			}
			if err := s.Write(dir); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "operator %q in %s:\n", name, dir)
			fmt.Fprintf(out, "  %-30s the operator's JWT, which every nats-server trusts\n", engine.OperatorJWTFile)
			fmt.Fprintf(out, "  %-30s for nats-server: include it in each server's configuration (it names absolute paths)\n", engine.ResolverConfFile)
			fmt.Fprintf(out, "  %-30s the signing key for engine.nats_operator_key_file (0600)\n", engine.OperatorSigningFile)
			fmt.Fprintf(out, "  %-30s a system account user for engine.nats_system_creds_file (0600)\n", engine.SystemCredsFile)
			fmt.Fprintf(out, "  %-30s the operator's own key: it signs only the operator JWT; move it offline\n", engine.OperatorSeedFile)
			fmt.Fprintf(out, "then: penstock serve --nats-url nats://HOST:4222 --nats-operator-key %s --nats-system-creds %s\n",
				filepath.Join(dir, engine.OperatorSigningFile), filepath.Join(dir, engine.SystemCredsFile))
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "a new directory for the operator's files")
	cmd.Flags().StringVar(&name, "name", "penstock", "the operator's name")
	return cmd
}
