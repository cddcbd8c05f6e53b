package api

import (
	"context"
	"errors"
	"net/http"

	"github.com/danielgtaylor/huma/v2"

	"github.com/penstock/penstock/internal/authz"
	"github.com/penstock/penstock/internal/backup"
)

// Backups is the platform's backup service as the API uses it; nil without backup.target.
type Backups interface {
	// Start begins a job: kind create (id empty), verify or restore (id named); tenant limits
	// it to one tenant ("" is the whole platform).
	Start(kind, tenant, id, actor string) (backup.BackupJob, error)
	Job(id string) (backup.BackupJob, bool)
	List(ctx context.Context, tenant string) ([]backup.BackupSummary, error)
}

type backupCreateInput struct {
	Body struct {
		Tenant string `json:"tenant,omitempty" doc:"back up this tenant only; empty backs up the whole platform" pattern:"^[a-z0-9][a-z0-9-]{0,62}$"`
	}
}

type backupJobOutput struct{ Body backup.BackupJob }

type backupListInput struct {
	Tenant string `query:"tenant" doc:"the tenant's own backups and the full backups; empty lists all (platform administrators)" pattern:"^[a-z0-9][a-z0-9-]{0,62}$"`
}

type backupListOutput struct {
	Body struct {
		Backups []backup.BackupSummary `json:"backups"`
	}
}

type backupIDInput struct {
	ID   string `path:"id" doc:"a backup id, as backup list shows it" pattern:"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}(-[a-z0-9][a-z0-9-]{0,62})?$"`
	Body struct {
		Tenant string `json:"tenant,omitempty" doc:"only this tenant's parts; a restore into the running platform needs it" pattern:"^[a-z0-9][a-z0-9-]{0,62}$"`
	}
}

type backupJobInput struct {
	Job string `path:"job" pattern:"^bj_[0-9a-f]{12}$"`
}

func backupScope(tenant string) authz.Scope {
	if tenant == "" {
		return authz.Platform
	}
	return authz.Scope{Tenant: tenant}
}

func registerBackups(g gate, hapi huma.API, o Options) {
	notConfigured := NewError(http.StatusConflict, "backup.not_configured", "no backup target is configured (backup.target)")
	start := func(kind, tenant, id string, c *caller) (*backupJobOutput, error) {
		if o.Backups == nil {
			return nil, notConfigured
		}
		j, err := o.Backups.Start(kind, tenant, id, c.actor())
		if errors.Is(err, backup.ErrBusy) {
			return nil, NewError(http.StatusConflict, "backup.busy", err.Error())
		}
		if err != nil {
			return nil, internalError(o, "backup "+kind, err)
		}
		return &backupJobOutput{Body: j}, nil
	}

	register(g, hapi, Route{Action: authz.BackupCreate}, huma.Operation{
		OperationID: "backup-create", Method: http.MethodPost, Path: "/v1/backups",
		Summary:       "Take a backup of the platform, or of one tenant, in the background; follow it with GET /v1/backups/jobs/{job}",
		Tags:          []string{"backups"},
		DefaultStatus: http.StatusAccepted,
		Errors:        []int{http.StatusConflict},
	}, func(in *backupCreateInput) authz.Scope { return backupScope(in.Body.Tenant) },
		func(ctx context.Context, c *caller, in *backupCreateInput) (*backupJobOutput, error) {
			return start("create", in.Body.Tenant, "", c)
		})

	register(g, hapi, Route{Action: authz.BackupCreate}, huma.Operation{
		OperationID: "backup-list", Method: http.MethodGet, Path: "/v1/backups",
		Summary: "Backups in the target, newest first, as their signed manifests describe them",
		Tags:    []string{"backups"},
		Errors:  []int{http.StatusConflict},
	}, func(in *backupListInput) authz.Scope { return backupScope(in.Tenant) },
		func(ctx context.Context, c *caller, in *backupListInput) (*backupListOutput, error) {
			if o.Backups == nil {
				return nil, notConfigured
			}
			list, err := o.Backups.List(ctx, in.Tenant)
			if err != nil {
				return nil, internalError(o, "backup list", err)
			}
			out := &backupListOutput{}
			out.Body.Backups = list
			return out, nil
		})

	register(g, hapi, Route{Action: authz.BackupCreate}, huma.Operation{
		OperationID: "backup-verify", Method: http.MethodPost, Path: "/v1/backups/{id}/verify",
		Summary:       "Check a backup without restoring it: its signature, and that every part decrypts and matches its hash",
		Tags:          []string{"backups"},
		DefaultStatus: http.StatusAccepted,
		Errors:        []int{http.StatusConflict},
	}, func(in *backupIDInput) authz.Scope { return backupScope(in.Body.Tenant) },
		func(ctx context.Context, c *caller, in *backupIDInput) (*backupJobOutput, error) {
			return start("verify", in.Body.Tenant, in.ID, c)
		})

	register(g, hapi, Route{Action: authz.BackupRestore}, huma.Operation{
		OperationID: "backup-restore", Method: http.MethodPost, Path: "/v1/backups/{id}/restore",
		Summary: "Restore one tenant from a backup into the running platform, replacing its queues, exchanges, " +
			"pipelines and secrets (a whole platform is restored into an empty data directory: penstock backup restore --to-data-dir)",
		Tags:          []string{"backups"},
		DefaultStatus: http.StatusAccepted,
		Errors:        []int{http.StatusConflict, http.StatusUnprocessableEntity},
	}, func(in *backupIDInput) authz.Scope { return backupScope(in.Body.Tenant) },
		func(ctx context.Context, c *caller, in *backupIDInput) (*backupJobOutput, error) {
			if in.Body.Tenant == "" {
				return nil, &Error{Status: http.StatusUnprocessableEntity, Code: "invalid_request",
					Message: "a restore into the running platform is of one tenant: give body.tenant (a whole platform is restored into an empty data directory)",
					Details: []*ErrorDetail{{Location: "body.tenant", Message: "required"}}}
			}
			return start("restore", in.Body.Tenant, in.ID, c)
		})

	register(g, hapi, Route{Action: authz.BackupCreate}, huma.Operation{
		OperationID: "backup-job", Method: http.MethodGet, Path: "/v1/backups/jobs/{job}",
		Summary: "A backup, verify or restore job: its state, progress and outcome",
		Tags:    []string{"backups"},
		Errors:  []int{http.StatusConflict},
	}, func(in *backupJobInput) authz.Scope {
		if o.Backups != nil {
			if j, ok := o.Backups.Job(in.Job); ok {
				return backupScope(j.Tenant)
			}
		}
		return authz.Platform
	}, func(ctx context.Context, c *caller, in *backupJobInput) (*backupJobOutput, error) {
		if o.Backups == nil {
			return nil, notConfigured
		}
		j, ok := o.Backups.Job(in.Job)
		if !ok {
			return nil, NewError(http.StatusNotFound, "not_found", "no such backup job "+in.Job+" (jobs are kept in memory until a restart)")
		}
		return &backupJobOutput{Body: j}, nil
	})
}
