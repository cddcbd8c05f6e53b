package keyring

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/penstock/penstock/internal/crashpoint"
)

// Job is the progress of re-encrypting a scope's records to its primary key version. It is
// stored in the keyring bucket and updated as the job goes, so a job interrupted by a
// restart resumes where it stopped.
type Job struct {
	Scope   string `json:"scope"`
	Version int    `json:"version"`
	// Cursors holds, per sealed store (bucket), the key of the last record done there.
	Cursors  map[string]string `json:"cursors,omitempty"`
	Total    int               `json:"total"`
	Done     int               `json:"done"`
	Rewrap   int               `json:"rewrapped"`
	Started  time.Time         `json:"started"`
	Finished time.Time         `json:"finished,omitzero"`
	Error    string            `json:"error,omitempty"`
}

func jobKey(s Scope) string { return "job." + s.key() }

// jobSaveEvery is how many records a job handles between saves of its cursor.
const jobSaveEvery = 25

func (k *Keyring) recordJob(ctx context.Context, s Scope, version int) error {
	total := 0
	for _, st := range k.sealedStores() {
		keys, err := st.keys(ctx, s)
		if err != nil {
			return err
		}
		total += len(keys)
	}
	j := Job{Scope: s.String(), Version: version, Total: total, Started: time.Now().UTC()}
	b, _ := json.Marshal(j)
	if _, err := k.kv.Put(ctx, jobKey(s), b); err != nil {
		return fmt.Errorf("keyring: record re-encryption job: %w", err)
	}
	return nil
}

func (k *Keyring) goJob(s Scope) {
	k.jobs.Add(1)
	go func() {
		defer k.jobs.Done()
		if err := k.runJob(k.jobCtx, s); err != nil && !errors.Is(err, context.Canceled) {
			k.log.Error("re-encryption job", "scope", s.String(), "error", err)
		}
	}()
}

// ResumeJobs restarts every unfinished re-encryption job in the background. Call it once the
// sealed stores are open, since a job walks the stores it knows.
func (k *Keyring) ResumeJobs(ctx context.Context) error {
	jobs, err := k.Jobs(ctx)
	if err != nil {
		return err
	}
	for _, j := range jobs {
		if j.Finished.IsZero() {
			s, err := ParseScope(j.Scope)
			if err != nil {
				continue
			}
			k.log.Info("resuming re-encryption job", "scope", j.Scope, "done", j.Done, "total", j.Total)
			k.goJob(s)
		}
	}
	return nil
}

// Jobs lists the re-encryption jobs, finished or not.
func (k *Keyring) Jobs(ctx context.Context) ([]Job, error) {
	lister, err := k.kv.ListKeysFiltered(ctx, "job.>")
	if err != nil {
		return nil, fmt.Errorf("keyring: list jobs: %w", err)
	}
	var out []Job
	for key := range lister.Keys() {
		e, err := k.kv.Get(ctx, key)
		if err != nil {
			continue
		}
		var j Job
		if json.Unmarshal(e.Value(), &j) == nil {
			out = append(out, j)
		}
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Scope < out[b].Scope })
	return out, nil
}

func (k *Keyring) sealedStores() []*Sealed {
	k.mu.Lock()
	defer k.mu.Unlock()
	names := make([]string, 0, len(k.stores))
	for n := range k.stores {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make([]*Sealed, len(names))
	for i, n := range names {
		out[i] = k.stores[n]
	}
	return out
}

// runJob rewraps, store by store and key by key in sorted order, every record of the scope
// that is not sealed with the primary key, saving its cursor as it goes. A record changed
// meanwhile is left alone: whoever changed it sealed it with the primary key.
func (k *Keyring) runJob(ctx context.Context, s Scope) error {
	e, err := k.kv.Get(ctx, jobKey(s))
	if err != nil {
		return fmt.Errorf("keyring: read job: %w", err)
	}
	var j Job
	if err := json.Unmarshal(e.Value(), &j); err != nil {
		return fmt.Errorf("keyring: job record: %w", err)
	}
	rev := e.Revision()
	if j.Cursors == nil {
		j.Cursors = map[string]string{}
	}
	// Progress is saved even when the job is stopped: that is when it matters most.
	saveCtx := context.WithoutCancel(ctx)
	save := func() error {
		b, _ := json.Marshal(j)
		r, err := k.kv.Update(saveCtx, jobKey(s), b, rev)
		if err != nil {
			return fmt.Errorf("keyring: save job: %w", err)
		}
		rev = r
		return nil
	}
	dk, err := k.dataKeyFor(ctx, s, false)
	if err != nil {
		j.Error, j.Finished = err.Error(), time.Now().UTC()
		return errors.Join(err, save())
	}
	if got := dk.versions[dk.primary]; got < j.Version {
		j.Error, j.Finished = fmt.Sprintf("the rotation stopped before key version %d was stored (primary is %d): rotate again", j.Version, got), time.Now().UTC()
		return save()
	}
	for _, st := range k.sealedStores() {
		keys, err := st.keys(ctx, s)
		if err != nil {
			return err
		}
		bucketName := st.kv.Bucket()
		for _, key := range keys {
			if key <= j.Cursors[bucketName] {
				continue
			}
			if err := ctx.Err(); err != nil {
				return errors.Join(err, save())
			}
			rewrapped, err := k.rewrap(ctx, st, s, dk, key)
			if err != nil {
				return errors.Join(err, save())
			}
			j.Cursors[bucketName], j.Done = key, j.Done+1
			if rewrapped {
				j.Rewrap++
			}
			if j.Done%jobSaveEvery == 0 {
				if err := save(); err != nil {
					return err
				}
			}
			if k.afterRecord != nil {
				k.afterRecord(j.Done)
			}
			crashpoint.Hit("reencrypt/record")
		}
	}
	j.Finished = time.Now().UTC()
	if err := save(); err != nil {
		return err
	}
	k.log.Info("re-encryption job finished", "scope", j.Scope, "records", j.Done, "rewrapped", j.Rewrap)
	return nil
}

func (k *Keyring) rewrap(ctx context.Context, st *Sealed, s Scope, dk *dataKey, key string) (bool, error) {
	e, err := st.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if dk.isPrimary(e.Value()) {
		return false, nil
	}
	id := key[len(s.key())+1:]
	pt, err := k.Unseal(ctx, s, st.kind, id, e.Value())
	if err != nil {
		return false, fmt.Errorf("keyring: re-encrypt %s/%s: %w", st.kv.Bucket(), key, err)
	}
	ct, err := k.Seal(ctx, s, st.kind, id, pt)
	clear(pt)
	if err != nil {
		return false, err
	}
	if _, err := st.kv.Update(ctx, key, ct, e.Revision()); err != nil {
		// Changed meanwhile, by a writer that used the primary key, is fine; anything else
		// stops the job, which resumes from here.
		if now, gerr := st.kv.Get(ctx, key); errors.Is(gerr, jetstream.ErrKeyNotFound) || gerr == nil && now.Revision() != e.Revision() {
			return false, nil
		}
		return false, fmt.Errorf("keyring: re-encrypt %s/%s: %w", st.kv.Bucket(), key, err)
	}
	return true, nil
}
