package api

import (
	"context"
	"errors"
	"net/http"

	"github.com/danielgtaylor/huma/v2"

	"github.com/penstock/penstock/internal/authz"
	"github.com/penstock/penstock/internal/engine"
)

// Cluster is what the cluster routes need from the node that answers them.
type Cluster interface {
	Status() (engine.ClusterStatus, error)
	// Drain starts this node's lame-duck stop: it stops taking requests and clients, hands its
	// engine leaderships to the other nodes, stops its pipelines (their leases pass on) and
	// exits 0.
	Drain() error
}

type clusterStatusOutput struct {
	Body engine.ClusterStatus
}

type drainOutput struct {
	Body struct {
		Node   string `json:"node"`
		Status string `json:"status" enum:"draining"`
	}
}

func registerCluster(g gate, hapi huma.API, o Options) {
	manage := Route{Action: authz.ClusterManage}
	notClustered := func(err error) error {
		if errors.Is(err, engine.ErrNotClustered) {
			return NewError(http.StatusConflict, "cluster.not_clustered", err.Error())
		}
		return internalError(o, "cluster", err)
	}
	register(g, hapi, manage, huma.Operation{
		OperationID: "cluster-status", Method: http.MethodGet, Path: "/v1/cluster",
		Summary: "The cluster as the answering node sees it: nodes, the engine's leader, routes, and every stream's leader and replicas (lagging ones marked)",
		Tags:    []string{"cluster"},
		Errors:  []int{http.StatusConflict},
	}, platformScope[struct{}], func(ctx context.Context, _ *caller, _ *struct{}) (*clusterStatusOutput, error) {
		if o.Cluster == nil {
			return nil, notClustered(engine.ErrNotClustered)
		}
		st, err := o.Cluster.Status()
		if err != nil {
			return nil, notClustered(err)
		}
		return &clusterStatusOutput{Body: st}, nil
	})

	register(g, hapi, manage, huma.Operation{
		OperationID: "cluster-drain", Method: http.MethodPost, Path: "/v1/cluster/drain",
		Summary: "Drain the answering node: stop taking requests and clients, hand its leaderships and pipelines to the other nodes, then exit 0",
		Tags:    []string{"cluster"}, DefaultStatus: http.StatusAccepted,
		Errors: []int{http.StatusConflict},
	}, platformScope[struct{}], func(ctx context.Context, _ *caller, _ *struct{}) (*drainOutput, error) {
		if o.Cluster == nil {
			return nil, notClustered(engine.ErrNotClustered)
		}
		st, err := o.Cluster.Status()
		if err != nil {
			return nil, notClustered(err)
		}
		if err := o.Cluster.Drain(); err != nil {
			return nil, notClustered(err)
		}
		out := &drainOutput{}
		out.Body.Node, out.Body.Status = st.Node, "draining"
		return out, nil
	})
}
