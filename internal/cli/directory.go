package cli

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/penstock/penstock/internal/authz"
)

// authCmd holds `penstock auth test USER`: what a directory user would get.
func authCmd(environ []string) *cobra.Command {
	test := apiCmd(environ, "test USER", "Show what roles a directory user would get (groups, mappings, second factor), without logging in", cobra.ExactArgs(1),
		jsonCall("GET", func(a []string) string { return "/v1/directory/users/" + esc(a[0]) }, nil))
	test.Long = "Asks the directory with the service account, as a login would, but checks no password and makes\nno session. Needs " + string(authz.DirectoryManage) + " (platform-admin)."
	return group("auth", "Directory users: what they would get", test)
}

// directoryCmd manages the directory's group mappings.
func directoryCmd(environ []string) *cobra.Command {
	status := apiCmd(environ, "status", "The directory: its server, re-check interval, break-glass users, mappings", cobra.NoArgs,
		jsonCall("GET", func([]string) string { return "/v1/directory" }, nil))
	mappings := apiCmd(environ, "mappings", "Every directory group mapped to a role at a scope", cobra.NoArgs,
		jsonCall("GET", func([]string) string { return "/v1/directory/mappings" }, nil))
	mapc := apiCmd(environ, "map GROUP-DN ROLE SCOPE", "Give the members of a directory group a role at a scope (platform, tenant, tenant/env, tenant/env/app)",
		cobra.ExactArgs(3), jsonCall("POST", func([]string) string { return "/v1/directory/mappings" },
			func(a []string) any { return map[string]string{"group": a[0], "role": a[1], "scope": a[2]} }))
	unmap := apiCmd(environ, "unmap ID", "Remove a mapping made through the API (those of directory.mappings change in the file)", cobra.ExactArgs(1),
		func(ctx context.Context, cf *clientFlags, cmd *cobra.Command, a []string) error {
			if err := cf.call(ctx, "DELETE", "/v1/directory/mappings/"+esc(a[0]), nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "mapping %s removed\n", a[0])
			return nil
		})
	recheck := apiCmd(environ, "recheck", "Read every directory user's groups again now (as every directory.recheck_every)", cobra.NoArgs,
		jsonCall("POST", func([]string) string { return "/v1/directory/recheck" }, nil))
	c := group("directory", "Users who log in through an LDAP directory, and the roles their groups map to", status, mappings, mapc, unmap, recheck)
	c.Long = "Every command needs " + string(authz.DirectoryManage) + " (platform-admin). See docs/access.md."
	return c
}
