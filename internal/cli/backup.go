package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/penstock/penstock/internal/app"
	"github.com/penstock/penstock/internal/backup"
	"github.com/penstock/penstock/internal/config"
)

func backupCmd(environ []string) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "backup",
		Short: "Take, list, verify and restore encrypted, signed backups (see docs/operations.md)",
	}
	cmd.AddCommand(backupCreateCmd(environ), backupListCmd(environ), backupVerifyCmd(environ), backupRestoreCmd(environ))
	return cmd
}

// backupJobCmd is a command that starts a backup job through the API and, with --wait (the
// default on a terminal), follows it to its end with its progress on standard error.
func backupJobCmd(environ []string, use, short string, args cobra.PositionalArgs,
	build func(cmd *cobra.Command, tenant string, args []string) (path string, body any, err error),
	done func(w io.Writer, j backup.BackupJob)) (*cobra.Command, *string) {
	var tenant string
	cf := clientFlags{environ: environ}
	cmd := &cobra.Command{
		Use: use, Short: short, Args: args,
		RunE: func(cmd *cobra.Command, args []string) error {
			path, body, err := build(cmd, tenant, args)
			if err != nil {
				return err
			}
			var job backup.BackupJob
			if err := cf.call(cmd.Context(), "POST", path, body, &job); err != nil {
				return err
			}
			if !waitFlag(cmd) {
				return printAs(cmd, job, func(w io.Writer) {
					fmt.Fprintf(w, "%s: job %s started; follow it with --wait, or GET /v1/backups/jobs/%s\n", job.Kind, job.ID, job.ID)
				})
			}
			if job, err = followBackupJob(cmd, &cf, job); err != nil {
				return err
			}
			if job.State == backup.JobFailed {
				return fmt.Errorf("backup %s failed: %s", job.Kind, job.Error)
			}
			return printAs(cmd, job, func(w io.Writer) { done(w, job) })
		},
	}
	cmd.Flags().StringVar(&tenant, "tenant", "", "only this tenant")
	cmd.Flags().Bool("wait", false, "follow the job to its end (default: on when the output is a terminal)")
	cf.addAuth(cmd)
	return cmd, &tenant
}

// followBackupJob polls a job until it ends, showing bytes and parts done, the rate and, when
// the total is known, the time left.
func followBackupJob(cmd *cobra.Command, cf *clientFlags, job backup.BackupJob) (backup.BackupJob, error) {
	pr := newProgress(cmd)
	defer pr.end()
	start := time.Now()
	err := poll(cmd.Context(), 500*time.Millisecond, func() (bool, error) {
		if err := cf.call(cmd.Context(), "GET", "/v1/backups/jobs/"+url.PathEscape(job.ID), nil, &job); err != nil {
			return false, err
		}
		pr.show(progressLine(job, time.Since(start)))
		return job.State != backup.JobRunning, nil
	})
	return job, err
}

func progressLine(j backup.BackupJob, took time.Duration) string {
	p := j.Progress
	rate := float64(p.Bytes) / max(took.Seconds(), 0.001)
	line := fmt.Sprintf("%s: %s parts, %s at %s/s, %s", j.Kind, count(int64(p.Parts)), size(p.Bytes), size(int64(rate)), elapsed(took))
	if p.TotalParts > 0 {
		line = fmt.Sprintf("%s: %d/%d parts, %s/%s at %s/s", j.Kind, p.Parts, p.TotalParts, size(p.Bytes), size(p.TotalBytes), size(int64(rate)))
		if rate > 0 && p.TotalBytes > p.Bytes {
			line += fmt.Sprintf(", %s left", (time.Duration(float64(p.TotalBytes-p.Bytes)/rate) * time.Second).Round(time.Second))
		}
	}
	return line
}

// size prints a byte count in binary units.
func size(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func backupCreateCmd(environ []string) *cobra.Command {
	cmd, _ := backupJobCmd(environ, "create [--tenant TENANT]",
		"Back up the whole platform, or one tenant, to backup.target, while it runs", cobra.NoArgs,
		func(_ *cobra.Command, tenant string, _ []string) (string, any, error) {
			return "/v1/backups", tenantBody(tenant), nil
		},
		func(w io.Writer, j backup.BackupJob) {
			fmt.Fprintf(w, "backup %s: %d parts, %s, in %s\n", j.Backup, j.Progress.Parts, size(j.Progress.Bytes), elapsed(j.Finished.Sub(j.Started)))
		})
	return cmd
}

func backupVerifyCmd(environ []string) *cobra.Command {
	cmd, _ := backupJobCmd(environ, "verify ID [--tenant TENANT]",
		"Check a backup without restoring it: its signature, and that every part decrypts and matches its hash", cobra.ExactArgs(1),
		func(_ *cobra.Command, tenant string, args []string) (string, any, error) {
			if err := backup.ValidID(args[0]); err != nil {
				return "", nil, err
			}
			return "/v1/backups/" + url.PathEscape(args[0]) + "/verify", tenantBody(tenant), nil
		},
		func(w io.Writer, j backup.BackupJob) {
			fmt.Fprintf(w, "backup %s verifies: signature good, %d parts (%s) decrypt and match the manifest\n", j.Backup, j.Progress.Parts, size(j.Progress.Bytes))
		})
	return cmd
}

func backupListCmd(environ []string) *cobra.Command {
	var tenant string
	cf := clientFlags{environ: environ}
	cmd := &cobra.Command{
		Use:   "list [--tenant TENANT]",
		Short: "Backups in backup.target, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path := "/v1/backups"
			if tenant != "" {
				path += "?tenant=" + url.QueryEscape(tenant)
			}
			var out json.RawMessage
			if err := cf.call(cmd.Context(), "GET", path, nil, &out); err != nil {
				return err
			}
			return render(cmd, out, "no backups")
		},
	}
	withColumns(cmd, "id", "created", "tenant", "parts", "bytes", "messages", "error")
	cmd.Flags().StringVar(&tenant, "tenant", "", "the tenant's own backups and the full backups")
	cf.addAuth(cmd)
	return cmd
}

func backupRestoreCmd(environ []string) *cobra.Command {
	var dataDir, from string
	cmd, _ := backupJobCmd(environ, "restore [ID] [--tenant TENANT] [--to-data-dir DIR] [--from URL]",
		"Restore one tenant into the running platform, or the whole platform into an empty data directory", cobra.MaximumNArgs(1),
		func(_ *cobra.Command, tenant string, args []string) (string, any, error) {
			if len(args) == 0 {
				return "", nil, fmt.Errorf("give the backup ID (penstock backup list)")
			}
			if err := backup.ValidID(args[0]); err != nil {
				return "", nil, err
			}
			if tenant == "" {
				return "", nil, fmt.Errorf("--tenant is required for a restore into the running platform; a whole platform is restored into an empty data directory with --to-data-dir")
			}
			return "/v1/backups/" + url.PathEscape(args[0]) + "/restore", tenantBody(tenant), nil
		},
		func(w io.Writer, j backup.BackupJob) {
			fmt.Fprintf(w, "tenant %s restored from backup %s: %d parts, %s, in %s\n", j.Tenant, j.Backup, j.Progress.Parts, size(j.Progress.Bytes),
				elapsed(j.Finished.Sub(j.Started)))
			if j.Report != nil && len(j.Report.Skipped) > 0 {
				fmt.Fprintf(w, "not restored: %s\n", strings.Join(j.Report.Skipped, "; "))
			}
		})
	cmd.Flags().StringP("config", "c", "", "YAML configuration file, for the master key and the target's credentials (or "+config.EnvConfigFile+")")
	keys := map[string]string{}
	cmd.Flags().StringVar(&dataDir, "to-data-dir", "", "restore the whole platform into this empty data directory (offline: no server runs on it)")
	cmd.Flags().StringVar(&from, "from", "", "the backup target URL (default: backup.target)")
	online := cmd.RunE
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if dataDir == "" {
			return online(cmd, args)
		}
		cfg, err := loadConfig(cmd.Flags(), keys, environ)
		if err != nil {
			printConfigErrors(cmd.ErrOrStderr(), err)
			return exitError{code: 2}
		}
		cfg.DataDir = dataDir
		if from == "" {
			from = cfg.Backup.Target
		}
		if from == "" {
			return fmt.Errorf("--from URL or backup.target: where is the backup?")
		}
		id := ""
		if len(args) == 1 {
			if id = args[0]; backup.ValidID(id) != nil {
				return backup.ValidID(id)
			}
		}
		// The restore runs in this process: the platform opens on the new directory with
		// nothing listening but loopback ports of its own, restores, and closes.
		cfg.API.Listen, cfg.Metrics.Listen = "127.0.0.1:0", ""
		cfg.Fabric.NATSListen, cfg.Fabric.MQTTListen, cfg.Fabric.WebSocketListen = "", "", ""
		cfg.Backup.Schedule = 0
		log := newLogger(io.Discard, "error")
		pr := newProgress(cmd)
		start := time.Now()
		pr.show("restoring into " + dataDir + " ...")
		a, err := app.New(cmd.Context(), cfg, log, Version(), app.RestoreFrom(from, id, true))
		pr.end()
		if err != nil {
			return fmt.Errorf("restore: %w", err)
		}
		rep := a.Restored()
		if err := a.RestoreOnly(); err != nil {
			return err
		}
		return printAs(cmd, rep, func(w io.Writer) {
			fmt.Fprintf(w, "backup %s restored into %s: %d parts, %s messages, %s, in %s\n", rep.ID, dataDir, rep.Parts,
				count(int64(rep.Messages)), size(rep.Bytes), elapsed(time.Since(start)))
			if len(rep.Shredded) > 0 {
				fmt.Fprintf(w, "not restored, their keys were destroyed after the backup: %s (they stay deleted)\n", strings.Join(rep.Shredded, ", "))
			}
			if len(rep.Skipped) > 0 {
				fmt.Fprintf(w, "not restored: %s\n", strings.Join(rep.Skipped, "; "))
			}
			fmt.Fprintf(w, "start it with: penstock serve --data-dir %s\n", dataDir)
		})
	}
	return cmd
}

// tenantBody is a job's body: the tenant, if one is given.
func tenantBody(tenant string) map[string]string {
	if tenant == "" {
		return map[string]string{}
	}
	return map[string]string{"tenant": tenant}
}
