package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"strings"

	"github.com/spf13/cobra"
)

// apiCommand is a command that makes one API call and prints the JSON answer. Its request
// is built from the arguments and the command's own flags by build.
type apiCommand struct {
	use, short string
	args       cobra.PositionalArgs
	flags      func(cmd *cobra.Command)
	build      func(cmd *cobra.Command, app string, args []string) (method, path string, body any, err error)
	// columns, when set, are what a table of the answer shows (see withColumns).
	columns []string
	// after, when set, runs once the answer is printed (queue consume --ack).
	after func(cmd *cobra.Command, cf *clientFlags, app string, args []string, answer json.RawMessage) error
}

func (a apiCommand) command(environ []string) *cobra.Command {
	var app string
	cf := clientFlags{environ: environ}
	cmd := &cobra.Command{
		Use: a.use, Short: a.short, Args: a.args,
		RunE: func(cmd *cobra.Command, args []string) error {
			base, err := fabricBase(app)
			if err != nil {
				return err
			}
			method, path, body, err := a.build(cmd, base, args)
			if err != nil {
				return err
			}
			var out json.RawMessage
			if err := cf.call(cmd.Context(), method, path, body, &out); err != nil {
				return err
			}
			if err := render(cmd, out, "done"); err != nil || a.after == nil {
				return err
			}
			return a.after(cmd, &cf, base, args, out)
		},
	}
	cmd.Flags().StringVar(&app, "app", "", "tenant/environment/application")
	_ = cmd.MarkFlagRequired("app")
	if a.columns != nil {
		withColumns(cmd, a.columns...)
	}
	if a.flags != nil {
		a.flags(cmd)
	}
	cf.addAuth(cmd)
	return cmd
}

// fabricBase is the API path of an application, from --app tenant/environment/application.
func fabricBase(app string) (string, error) {
	parts := strings.Split(app, "/")
	if len(parts) != 3 {
		return "", fmt.Errorf("--app %q: must be tenant/environment/application", app)
	}
	return fmt.Sprintf("/v1/tenants/%s/environments/%s/applications/%s",
		url.PathEscape(parts[0]), url.PathEscape(parts[1]), url.PathEscape(parts[2])), nil
}

func seg(s string) string { return url.PathEscape(s) }

// message reads a message for publish from the flags and, without --data, standard input.
func message(cmd *cobra.Command) (map[string]any, error) {
	f := cmd.Flags()
	data, _ := f.GetString("data")
	if !f.Changed("data") {
		b, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), 64<<20))
		if err != nil {
			return nil, err
		}
		data = string(b)
	}
	m := map[string]any{"data": data}
	if id, _ := f.GetString("id"); id != "" {
		m["id"] = id
	}
	if rk, err := f.GetString("routing-key"); err == nil && rk != "" {
		m["routing_key"] = rk
	}
	hs, _ := f.GetStringArray("header")
	if len(hs) > 0 {
		h := map[string]string{}
		for _, kv := range hs {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				return nil, fmt.Errorf("--header %q: must be name=value", kv)
			}
			h[k] = v
		}
		m["headers"] = h
	}
	return map[string]any{"messages": []map[string]any{m}}, nil
}

func publishFlags(cmd *cobra.Command) {
	cmd.Flags().String("data", "", "the payload (default: standard input)")
	cmd.Flags().String("id", "", "message id: publishing the same id again within the duplicate window stores it once")
	cmd.Flags().StringArray("header", nil, "name=value metadata (repeatable)")
}

func queueCmd(environ []string) *cobra.Command {
	cmd := &cobra.Command{Use: "queue", Short: "Queues: create, publish, consume, acknowledge, dead letters"}
	cmd.AddCommand(
		apiCommand{use: "create --app T/E/A NAME", short: "Create a queue and its dead-letter queue", args: cobra.ExactArgs(1),
			flags: func(c *cobra.Command) {
				c.Flags().Duration("max-age", 0, "age after which unconsumed messages expire (default fabric.max_age)")
				c.Flags().Int64("max-messages", 0, "most messages held (0: no limit)")
				c.Flags().Int64("max-bytes", 0, "most bytes held (0: no limit)")
				c.Flags().Int("max-deliveries", 0, "deliveries before dead-lettering (default fabric.max_deliveries)")
				c.Flags().Duration("ack-wait", 0, "time to acknowledge before redelivery (default fabric.ack_wait)")
				c.Flags().Duration("duplicate-window", 0, "window for message-id deduplication (default fabric.duplicate_window)")
			},
			build: func(c *cobra.Command, base string, args []string) (string, string, any, error) {
				body := map[string]any{"name": args[0]}
				f := c.Flags()
				for flag, key := range map[string]string{"max-age": "max_age", "ack-wait": "ack_wait", "duplicate-window": "duplicate_window"} {
					if d, _ := f.GetDuration(flag); d > 0 {
						body[key] = d.String()
					}
				}
				for flag, key := range map[string]string{"max-messages": "max_messages", "max-bytes": "max_bytes"} {
					if n, _ := f.GetInt64(flag); n != 0 {
						body[key] = n
					}
				}
				if n, _ := f.GetInt("max-deliveries"); n != 0 {
					body["max_deliveries"] = n
				}
				return "POST", base + "/queues", body, nil
			}}.command(environ),
		apiCommand{use: "list --app T/E/A", short: "List queues with their stats", args: cobra.NoArgs,
			columns: []string{"name", "stats.depth", "stats.in_flight", "stats.dead_letters", "stats.published", "stats.acked", "stats.oldest", "spec.max_deliveries", "spec.ack_wait"},
			build: func(_ *cobra.Command, base string, _ []string) (string, string, any, error) {
				return "GET", base + "/queues", nil, nil
			}}.command(environ),
		apiCommand{use: "stats --app T/E/A NAME", short: "A queue's settings and stats", args: cobra.ExactArgs(1),
			build: func(_ *cobra.Command, base string, args []string) (string, string, any, error) {
				return "GET", base + "/queues/" + seg(args[0]), nil, nil
			}}.command(environ),
		apiCommand{use: "delete --app T/E/A NAME", short: "Delete a queue with its messages, dead letters and bindings", args: cobra.ExactArgs(1),
			build: func(_ *cobra.Command, base string, args []string) (string, string, any, error) {
				return "DELETE", base + "/queues/" + seg(args[0]), nil, nil
			}}.command(environ),
		apiCommand{use: "publish --app T/E/A NAME [--data TEXT | < file]", short: "Publish one message; answered once it is durable", args: cobra.ExactArgs(1),
			flags: publishFlags,
			build: func(c *cobra.Command, base string, args []string) (string, string, any, error) {
				body, err := message(c)
				return "POST", base + "/queues/" + seg(args[0]) + "/messages", body, err
			}}.command(environ),
		apiCommand{use: "consume --app T/E/A NAME", short: "Take messages (acknowledge them with queue ack)", args: cobra.ExactArgs(1),
			flags: func(c *cobra.Command) {
				c.Flags().Int("max", 1, "most messages")
				c.Flags().Duration("wait", 0, "long-poll: wait up to this long for the first message (at most 30s)")
				c.Flags().Bool("ack", false, "acknowledge the messages once they are printed (they are then deleted)")
			},
			build: func(c *cobra.Command, base string, args []string) (string, string, any, error) {
				n, _ := c.Flags().GetInt("max")
				w, _ := c.Flags().GetDuration("wait")
				return "POST", base + "/queues/" + seg(args[0]) + "/consume", map[string]any{"max": n, "wait_ms": w.Milliseconds()}, nil
			},
			after: ackPrinted}.command(environ),
	)
	for _, s := range []struct{ name, short string }{
		{"ack", "Acknowledge deliveries by token: the messages are deleted"},
		{"nack", "Deliver again (after --delay)"},
		{"extend", "Restart the deliveries' ack wait"},
		{"reject", "Send deliveries to the dead-letter queue"},
	} {
		cmd.AddCommand(apiCommand{use: s.name + " --app T/E/A NAME TOKEN...", short: s.short, args: cobra.MinimumNArgs(2),
			flags: func(c *cobra.Command) {
				if s.name == "nack" {
					c.Flags().Duration("delay", 0, "wait this long before redelivery")
				}
			},
			build: func(c *cobra.Command, base string, args []string) (string, string, any, error) {
				body := map[string]any{"tokens": args[1:]}
				if s.name == "nack" {
					d, _ := c.Flags().GetDuration("delay")
					body["delay_ms"] = d.Milliseconds()
				}
				return "POST", base + "/queues/" + seg(args[0]) + "/" + s.name, body, nil
			}}.command(environ))
	}
	dead := &cobra.Command{Use: "dead-letters", Short: "A queue's dead letters: list, get, replay, purge"}
	dead.AddCommand(
		apiCommand{use: "list --app T/E/A QUEUE", short: "List dead letters with reason and deliveries", args: cobra.ExactArgs(1),
			flags: func(c *cobra.Command) {
				c.Flags().Uint64("from", 0, "first sequence")
				c.Flags().Int("limit", 100, "most to list")
			},
			build: func(c *cobra.Command, base string, args []string) (string, string, any, error) {
				from, _ := c.Flags().GetUint64("from")
				limit, _ := c.Flags().GetInt("limit")
				return "GET", fmt.Sprintf("%s/queues/%s/dead-letters?from=%d&limit=%d", base, seg(args[0]), from, limit), nil, nil
			}}.command(environ),
		apiCommand{use: "get --app T/E/A QUEUE SEQ", short: "Inspect one dead letter", args: cobra.ExactArgs(2),
			build: func(_ *cobra.Command, base string, args []string) (string, string, any, error) {
				return "GET", base + "/queues/" + seg(args[0]) + "/dead-letters/" + seg(args[1]), nil, nil
			}}.command(environ),
		apiCommand{use: "replay --app T/E/A QUEUE [SEQ...]", short: "Move dead letters back to the queue (all without SEQ)", args: cobra.MinimumNArgs(1),
			build: func(_ *cobra.Command, base string, args []string) (string, string, any, error) {
				var seqs []uint64
				for _, a := range args[1:] {
					var n uint64
					if _, err := fmt.Sscan(a, &n); err != nil || n == 0 {
						return "", "", nil, fmt.Errorf("sequence %q: a positive number", a)
					}
					seqs = append(seqs, n)
				}
				return "POST", base + "/queues/" + seg(args[0]) + "/dead-letters/replay", map[string]any{"seqs": seqs}, nil
			}}.command(environ),
		apiCommand{use: "purge --app T/E/A QUEUE", short: "Delete every dead letter of a queue", args: cobra.ExactArgs(1),
			build: func(_ *cobra.Command, base string, args []string) (string, string, any, error) {
				return "DELETE", base + "/queues/" + seg(args[0]) + "/dead-letters", nil, nil
			}}.command(environ),
	)
	cmd.AddCommand(dead)
	return cmd
}

func exchangeCmd(environ []string) *cobra.Command {
	cmd := &cobra.Command{Use: "exchange", Short: "Exchanges: direct, fanout and topic routing to queues"}
	bind := func(op string) apiCommand {
		return apiCommand{use: op + " --app T/E/A EXCHANGE --queue QUEUE [--key KEY]", short: strings.ToUpper(op[:1]) + op[1:] + " a queue", args: cobra.ExactArgs(1),
			flags: func(c *cobra.Command) {
				c.Flags().String("queue", "", "queue of the same application")
				c.Flags().String("key", "", "binding key: the routing key (direct) or a pattern with * and # (topic)")
				_ = c.MarkFlagRequired("queue")
			},
			build: func(c *cobra.Command, base string, args []string) (string, string, any, error) {
				q, _ := c.Flags().GetString("queue")
				k, _ := c.Flags().GetString("key")
				return "POST", base + "/exchanges/" + seg(args[0]) + "/" + op, map[string]string{"queue": q, "key": k}, nil
			}}
	}
	cmd.AddCommand(
		apiCommand{use: "create --app T/E/A NAME --type direct|fanout|topic", short: "Create an exchange", args: cobra.ExactArgs(1),
			flags: func(c *cobra.Command) {
				c.Flags().String("type", "", "direct, fanout or topic")
				_ = c.MarkFlagRequired("type")
			},
			build: func(c *cobra.Command, base string, args []string) (string, string, any, error) {
				t, _ := c.Flags().GetString("type")
				return "POST", base + "/exchanges", map[string]string{"name": args[0], "type": t}, nil
			}}.command(environ),
		apiCommand{use: "list --app T/E/A", short: "List exchanges with their bindings", args: cobra.NoArgs,
			build: func(_ *cobra.Command, base string, _ []string) (string, string, any, error) {
				return "GET", base + "/exchanges", nil, nil
			}}.command(environ),
		apiCommand{use: "get --app T/E/A NAME", short: "An exchange and its bindings", args: cobra.ExactArgs(1),
			build: func(_ *cobra.Command, base string, args []string) (string, string, any, error) {
				return "GET", base + "/exchanges/" + seg(args[0]), nil, nil
			}}.command(environ),
		apiCommand{use: "delete --app T/E/A NAME", short: "Delete an exchange", args: cobra.ExactArgs(1),
			build: func(_ *cobra.Command, base string, args []string) (string, string, any, error) {
				return "DELETE", base + "/exchanges/" + seg(args[0]), nil, nil
			}}.command(environ),
		bind("bind").command(environ),
		bind("unbind").command(environ),
		apiCommand{use: "publish --app T/E/A NAME --routing-key KEY [--data TEXT | < file]", short: "Publish one message; answered once it is durable", args: cobra.ExactArgs(1),
			flags: func(c *cobra.Command) {
				publishFlags(c)
				c.Flags().String("routing-key", "", "dot-separated words the exchange routes by")
			},
			build: func(c *cobra.Command, base string, args []string) (string, string, any, error) {
				body, err := message(c)
				return "POST", base + "/exchanges/" + seg(args[0]) + "/messages", body, err
			}}.command(environ),
	)
	return cmd
}

// ackPrinted acknowledges, with queue consume --ack, the deliveries just printed. A failure
// says which messages stay unacknowledged: they come back after the queue's ack wait.
func ackPrinted(cmd *cobra.Command, cf *clientFlags, base string, args []string, answer json.RawMessage) error {
	if ack, _ := cmd.Flags().GetBool("ack"); !ack {
		return nil
	}
	var out struct {
		Messages []struct {
			ID       string `json:"id"`
			AckToken string `json:"ack_token"`
		} `json:"messages"`
	}
	if err := json.Unmarshal(answer, &out); err != nil {
		return fmt.Errorf("the server's answer to consume: %w", err)
	}
	if len(out.Messages) == 0 {
		return nil
	}
	tokens := make([]string, len(out.Messages))
	for i, m := range out.Messages {
		tokens[i] = m.AckToken
	}
	if err := cf.call(cmd.Context(), "POST", base+"/queues/"+seg(args[0])+"/ack", map[string]any{"tokens": tokens}, nil); err != nil {
		return fmt.Errorf("the %d message(s) printed were not acknowledged and will be delivered again after the ack wait: %w", len(tokens), err)
	}
	if f, _ := outputFormat(cmd); f == formatTable {
		fmt.Fprintf(cmd.ErrOrStderr(), "acknowledged %d message(s)\n", len(tokens))
	}
	return nil
}
