// Command penstock runs the Penstock server and is its command-line client.
package main

import (
	"context"
	"os/signal"
	"syscall"

	"github.com/penstock/penstock/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	cli.Main(ctx)
}
