package app

import (
	"github.com/penstock/penstock/internal/connector"
	"github.com/penstock/penstock/internal/connector/files"
	"github.com/penstock/penstock/internal/connector/httpc"
	"github.com/penstock/penstock/internal/connector/postgres"
	"github.com/penstock/penstock/internal/connector/queue"
	"github.com/penstock/penstock/internal/connector/webhook"
)

// Connectors is the registry of every connector Penstock ships: the one place a connector is
// added.
func Connectors() *connector.Registry {
	return connector.NewRegistry(files.Plugin, httpc.Plugin, postgres.Plugin, queue.Plugin, webhook.Plugin)
}
