package cli

import (
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/penstock/penstock/internal/app"
	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/engine"
)

func clusterCmd(environ []string) *cobra.Command {
	cmd := &cobra.Command{Use: "cluster", Short: "A cluster of Penstock nodes: status, join tokens, joining (docs/cluster.md)"}
	cmd.AddCommand(clusterStatusCmd(environ), clusterInitCmd(environ), clusterJoinTokenCmd(environ), clusterJoinCmd(environ))
	return cmd
}

func nodeCmd(environ []string) *cobra.Command {
	cmd := &cobra.Command{Use: "node", Short: "This node of a cluster"}
	cmd.AddCommand(nodeDrainCmd(environ))
	return cmd
}

func clusterStatusCmd(environ []string) *cobra.Command {
	cf := clientFlags{environ: environ}
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Nodes, the engine's leader, and streams whose replicas lag or have no leader, as the node at --server sees them",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var st engine.ClusterStatus
			if err := cf.call(cmd.Context(), "GET", "/v1/cluster", nil, &st); err != nil {
				return err
			}
			return printAs(cmd, st, func(w io.Writer) { printClusterStatus(w, st) })
		},
	}
	cf.addAuth(cmd)
	return cmd
}

func printClusterStatus(w io.Writer, st engine.ClusterStatus) {
	leader := st.Leader
	if leader == "" {
		leader = "none (no majority)"
	}
	fmt.Fprintf(w, "cluster %s, seen from %s: leader %s, %d routes\n\n", st.Name, st.Node, leader, st.Routes)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tCURRENT\tOFFLINE\tLAG")
	for _, n := range st.Nodes {
		fmt.Fprintf(tw, "%s\t%v\t%v\t%d\n", n.Name, n.Current, n.Offline, n.Lag)
	}
	tw.Flush()
	lagging := 0
	tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	for _, s := range st.Streams {
		if !s.Lagging {
			continue
		}
		if lagging == 0 {
			fmt.Fprintln(tw, "\nLAGGING STREAM\tLEADER\tREPLICAS")
		}
		lagging++
		var reps []string
		for _, r := range s.Replicas {
			state := "current"
			if !r.Current {
				state = fmt.Sprintf("behind %d", r.Lag)
			}
			reps = append(reps, r.Name+" "+state)
		}
		leader := s.Leader
		if leader == "" {
			leader = "none"
		}
		fmt.Fprintf(tw, "%s > %s\t%s\t%s\n", s.Account, s.Stream, leader, strings.Join(reps, ", "))
	}
	tw.Flush()
	fmt.Fprintf(w, "\n%d streams, %d lagging or without a leader\n", len(st.Streams), lagging)
}

// withConfig gives cmd the configuration flags and runs run with the loaded configuration.
func withConfig(cmd *cobra.Command, environ []string, run func(cmd *cobra.Command, cfg config.Config) error) *cobra.Command {
	keys := configFlags(cmd.Flags())
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		cfg, err := loadConfig(cmd.Flags(), keys, environ)
		if err != nil {
			printConfigErrors(cmd.ErrOrStderr(), err)
			return exitError{code: 2}
		}
		return run(cmd, cfg)
	}
	return cmd
}

func clusterInitCmd(environ []string) *cobra.Command {
	return withConfig(&cobra.Command{
		Use:   "init",
		Short: "Prepare the first node's new data directory: the platform CA and the cluster credential",
		Args:  cobra.NoArgs,
	}, environ, func(cmd *cobra.Command, cfg config.Config) error {
		if err := app.InitCluster(cfg); err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "%s is the first node of cluster %s: make a join token for the others with penstock cluster join-token\n", cfg.DataDir, cfg.Cluster.Name)
		return nil
	})
}

func clusterJoinTokenCmd(environ []string) *cobra.Command {
	return withConfig(&cobra.Command{
		Use:   "join-token",
		Short: "Print a token that lets a new node join this node's cluster (the platform CA and the cluster credential, sealed under the master key)",
		Args:  cobra.NoArgs,
	}, environ, func(cmd *cobra.Command, cfg config.Config) error {
		tok, err := app.JoinToken(cmd.Context(), cfg)
		if err != nil {
			return err
		}
		fmt.Fprintln(cmd.OutOrStdout(), tok)
		return nil
	})
}

func clusterJoinCmd(environ []string) *cobra.Command {
	var tokenFile string
	cmd := &cobra.Command{
		Use:   "join",
		Short: "Prepare this node's new data directory to join a cluster, from a join token (then start it with penstock serve)",
		Args:  cobra.NoArgs,
	}
	keys := configFlags(cmd.Flags())
	cmd.Flags().StringVar(&tokenFile, "token-file", "", "file holding the join token (- for standard input)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		cfg, err := loadConfig(cmd.Flags(), keys, environ)
		if err != nil {
			printConfigErrors(cmd.ErrOrStderr(), err)
			return exitError{code: 2}
		}
		if tokenFile == "" {
			return &usageError{cmd: cmd, flag: true, msg: "--token-file is required (the output of penstock cluster join-token on a node of the cluster)"}
		}
		var b []byte
		if tokenFile == "-" {
			b, err = io.ReadAll(io.LimitReader(cmd.InOrStdin(), 1<<20))
		} else {
			b, err = os.ReadFile(tokenFile)
		}
		if err != nil {
			return err
		}
		if err := app.Join(cmd.Context(), cfg, string(b)); err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "%s is ready to join cluster %s: start it with penstock serve\n", cfg.DataDir, cfg.Cluster.Name)
		return nil
	}
	return cmd
}

func nodeDrainCmd(environ []string) *cobra.Command {
	cf := clientFlags{environ: environ}
	cmd := &cobra.Command{
		Use:   "drain",
		Short: "Drain the node at --server: it stops taking requests and clients, hands its leaderships and pipelines to the other nodes, and exits 0",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out struct {
				Node   string `json:"node"`
				Status string `json:"status"`
			}
			if err := cf.call(cmd.Context(), "POST", "/v1/cluster/drain", nil, &out); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "node %s is %s\n", out.Node, out.Status)
			return nil
		},
	}
	cf.addAuth(cmd)
	return cmd
}
