package cli

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"

	"github.com/penstock/penstock/internal/audit"

	"github.com/spf13/cobra"
)

func auditCmd(environ []string) *cobra.Command {
	list := apiCmd(environ, "list [--tenant T] [--actor A] [--action X] [--result R] [--since T] [--until T]",
		"Audit events, oldest first; --cursor continues a page", cobra.NoArgs,
		func(ctx context.Context, cf *clientFlags, cmd *cobra.Command, _ []string) error {
			q := url.Values{}
			for _, f := range []string{"tenant", "actor", "action", "result", "since", "until", "cursor", "limit"} {
				if v, _ := cmd.Flags().GetString(f); v != "" {
					q.Set(f, v)
				}
			}
			return jsonCall("GET", func([]string) string { return "/v1/audit?" + q.Encode() }, nil)(ctx, cf, cmd, nil)
		})
	withColumns(list, "seq", "time", "tenant", "actor", "action", "result", "target", "source", "details")
	for _, f := range []struct{ name, usage string }{
		{"tenant", "a tenant's events (tenant auditors and owners must give theirs)"}, {"actor", "user:<name>, apikey:<id>, anonymous, system"},
		{"action", "such as secret.write or auth.login"}, {"result", "ok, denied, error or started"},
		{"since", "RFC 3339 time"}, {"until", "RFC 3339 time"}, {"cursor", "next_cursor of the previous page"}, {"limit", "events per page (1-1000)"},
	} {
		list.Flags().String(f.name, "", f.usage)
	}
	verify := apiCmd(environ, "verify [--file EXPORT]", "Walk every chain and checkpoint (of the server, or of an export, offline); exit 1 at the first break", cobra.NoArgs,
		func(ctx context.Context, cf *clientFlags, cmd *cobra.Command, _ []string) error {
			var rep audit.Report
			if file, _ := cmd.Flags().GetString("file"); file != "" {
				keyB64, _ := cmd.Flags().GetString("key")
				pub, err := base64.StdEncoding.DecodeString(keyB64)
				if err != nil || len(pub) != ed25519.PublicKeySize {
					return errors.New("--key: the log's public key as penstock audit key prints it (base64), obtained apart from the export")
				}
				f, err := os.Open(file)
				if err != nil {
					return err
				}
				defer f.Close()
				if rep, err = audit.VerifyExportFile(f, ed25519.PublicKey(pub)); err != nil {
					return err
				}
			} else if err := cf.call(ctx, "GET", "/v1/audit/verify", nil, &rep); err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if f := explicitFormat(cmd); f == formatJSON || f == formatYAML {
				b, _ := json.Marshal(rep)
				if err := render(cmd, b, ""); err != nil || rep.OK {
					return err
				}
				return exitError{code: 1}
			}
			if !rep.OK {
				b := rep.Break
				fmt.Fprintf(w, "BROKEN: %s at sequence %d (chain %s, index %d): %s\n", b.Kind, b.Seq, b.Chain, b.Index, b.Detail)
				return exitError{code: 1}
			}
			fmt.Fprintf(w, "ok: %d events in %d chains, %d checkpoints\n", rep.Events, rep.Chains, rep.Checkpoints)
			if rep.Unsealed {
				fmt.Fprintln(w, "warning: a v1 export, made before exports were signed over their extent: its events and checkpoints verify, but a cut at its start or end (at a checkpoint) would not show")
			}
			return nil
		})
	verify.Flags().String("file", "", "verify an export file instead of the server's log")
	verify.Flags().String("key", "", "with --file: the log's public key (penstock audit key)")
	key := apiCmd(environ, "key", "Print the public key that signs checkpoints (base64), to verify exports with", cobra.NoArgs,
		func(ctx context.Context, cf *clientFlags, cmd *cobra.Command, _ []string) error {
			var out struct {
				PublicKey []byte `json:"public_key"`
			}
			if err := cf.call(ctx, "GET", "/v1/audit/key", nil, &out); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), base64.StdEncoding.EncodeToString(out.PublicKey))
			return nil
		})
	export := apiCmd(environ, "export --format ndjson [--tenant T] [--since T] [--until T] > FILE", "Export events and checkpoints, verifiable on their own", cobra.NoArgs,
		func(ctx context.Context, cf *clientFlags, cmd *cobra.Command, _ []string) error {
			if f, _ := cmd.Flags().GetString("format"); f != "ndjson" {
				return fmt.Errorf("--format %q: only ndjson", f)
			}
			q := url.Values{}
			for _, f := range []string{"tenant", "since", "until"} {
				if v, _ := cmd.Flags().GetString(f); v != "" {
					q.Set(f, v)
				}
			}
			raw, err := cf.raw(ctx, "GET", "/v1/audit/export?"+q.Encode())
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(raw)
			return err
		})
	export.Flags().String("format", "ndjson", "ndjson")
	for _, f := range []string{"tenant", "since", "until"} {
		export.Flags().String(f, "", f)
	}
	return group("audit", "The tamper-evident audit log", list, verify, export, key)
}
