package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// apiCmd builds a command that calls the API as the configured caller.
func apiCmd(environ []string, use, short string, args cobra.PositionalArgs,
	run func(ctx context.Context, cf *clientFlags, cmd *cobra.Command, args []string) error) *cobra.Command {
	cf := &clientFlags{environ: environ}
	cmd := &cobra.Command{Use: use, Short: short, Args: args,
		RunE: func(cmd *cobra.Command, args []string) error {
			cf.warn = cmd.ErrOrStderr()
			return run(cmd.Context(), cf, cmd, args)
		}}
	cf.addAuth(cmd)
	return cmd
}

func group(use, short string, subs ...*cobra.Command) *cobra.Command {
	c := &cobra.Command{Use: use, Short: short}
	c.AddCommand(subs...)
	return c
}

// readLines reads up to n lines of standard input (passwords, codes): never from flags, so
// they stay out of shell history and process lists.
func readLines(r io.Reader, n int) []string {
	sc := bufio.NewScanner(r)
	var out []string
	for len(out) < n && sc.Scan() {
		out = append(out, strings.TrimRight(sc.Text(), "\r"))
	}
	return out
}

func esc(s string) string { return url.PathEscape(s) }

func accessCmds(environ []string) []*cobra.Command {
	return []*cobra.Command{
		loginCmd(environ),
		apiCmd(environ, "logout", "End the saved session", cobra.NoArgs, func(ctx context.Context, cf *clientFlags, cmd *cobra.Command, _ []string) error {
			if err := cf.call(ctx, "POST", "/v1/auth/logout", nil, nil); err != nil {
				return err
			}
			if p, err := sessionPath(); err == nil {
				_ = os.Remove(p)
			}
			fmt.Fprintln(cmd.OutOrStdout(), "logged out")
			return nil
		}),
		apiCmd(environ, "whoami", "Show who you are and your roles", cobra.NoArgs, func(ctx context.Context, cf *clientFlags, cmd *cobra.Command, _ []string) error {
			var out json.RawMessage
			if err := cf.call(ctx, "GET", "/v1/auth/whoami", nil, &out); err != nil {
				return err
			}
			return render(cmd, out, "")
		}),
		apiCmd(environ, "password", "Change your password: prompted on a terminal, else the current one and the new one on two lines of standard input", cobra.NoArgs,
			func(ctx context.Context, cf *clientFlags, cmd *cobra.Command, _ []string) error {
				current, next, err := readPasswordChange(ctx, cf, cmd)
				if err != nil {
					return err
				}
				if err := cf.call(ctx, "POST", "/v1/auth/password", map[string]string{"current": current, "new": next}, nil); err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), "password changed")
				return nil
			}),
		group("mfa", "Your second factor (TOTP)",
			apiCmd(environ, "enrol", "Start enrolling: prints the otpauth URI, the secret and ten recovery codes (shown once)", cobra.NoArgs,
				func(ctx context.Context, cf *clientFlags, cmd *cobra.Command, _ []string) error {
					var out struct {
						URI           string   `json:"uri"`
						Secret        string   `json:"secret"`
						RecoveryCodes []string `json:"recovery_codes"`
					}
					if err := cf.call(ctx, "POST", "/v1/auth/mfa/enrol", nil, &out); err != nil {
						return err
					}
					w := cmd.OutOrStdout()
					fmt.Fprintf(w, "Add this to your authenticator app:\n  %s\nor type the secret: %s\n\nRecovery codes (each works once; keep them safe, they are not shown again):\n", out.URI, out.Secret)
					for _, c := range out.RecoveryCodes {
						fmt.Fprintf(w, "  %s\n", c)
					}
					fmt.Fprintln(w, "\nThen confirm with: penstock mfa verify CODE")
					return nil
				}),
			apiCmd(environ, "verify CODE", "Confirm the enrolment with a code from the app", cobra.ExactArgs(1),
				func(ctx context.Context, cf *clientFlags, cmd *cobra.Command, args []string) error {
					if err := cf.call(ctx, "POST", "/v1/auth/mfa/verify", map[string]string{"code": args[0]}, nil); err != nil {
						return err
					}
					fmt.Fprintln(cmd.OutOrStdout(), "second factor enrolled")
					return nil
				}),
		),
		group("tenant", "Tenants",
			apiCmd(environ, "create NAME", "Create a tenant (with production, staging and test)", cobra.ExactArgs(1), jsonCall("POST", func(a []string) string { return "/v1/tenants" }, func(a []string) any { return map[string]string{"name": a[0]} })),
			apiCmd(environ, "list", "List tenants", cobra.NoArgs, jsonCall("GET", func([]string) string { return "/v1/tenants" }, nil)),
			tenantDeleteCmd(environ),
		),
		group("env", "Environments",
			withFlag(apiCmd(environ, "create --tenant T NAME", "Add an environment to a tenant", cobra.ExactArgs(1), func(ctx context.Context, cf *clientFlags, cmd *cobra.Command, a []string) error {
				t, _ := cmd.Flags().GetString("tenant")
				return jsonCall("POST", func([]string) string { return "/v1/tenants/" + esc(t) + "/environments" }, func(a []string) any { return map[string]string{"name": a[0]} })(ctx, cf, cmd, a)
			}), "tenant", "tenant"),
			withFlag(apiCmd(environ, "list --tenant T", "List a tenant's environments", cobra.NoArgs, func(ctx context.Context, cf *clientFlags, cmd *cobra.Command, _ []string) error {
				t, _ := cmd.Flags().GetString("tenant")
				return jsonCall("GET", func([]string) string { return "/v1/tenants/" + esc(t) + "/environments" }, nil)(ctx, cf, cmd, nil)
			}), "tenant", "tenant"),
			envGetCmd(environ),
			envDeleteCmd(environ),
		),
		group("app", "Applications",
			withFlag(apiCmd(environ, "create --env T/E NAME", "Create an application", cobra.ExactArgs(1), func(ctx context.Context, cf *clientFlags, cmd *cobra.Command, a []string) error {
				p, err := envPathFlag(cmd)
				if err != nil {
					return err
				}
				return jsonCall("POST", func([]string) string { return p + "/applications" }, func(a []string) any { return map[string]string{"name": a[0]} })(ctx, cf, cmd, a)
			}), "env", "tenant/environment"),
			withFlag(apiCmd(environ, "list --env T/E", "List an environment's applications", cobra.NoArgs, func(ctx context.Context, cf *clientFlags, cmd *cobra.Command, a []string) error {
				p, err := envPathFlag(cmd)
				if err != nil {
					return err
				}
				return jsonCall("GET", func([]string) string { return p + "/applications" }, nil)(ctx, cf, cmd, a)
			}), "env", "tenant/environment"),
			withFlag(apiCmd(environ, "delete --env T/E NAME", "Delete an application and crypto-shred its keys", cobra.ExactArgs(1), func(ctx context.Context, cf *clientFlags, cmd *cobra.Command, a []string) error {
				p, err := envPathFlag(cmd)
				if err != nil {
					return err
				}
				if err := cf.call(ctx, "DELETE", p+"/applications/"+esc(a[0]), nil, nil); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s deleted; its data can no longer be decrypted\n", a[0])
				return nil
			}), "env", "tenant/environment"),
		),
		group("user", "Platform users",
			withFlag(apiCmd(environ, "create NAME [--email E]", "Create a user; prints the generated one-time password", cobra.ExactArgs(1), func(ctx context.Context, cf *clientFlags, cmd *cobra.Command, a []string) error {
				email, _ := cmd.Flags().GetString("email")
				return jsonCall("POST", func([]string) string { return "/v1/users" }, func(a []string) any { return map[string]string{"name": a[0], "email": email} })(ctx, cf, cmd, a)
			}), "email", "email address"),
			apiCmd(environ, "list", "List users", cobra.NoArgs, jsonCall("GET", func([]string) string { return "/v1/users" }, nil)),
			apiCmd(environ, "disable NAME", "Disable a user and end their sessions", cobra.ExactArgs(1), jsonCall("POST", func(a []string) string { return "/v1/users/" + esc(a[0]) + "/disable" }, nil)),
			apiCmd(environ, "enable NAME", "Enable a user", cobra.ExactArgs(1), jsonCall("POST", func(a []string) string { return "/v1/users/" + esc(a[0]) + "/enable" }, nil)),
			apiCmd(environ, "end-sessions NAME", "End every session of a user", cobra.ExactArgs(1), jsonCall("POST", func(a []string) string { return "/v1/users/" + esc(a[0]) + "/end-sessions" }, nil)),
			apiCmd(environ, "reset-password NAME", "Give a user a generated password (printed once)", cobra.ExactArgs(1), jsonCall("POST", func(a []string) string { return "/v1/users/" + esc(a[0]) + "/reset-password" }, nil)),
		),
		group("role", "Role bindings",
			withFlags(apiCmd(environ, "grant --subject user:NAME --role ROLE --scope SCOPE", "Grant a role at a scope", cobra.NoArgs, func(ctx context.Context, cf *clientFlags, cmd *cobra.Command, a []string) error {
				return jsonCall("POST", func([]string) string { return "/v1/roles" }, func([]string) any { return flagMap(cmd, "subject", "role", "scope") })(ctx, cf, cmd, a)
			}), "subject", "role", "scope"),
			apiCmd(environ, "revoke ID", "Revoke a role binding", cobra.ExactArgs(1), jsonCall("DELETE", func(a []string) string { return "/v1/roles/" + esc(a[0]) }, nil)),
			withFlag(apiCmd(environ, "list [--scope SCOPE]", "List role bindings at and under a scope", cobra.NoArgs, func(ctx context.Context, cf *clientFlags, cmd *cobra.Command, a []string) error {
				s, _ := cmd.Flags().GetString("scope")
				return jsonCall("GET", func([]string) string { return "/v1/roles?scope=" + url.QueryEscape(s) }, nil)(ctx, cf, cmd, a)
			}), "scope", "scope (default platform)"),
		),
		group("apikey", "API keys",
			apikeyCreateCmd(environ),
			withFlag(apiCmd(environ, "list [--scope SCOPE]", "List API keys at and under a scope", cobra.NoArgs, func(ctx context.Context, cf *clientFlags, cmd *cobra.Command, a []string) error {
				s, _ := cmd.Flags().GetString("scope")
				return jsonCall("GET", func([]string) string { return "/v1/apikeys?scope=" + url.QueryEscape(s) }, nil)(ctx, cf, cmd, a)
			}), "scope", "scope"),
			apiCmd(environ, "revoke ID", "Revoke an API key everywhere", cobra.ExactArgs(1), jsonCall("DELETE", func(a []string) string { return "/v1/apikeys/" + esc(a[0]) }, nil)),
		),
		group("egress", "What a tenant's connectors may reach beyond the default policy",
			withFlag(apiCmd(environ, "set --tenant T [RULE ...]", "Set the destinations (CIDR, address or host, with an optional :port) a tenant's connectors may reach; none: the default policy only", cobra.ArbitraryArgs, func(ctx context.Context, cf *clientFlags, cmd *cobra.Command, a []string) error {
				t, _ := cmd.Flags().GetString("tenant")
				if a == nil {
					a = []string{}
				}
				return jsonCall("PUT", func([]string) string { return "/v1/tenants/" + esc(t) + "/egress" }, func(a []string) any { return map[string]any{"rules": a} })(ctx, cf, cmd, a)
			}), "tenant", "tenant"),
		),
		group("allowlist", "Tenant source allow-lists",
			withFlag(apiCmd(environ, "set --tenant T [CIDR ...]", "Set the CIDRs allowed to call for a tenant (none: everyone)", cobra.ArbitraryArgs, func(ctx context.Context, cf *clientFlags, cmd *cobra.Command, a []string) error {
				t, _ := cmd.Flags().GetString("tenant")
				if a == nil {
					a = []string{}
				}
				return jsonCall("PUT", func([]string) string { return "/v1/tenants/" + esc(t) + "/allowlist" }, func(a []string) any { return map[string]any{"cidrs": a} })(ctx, cf, cmd, a)
			}), "tenant", "tenant"),
		),
	}
}

// jsonCall calls method on path(args) with body(args) and prints the JSON answer.
func jsonCall(method string, path func([]string) string, body func([]string) any) func(context.Context, *clientFlags, *cobra.Command, []string) error {
	return func(ctx context.Context, cf *clientFlags, cmd *cobra.Command, args []string) error {
		var b any
		if body != nil {
			b = body(args)
		}
		var out json.RawMessage
		if err := cf.call(ctx, method, path(args), b, &out); err != nil {
			return err
		}
		return render(cmd, out, "done")
	}
}

func withFlag(c *cobra.Command, name, usage string) *cobra.Command {
	c.Flags().String(name, "", usage)
	return c
}

func withFlags(c *cobra.Command, names ...string) *cobra.Command {
	for _, n := range names {
		c.Flags().String(n, "", n)
		_ = c.MarkFlagRequired(n)
	}
	return c
}

func flagMap(cmd *cobra.Command, names ...string) map[string]string {
	m := map[string]string{}
	for _, n := range names {
		m[n], _ = cmd.Flags().GetString(n)
	}
	return m
}

func envPathFlag(cmd *cobra.Command) (string, error) {
	e, _ := cmd.Flags().GetString("env")
	parts := strings.Split(e, "/")
	if len(parts) != 2 || parts[0] == "" || parts[1] == "" {
		return "", fmt.Errorf("--env %q: must be tenant/environment", e)
	}
	return "/v1/tenants/" + esc(parts[0]) + "/environments/" + esc(parts[1]), nil
}

func tenantDeleteCmd(environ []string) *cobra.Command {
	c := apiCmd(environ, "delete NAME --confirm NAME", "Delete a tenant and crypto-shred its keys: its data becomes unrecoverable", cobra.ExactArgs(1),
		func(ctx context.Context, cf *clientFlags, cmd *cobra.Command, a []string) error {
			if c, _ := cmd.Flags().GetString("confirm"); c != a[0] {
				return errors.New("--confirm must repeat the tenant name: deletion cannot be undone")
			}
			if err := cf.call(ctx, "DELETE", "/v1/tenants/"+esc(a[0]), nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "tenant %s deleted; its data can no longer be decrypted\n", a[0])
			return nil
		})
	c.Flags().String("confirm", "", "repeat the tenant name")
	return c
}

func apikeyCreateCmd(environ []string) *cobra.Command {
	c := apiCmd(environ, "create --role ROLE --scope SCOPE", "Create an API key (printed once)", cobra.NoArgs,
		func(ctx context.Context, cf *clientFlags, cmd *cobra.Command, a []string) error {
			body := map[string]any{}
			for _, n := range []string{"role", "scope", "name"} {
				if v, _ := cmd.Flags().GetString(n); v != "" {
					body[n] = v
				}
			}
			if d, _ := cmd.Flags().GetDuration("expires-in"); d > 0 {
				body["expires"] = time.Now().Add(d).UTC()
			}
			if cidrs, _ := cmd.Flags().GetStringSlice("cidr"); len(cidrs) > 0 {
				body["cidrs"] = cidrs
			}
			if s, _ := cmd.Flags().GetBool("service"); s {
				body["service"] = true
			}
			if err := jsonCall("POST", func([]string) string { return "/v1/apikeys" }, func([]string) any { return body })(ctx, cf, cmd, a); err != nil {
				return err
			}
			fmt.Fprintln(cmd.ErrOrStderr(), "the key is shown once: store it now (it cannot be read back)")
			return nil
		})
	c.Flags().String("role", "", "owner, admin, developer, operator, viewer or auditor")
	c.Flags().String("scope", "", "tenant, tenant/environment or tenant/environment/application")
	c.Flags().String("name", "", "a label")
	c.Flags().Duration("expires-in", 0, "lifetime, such as 720h")
	c.Flags().StringSlice("cidr", nil, "source CIDRs the key may be used from (repeatable)")
	c.Flags().Bool("service", false, "a service key bound to the application, not to you")
	_ = c.MarkFlagRequired("role")
	_ = c.MarkFlagRequired("scope")
	return c
}

func loginCmd(environ []string) *cobra.Command {
	cf := &clientFlags{environ: environ}
	var user, code string
	var sso bool
	cmd := &cobra.Command{
		Use:   "login --user NAME [--code CODE] < password | login --sso",
		Short: "Log in (password on standard input, or single sign-on in a browser) and save the session for the CLI (0600, in your configuration directory)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if sso {
				return ssoLogin(cmd, cf)
			}
			if user == "" {
				return errors.New("give --user NAME (or --sso for single sign-on)")
			}
			l := readLines(cmd.InOrStdin(), 1)
			if len(l) != 1 {
				return errors.New("give the password on standard input")
			}
			var out struct {
				Token              string `json:"token"`
				MustChangePassword bool   `json:"must_change_password"`
				MustEnrolMFA       bool   `json:"must_enrol_mfa"`
			}
			c, err := cf.httpClient()
			if err != nil {
				return err
			}
			if err := postJSON(cmd.Context(), c, cf.server+"/v1/auth/login", map[string]string{"user": user, "password": l[0], "code": code}, &out); err != nil {
				return err
			}
			if err := saveSession(savedSession{Server: cf.server, Token: out.Token}); err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "logged in as %s\n", user)
			if out.MustChangePassword {
				fmt.Fprintln(w, "you must change your password first: penstock password (it prompts; from a script, the current and the new password on two lines of standard input)")
			}
			if out.MustEnrolMFA {
				fmt.Fprintln(w, "you must enrol a second factor: penstock mfa enrol, then penstock mfa verify CODE")
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&user, "user", "", "user name")
	cmd.Flags().StringVar(&code, "code", "", "one-time code from your authenticator (or a recovery code)")
	cmd.Flags().BoolVar(&sso, "sso", false, "single sign-on: prints an address and a code to approve in a browser (any device), then waits")
	cf.add(cmd)
	return cmd
}

// readPasswordChange reads the current and the new password: on a terminal by prompting
// without echo, with the server's rules shown first and the new one asked twice; otherwise as
// two lines of standard input.
func readPasswordChange(ctx context.Context, cf *clientFlags, cmd *cobra.Command) (string, string, error) {
	in, ok := cmd.InOrStdin().(*os.File)
	if !ok || !term.IsTerminal(int(in.Fd())) {
		l := readLines(cmd.InOrStdin(), 2)
		if len(l) != 2 || l[0] == "" || l[1] == "" {
			return "", "", errors.New("no terminal to prompt on: give the current password and the new one on two lines of standard input, " +
				`for example printf '%s\n%s\n' "$CURRENT" "$NEW" | penstock password`)
		}
		return l[0], l[1], nil
	}
	w := cmd.ErrOrStderr()
	var policy struct {
		Rules string `json:"rules"`
	}
	if err := cf.call(ctx, "GET", "/v1/auth/password-policy", nil, &policy); err == nil && policy.Rules != "" {
		fmt.Fprintf(w, "A new password must be %s.\n", policy.Rules)
	}
	ask := func(prompt string) (string, error) {
		fmt.Fprint(w, prompt)
		b, err := term.ReadPassword(int(in.Fd()))
		fmt.Fprintln(w)
		return string(b), err
	}
	current, err := ask("Current password: ")
	if err != nil {
		return "", "", err
	}
	next, err := ask("New password: ")
	if err != nil {
		return "", "", err
	}
	again, err := ask("New password again: ")
	if err != nil {
		return "", "", err
	}
	if next != again {
		return "", "", errors.New("the two new passwords differ; nothing was changed")
	}
	return current, next, nil
}

// ssoLogin is the device login: the server asks the OpenID provider for a code, the user
// approves it in a browser, and the CLI waits for the session.
func ssoLogin(cmd *cobra.Command, cf *clientFlags) error {
	c, err := cf.httpClient()
	if err != nil {
		return err
	}
	c.Timeout = 30 * time.Second // each poll waits up to 8 s on the server
	var start struct {
		VerificationURI         string `json:"verification_uri"`
		VerificationURIComplete string `json:"verification_uri_complete"`
		UserCode                string `json:"user_code"`
		ExpiresIn               int64  `json:"expires_in"`
		Handle                  string `json:"handle"`
	}
	ctx := cmd.Context()
	if err := postJSON(ctx, c, cf.server+"/v1/auth/oidc/device", map[string]string{}, &start); err != nil {
		return err
	}
	w := cmd.ErrOrStderr()
	fmt.Fprintf(w, "Open %s and enter the code %s", start.VerificationURI, start.UserCode)
	if start.VerificationURIComplete != "" {
		fmt.Fprintf(w, " (or open %s)", start.VerificationURIComplete)
	}
	fmt.Fprintf(w, "; waiting up to %s.\n", time.Duration(start.ExpiresIn)*time.Second)
	var out struct {
		Token        string `json:"token"`
		MustEnrolMFA bool   `json:"must_enrol_mfa"`
	}
	for {
		err := postJSON(ctx, c, cf.server+"/v1/auth/oidc/device/token", map[string]string{"handle": start.Handle}, &out)
		var ae *apiError
		if errors.As(err, &ae) && ae.Code == "auth.pending" {
			continue
		}
		if err != nil {
			return err
		}
		break
	}
	if err := saveSession(savedSession{Server: cf.server, Token: out.Token}); err != nil {
		return err
	}
	fmt.Fprintln(cmd.OutOrStdout(), "logged in by single sign-on")
	if out.MustEnrolMFA {
		fmt.Fprintln(cmd.OutOrStdout(), "your roles need a second factor: penstock mfa enrol, then penstock mfa verify CODE (once enrolled: penstock mfa verify CODE after each single sign-on)")
	}
	return nil
}
