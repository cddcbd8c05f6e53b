package cli

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/penstock/penstock/internal/app"
)

func serveCmd(environ []string) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run Penstock: the embedded engine and the HTTPS API",
		Long: `Run Penstock. With no configuration it keeps its data in ./penstock-data, embeds a
NATS JetStream engine and serves the HTTPS API on https://127.0.0.1:8443 with a
certificate from its own CA (penstock-data/tls/ca.crt).

SIGTERM or SIGINT drains in-flight requests and shuts the engine down cleanly;
SIGHUP reloads the TLS certificate.`,
		Args: cobra.NoArgs,
	}
	keys := configFlags(cmd.Flags())
	var restoreFrom, restoreID string
	cmd.Flags().StringVar(&restoreFrom, "restore-from", "", "on an empty data directory, restore the newest full backup that verifies from this target URL first")
	cmd.Flags().StringVar(&restoreID, "restore-id", "", "with --restore-from: restore this backup instead of the newest")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		cfg, err := loadConfig(cmd.Flags(), keys, environ)
		if err != nil {
			printConfigErrors(cmd.ErrOrStderr(), err)
			return exitError{code: 2}
		}
		log := newLogger(cmd.ErrOrStderr(), cfg.Log.Level)
		// Take SIGHUP from the start: its default action would kill the process during a
		// long engine recovery.
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)

		log.Info("starting", "version", Version(), "config", cfg)
		var opts []app.Option
		if restoreFrom != "" {
			opts = append(opts, app.RestoreFrom(restoreFrom, restoreID, false))
		} else if restoreID != "" {
			fmt.Fprintln(cmd.ErrOrStderr(), "penstock: --restore-id needs --restore-from")
			return exitError{code: 2}
		}
		a, err := app.New(cmd.Context(), cfg, log, Version(), opts...)
		if err != nil {
			// A refusal is for the person at the terminal: one plain line, no log record.
			fmt.Fprintf(cmd.ErrOrStderr(), "penstock: cannot start: %v\n", err)
			return exitError{code: 1}
		}
		if rep := a.Restored(); rep != nil {
			fmt.Fprintf(cmd.OutOrStdout(), "Restored backup %s: %d parts, %d messages.\n", rep.ID, rep.Parts, rep.Messages)
		}
		if pw := a.BootstrapPassword(); !pw.IsZero() {
			// Standard output, not the log: shown once, never logged or stored in the clear.
			fmt.Fprintf(cmd.OutOrStdout(), "\nFirst start: platform administrator %q, one-time password:\n\n    %s\n\n"+
				"Log in with: penstock login --user admin < password-file\n"+
				"It must be changed, and a second factor enrolled, at first login. It is not shown again.\n\n", "admin", pw.Reveal())
		}
		ctx, cancel := context.WithCancel(cmd.Context())
		reloads := make(chan struct{})
		go func() {
			defer close(reloads)
			for {
				select {
				case <-ctx.Done():
					return
				case <-hup:
					if err := a.Reload(); err != nil {
						log.Error("reload failed; the previous certificate stays in use", "error", err)
					}
				}
			}
		}()
		err = a.Run(ctx)
		cancel()
		<-reloads
		if err != nil {
			log.Error("stopped with error", "error", err)
			return exitError{code: 1}
		}
		return nil
	}
	return cmd
}

func newLogger(w interface{ Write([]byte) (int, error) }, level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l}))
}
