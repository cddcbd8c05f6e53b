package app

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/penstock/penstock/internal/api"
	"github.com/penstock/penstock/internal/certs"
	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/datadir"
	"github.com/penstock/penstock/internal/engine"
	"github.com/penstock/penstock/internal/keyring"
	"github.com/penstock/penstock/internal/redact"
)

// ClusterKeyFile, in the data directory, holds the cluster credential every route presents.
// The first node makes it at its first start; `penstock cluster join` brings it to the others.
const ClusterKeyFile = "cluster.key"

const clusterKeyProtects = "the cluster credential every node's routes present: " +
	"copy it from another node of the cluster (or join again with a token from one)"

// Placement tags of environments in a cluster whose nodes carry tags.
const (
	TagProduction    = "production"
	TagNonProduction = "non-production"
)

// NodeName is this node's name: node.name, or the host name.
func NodeName(cfg config.Config) (string, error) {
	if cfg.Node.Name != "" {
		return cfg.Node.Name, nil
	}
	h, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("node.name is not set and the host name is unknown: %w", err)
	}
	return h, nil
}

func (a *App) clusterOptions(cfg config.Config) (*engine.Cluster, error) {
	node, err := NodeName(cfg)
	if err != nil {
		return nil, err
	}
	cred, err := datadir.LoadKey(cfg.DataDir, ClusterKeyFile, clusterKeyProtects)
	if err != nil {
		return nil, err
	}
	var hosts []string
	for _, hp := range []string{cfg.Cluster.Advertise, cfg.Cluster.Listen} {
		if h, _, err := net.SplitHostPort(hp); err == nil && h != "" {
			if ip := net.ParseIP(h); ip == nil || !ip.IsUnspecified() {
				hosts = append(hosts, h)
			}
		}
	}
	if h, err := os.Hostname(); err == nil {
		hosts = append(hosts, h)
	}
	hosts = append(hosts, cfg.API.TLS.SANs...)
	rt, err := a.certs.RouteTLS(node, hosts)
	if err != nil {
		return nil, err
	}
	c := &engine.Cluster{
		Name: cfg.Cluster.Name, Node: node, Tags: cfg.Node.Tags, Listen: cfg.Cluster.Listen,
		Advertise: cfg.Cluster.Advertise, Peers: cfg.Cluster.Peers, TLS: rt, Credential: cred,
		// As the fabric sets them on the accounts it opens (fabric.max_storage).
		TenantLimits: engine.AccountLimits{Storage: cfg.Fabric.MaxStorage},
	}
	if len(cfg.Node.Tags) > 0 {
		c.Placement = Placement
	}
	return c, nil
}

// Placement is where an account's streams go in a cluster whose nodes carry tags: a
// production environment on nodes tagged production, every other environment on nodes
// tagged non-production, the platform's own state anywhere.
func Placement(account string) []string {
	if account == engine.PlatformAccount {
		return nil
	}
	if strings.HasSuffix(account, "_production") {
		return []string{TagProduction}
	}
	return []string{TagNonProduction}
}

// joinToken is what `penstock cluster join-token` seals under the master key.
type joinToken struct {
	Cluster    string `json:"cluster"`
	CACert     []byte `json:"ca_cert"`
	CAKey      []byte `json:"ca_key"`
	Credential string `json:"credential"`
	// Accounts the node that made the token had registered: the new node declares them to
	// its engine before it first starts (those created later it finds at start, and starts
	// its engine once more).
	Accounts []string `json:"accounts"`
}

const joinPurpose = "cluster-join-token"

// JoinToken seals, under the master key, what a new node needs to join this node's cluster:
// the platform CA and the cluster credential. Only a process with the same master key opens
// it.
func JoinToken(ctx context.Context, cfg config.Config) (string, error) {
	if !cfg.Cluster.Enabled() {
		return "", errors.New("this node is not part of a cluster: set cluster.listen (docs/cluster.md)")
	}
	certPEM, keyPEM, err := certs.CAFiles(cfg.DataDir)
	if err != nil {
		return "", fmt.Errorf("platform CA of %s: %w (start the first node once before making a join token)", cfg.DataDir, err)
	}
	cred, err := datadir.ReadKey(filepath.Join(cfg.DataDir, ClusterKeyFile))
	if err != nil {
		return "", fmt.Errorf("cluster credential: %w (start the first node once before making a join token)", err)
	}
	m, err := keyring.LoadMaster(ctx, cfg.DataDir, cfg.Keyring)
	if err != nil {
		return "", err
	}
	defer m.Close()
	accounts, err := engine.KnownAccounts(cfg.DataDir)
	if err != nil {
		return "", err
	}
	b, _ := json.Marshal(joinToken{Cluster: cfg.Cluster.Name, CACert: certPEM, CAKey: keyPEM, Credential: cred.Reveal(), Accounts: accounts})
	ct, err := m.SealShared(ctx, joinPurpose, b)
	if err != nil {
		return "", err
	}
	return "penstock-join-1." + base64.RawURLEncoding.EncodeToString(ct), nil
}

// Join installs a join token into the new, empty data directory of cfg: the platform CA and
// the cluster credential. The node's master key (keyring.master_key or keyring.kms_url) must
// be the cluster's: the token opens with nothing else.
func Join(ctx context.Context, cfg config.Config, token string) error {
	if !cfg.Cluster.Enabled() {
		return errors.New("set cluster.listen and cluster.peers for this node before joining (docs/cluster.md)")
	}
	raw, ok := strings.CutPrefix(strings.TrimSpace(token), "penstock-join-1.")
	if !ok {
		return errors.New("join token: not a Penstock join token (it starts with penstock-join-1.)")
	}
	ct, err := base64.RawURLEncoding.DecodeString(raw)
	if err != nil {
		return fmt.Errorf("join token: %w", err)
	}
	// The master key opens the token in a scratch directory: a wrong key must leave nothing
	// sealed under it in the new node's directory.
	scratch, err := os.MkdirTemp("", "penstock-join-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(scratch)
	m, err := keyring.LoadMaster(ctx, scratch, cfg.Keyring)
	if err != nil {
		return err
	}
	defer m.Close()
	b, err := m.OpenShared(ctx, joinPurpose, ct)
	if err != nil {
		return fmt.Errorf("join token: %w", err)
	}
	var jt joinToken
	if err := json.Unmarshal(b, &jt); err != nil {
		return fmt.Errorf("join token: %w", err)
	}
	if jt.Cluster != cfg.Cluster.Name {
		return fmt.Errorf("join token is for cluster %q, this node's cluster.name is %q", jt.Cluster, cfg.Cluster.Name)
	}
	if _, err := os.Stat(filepath.Join(cfg.DataDir, ClusterKeyFile)); err == nil {
		return fmt.Errorf("data directory %s has a cluster credential already: it joined a cluster before", cfg.DataDir)
	}
	if err := certs.InstallCA(cfg.DataDir, jt.CACert, jt.CAKey); err != nil {
		return err
	}
	if err := engine.DeclareAccounts(cfg.DataDir, jt.Accounts); err != nil {
		return err
	}
	return datadir.WriteKey(filepath.Join(cfg.DataDir, ClusterKeyFile), redact.NewSecret(jt.Credential))
}

// clusterAPI answers the cluster routes; nil on a single node.
func (a *App) clusterAPI() api.Cluster {
	if !a.eng.Clustered() {
		return nil
	}
	return clusterOps{a}
}

type clusterOps struct{ a *App }

// Status is the cluster as this node sees it.
func (c clusterOps) Status() (engine.ClusterStatus, error) {
	st, err := c.a.eng.ClusterStatus()
	if err != nil {
		return st, err
	}
	slices.SortFunc(st.Nodes, func(x, y engine.PeerStatus) int { return strings.Compare(x.Name, y.Name) })
	return st, nil
}

// Drain stops this node as SIGTERM does; its engine hands its leaderships over as it closes.
func (c clusterOps) Drain() error {
	c.a.drainOnce.Do(func() { close(c.a.drain) })
	return nil
}

// InitCluster prepares the new data directory of a cluster's first node: the platform CA and
// the cluster credential, so that a join token can be made before any node starts (the
// nodes then start together: none serves before a majority is up).
func InitCluster(cfg config.Config) error {
	if !cfg.Cluster.Enabled() {
		return errors.New("set cluster.listen and cluster.peers for this node first (docs/cluster.md)")
	}
	if _, err := os.Stat(filepath.Join(cfg.DataDir, ClusterKeyFile)); err == nil {
		return fmt.Errorf("%s has a cluster credential already", cfg.DataDir)
	}
	first, err := datadir.FirstStart(cfg.DataDir)
	if err != nil {
		return err
	}
	if !first {
		return fmt.Errorf("data directory %s holds data already: a cluster starts from new directories (restore a backup onto the first node's new directory to bring a platform in)", cfg.DataDir)
	}
	if _, err := certs.NewManager(cfg.DataDir, cfg.API.TLS, slog.New(slog.DiscardHandler)); err != nil {
		return err
	}
	_, err = datadir.LoadKey(cfg.DataDir, ClusterKeyFile, clusterKeyProtects)
	return err
}
