package cli

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/penstock/penstock/internal/keyring"
)

func keysCmd(environ []string) *cobra.Command {
	cmd := &cobra.Command{Use: "keys", Short: "Master key and data keys: status, rotation, destruction (platform admin)"}
	cmd.AddCommand(keysStatusCmd(environ), keysRotateCmd(environ), keysRotateMasterCmd(environ), keysDestroyCmd(environ))
	return cmd
}

func keysStatusCmd(environ []string) *cobra.Command {
	cf := clientFlags{environ: environ}
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show scopes, key versions, rotation times and re-encryption jobs (never key material)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var st keyring.Status
			if err := cf.call(cmd.Context(), "GET", "/v1/keys", nil, &st); err != nil {
				return err
			}
			return printAs(cmd, st, func(w io.Writer) { printKeyStatus(w, st) })
		},
	}
	cf.addAuth(cmd)
	return cmd
}

func printKeyStatus(w io.Writer, st keyring.Status) {
	fmt.Fprintf(w, "master key: %s (%s)\n", st.Master.ID, st.Master.Source)
	if st.Master.Previous != "" {
		fmt.Fprintf(w, "previous master key: %s (rotation in progress)\n", st.Master.Previous)
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nSCOPE\tVERSIONS\tPRIMARY\tCREATED\tROTATED\tSTATE")
	for _, s := range st.Scopes {
		state := "active"
		if !s.Destroyed.IsZero() {
			state = "destroyed " + stamp(s.Destroyed)
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\n", s.Scope, s.Versions, s.Primary, stamp(s.Created), stamp(s.Rotated), state)
	}
	tw.Flush()
	if len(st.Jobs) > 0 {
		tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "\nRE-ENCRYPTION\tTO VERSION\tDONE\tREWRAPPED\tSTARTED\tFINISHED")
		for _, j := range st.Jobs {
			finished := stamp(j.Finished)
			if j.Error != "" {
				finished = "failed: " + j.Error
			}
			fmt.Fprintf(tw, "%s\t%d\t%d/%d\t%d\t%s\t%s\n", j.Scope, j.Version, j.Done, j.Total, j.Rewrap, stamp(j.Started), finished)
		}
		tw.Flush()
	}
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func keysRotateCmd(environ []string) *cobra.Command {
	var (
		scope string
	)
	cf := clientFlags{environ: environ}
	cmd := &cobra.Command{
		Use:   "rotate --scope TENANT[/ENVIRONMENT[/APPLICATION]]",
		Short: "Give a scope a new primary data key; its records are re-encrypted in the background",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out struct {
				Scope   string `json:"scope"`
				Version int    `json:"version"`
			}
			if err := cf.call(cmd.Context(), "POST", "/v1/keys/rotate", map[string]string{"scope": scope}, &out); err != nil {
				return err
			}
			if !waitFlag(cmd) {
				return printAs(cmd, out, func(w io.Writer) {
					fmt.Fprintf(w, "%s: primary key is now version %d; re-encryption runs in the background (penstock keys status)\n", out.Scope, out.Version)
				})
			}
			job, err := followReencryption(cmd, &cf, out.Scope, out.Version)
			if err != nil {
				return err
			}
			return printAs(cmd, job, func(w io.Writer) {
				fmt.Fprintf(w, "%s: primary key is now version %d; %s record(s) re-encrypted, %s rewrapped in %s\n",
					out.Scope, out.Version, count(int64(job.Done)), count(int64(job.Rewrap)), elapsed(job.Finished.Sub(job.Started)))
			})
		},
	}
	cmd.Flags().StringVar(&scope, "scope", "", "tenant, tenant/environment or tenant/environment/application")
	cmd.Flags().Bool("wait", false, "follow the re-encryption to its end (default: on when the output is a terminal)")
	_ = cmd.MarkFlagRequired("scope")
	cf.addAuth(cmd)
	return cmd
}

func keysRotateMasterCmd(environ []string) *cobra.Command {
	cf := clientFlags{environ: environ, untimed: true}
	cmd := &cobra.Command{
		Use:   "rotate-master",
		Short: "Replace the master key file and rewrap every data key, without downtime",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out struct {
				Master string `json:"master"`
			}
			pr := newProgress(cmd)
			start := time.Now()
			stop := make(chan struct{})
			shown := make(chan struct{})
			go func() {
				defer close(shown)
				t := time.NewTicker(time.Second)
				defer t.Stop()
				for {
					pr.show("rotating the master key: rewrapping every data key and the store key, " + elapsed(time.Since(start)))
					select {
					case <-stop:
						return
					case <-t.C:
					}
				}
			}()
			err := cf.call(cmd.Context(), "POST", "/v1/keys/rotate-master", nil, &out)
			close(stop)
			<-shown
			pr.end()
			if err != nil {
				return err
			}
			return printAs(cmd, out, func(w io.Writer) {
				fmt.Fprintf(w, "master key is now %s; every data key is rewrapped under it (%s)\n", out.Master, elapsed(time.Since(start)))
			})
		},
	}
	cf.addAuth(cmd)
	return cmd
}

func keysDestroyCmd(environ []string) *cobra.Command {
	var (
		scope, confirm string
	)
	cf := clientFlags{environ: environ}
	cmd := &cobra.Command{
		Use:   "destroy --scope SCOPE --confirm SCOPE",
		Short: "Crypto-shred a scope and the scopes under it: their data becomes unrecoverable",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			body := map[string]string{"scope": scope, "confirm": confirm}
			if err := cf.call(cmd.Context(), "POST", "/v1/keys/destroy", body, nil); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: keys destroyed; its data cannot be decrypted any more\n", scope)
			return nil
		},
	}
	cmd.Flags().StringVar(&scope, "scope", "", "the scope to destroy")
	cmd.Flags().StringVar(&confirm, "confirm", "", "repeat the scope: destruction cannot be undone")
	_ = cmd.MarkFlagRequired("scope")
	_ = cmd.MarkFlagRequired("confirm")
	cf.addAuth(cmd)
	return cmd
}

// followReencryption shows a scope's re-encryption to version until it finishes, and
// returns its job; a failed job is an error.
func followReencryption(cmd *cobra.Command, cf *clientFlags, scope string, version int) (keyring.Job, error) {
	pr := newProgress(cmd)
	defer pr.end()
	var job keyring.Job
	err := poll(cmd.Context(), 500*time.Millisecond, func() (bool, error) {
		var st keyring.Status
		if err := cf.call(cmd.Context(), "GET", "/v1/keys", nil, &st); err != nil {
			return false, err
		}
		for _, j := range st.Jobs {
			if j.Scope == scope && j.Version == version {
				job = j
				pr.show(fmt.Sprintf("re-encrypting %s to key version %d: %s/%s records, %s rewrapped", scope, version,
					count(int64(j.Done)), count(int64(j.Total)), count(int64(j.Rewrap))))
				return !j.Finished.IsZero() || j.Error != "", nil
			}
		}
		// No job: nothing was sealed under the scope, or its record is already gone.
		job = keyring.Job{Scope: scope, Version: version, Started: time.Now(), Finished: time.Now()}
		return true, nil
	})
	if err == nil && job.Error != "" {
		err = fmt.Errorf("re-encryption of %s to version %d failed: %s", scope, version, job.Error)
	}
	return job, err
}
