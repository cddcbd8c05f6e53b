package cli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// progress shows long work on standard error: on a terminal one line rewritten in place, and
// otherwise a line at most every progressEvery, so a log of a scripted run stays short.
type progress struct {
	w     io.Writer
	tty   bool
	shown time.Time
	width int
	last  string
}

const progressEvery = 5 * time.Second

func newProgress(cmd *cobra.Command) *progress {
	w := cmd.ErrOrStderr()
	return &progress{w: w, tty: isTerminal(w)}
}

// show replaces the line shown.
func (p *progress) show(line string) {
	if p.tty {
		pad := max(p.width-len(line), 0)
		fmt.Fprintf(p.w, "\r%s%s", line, strings.Repeat(" ", pad))
		p.width = len(line)
		return
	}
	if line != p.last && time.Since(p.shown) >= progressEvery {
		fmt.Fprintln(p.w, line)
		p.shown = time.Now()
	}
	p.last = line
}

// end clears the line shown on a terminal: what the work came to is printed after it.
func (p *progress) end() {
	if p.tty && p.width > 0 {
		fmt.Fprintf(p.w, "\r%s\r", strings.Repeat(" ", p.width))
		p.width = 0
	}
}

// waitFlag is --wait: given, or else on when standard output is a terminal.
func waitFlag(cmd *cobra.Command) bool {
	if cmd.Flags().Changed("wait") {
		w, _ := cmd.Flags().GetBool("wait")
		return w
	}
	return isTerminal(cmd.OutOrStdout())
}

// poll calls check every interval until it says done, returns an error, or ctx ends.
func poll(ctx context.Context, interval time.Duration, check func() (bool, error)) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		done, err := check()
		if err != nil || done {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// count prints a number with thousands separators.
func count(n int64) string {
	s := fmt.Sprint(n)
	if n < 0 {
		return s
	}
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// elapsed prints a duration to the tenth of a second.
func elapsed(d time.Duration) string { return d.Round(100 * time.Millisecond).String() }
