package backup

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"slices"
	"sync"
	"time"
)

// BackupJob is a backup, verify or restore running (or run) in the background: the API starts one
// and answers at once; the caller follows it until it ends.
type BackupJob struct {
	ID       string         `json:"id"`
	Kind     string         `json:"kind"` // create, verify, restore
	Tenant   string         `json:"tenant,omitempty"`
	Backup   string         `json:"backup,omitempty"` // the backup taken, checked or restored
	Actor    string         `json:"-"`
	State    string         `json:"state"` // running, done, failed
	Started  time.Time      `json:"started"`
	Finished time.Time      `json:"finished,omitzero"`
	Progress Progress       `json:"progress"`
	Error    string         `json:"error,omitempty"`
	Report   *RestoreReport `json:"report,omitempty"`
}

// Job states.
const (
	JobRunning = "running"
	JobDone    = "done"
	JobFailed  = "failed"
)

// Jobs runs backup work one at a time (a second start while one runs is ErrBusy) and keeps the
// last few jobs to be asked about. Jobs live in memory: a restart forgets them.
type Jobs struct {
	ctx  context.Context
	done func(BackupJob)

	mu   sync.Mutex
	jobs []*BackupJob
	busy bool
	wg   sync.WaitGroup
}

// ErrBusy is returned when a backup job is already running.
var ErrBusy = errors.New("a backup, verify or restore is already running")

const keepJobs = 32

// NewJobs returns a runner whose jobs run under ctx and report to done when they end.
func NewJobs(ctx context.Context, done func(BackupJob)) *Jobs {
	return &Jobs{ctx: ctx, done: done}
}

// Start runs work as a new job. work reports progress through its argument, and returns the
// backup it took, checked or restored, and what a restore did.
func (j *Jobs) Start(kind, tenant, backupID, actor string, work func(ctx context.Context, progress func(Progress)) (string, *RestoreReport, error)) (BackupJob, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.busy {
		return BackupJob{}, ErrBusy
	}
	r := make([]byte, 6)
	_, _ = rand.Read(r)
	job := &BackupJob{ID: "bj_" + hex.EncodeToString(r), Kind: kind, Tenant: tenant, Backup: backupID, Actor: actor,
		State: JobRunning, Started: time.Now().UTC()}
	j.jobs = append(j.jobs, job)
	if len(j.jobs) > keepJobs {
		j.jobs = slices.Delete(j.jobs, 0, len(j.jobs)-keepJobs)
	}
	j.busy = true
	j.wg.Add(1)
	go func() {
		defer j.wg.Done()
		id, rep, err := work(j.ctx, func(p Progress) {
			j.mu.Lock()
			job.Progress = p
			j.mu.Unlock()
		})
		j.mu.Lock()
		job.Finished = time.Now().UTC()
		job.State, job.Report = JobDone, rep
		if id != "" {
			job.Backup = id
		}
		if err != nil {
			job.State, job.Error = JobFailed, err.Error()
		}
		final := *job
		j.busy = false
		j.mu.Unlock()
		if j.done != nil {
			j.done(final)
		}
	}()
	return *job, nil
}

// Get returns a job by id.
func (j *Jobs) Get(id string) (BackupJob, bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	for _, job := range j.jobs {
		if job.ID == id {
			return *job, true
		}
	}
	return BackupJob{}, false
}

// Wait waits for the running job, if any, to end.
func (j *Jobs) Wait() { j.wg.Wait() }
