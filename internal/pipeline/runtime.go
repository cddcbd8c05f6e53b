package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/penstock/penstock/internal/connector"
)

// DeadRecord is a record the pipeline gave up on, as its dead-letter queue holds it.
type DeadRecord struct {
	Pipeline string           `json:"pipeline"`
	Run      string           `json:"run"`
	Stage    string           `json:"stage" doc:"transform (the original record) or sink (the transformed one)"`
	Error    string           `json:"error"`
	Time     time.Time        `json:"time"`
	Record   connector.Record `json:"record"`
}

// RunStats counts what a run did.
type RunStats struct {
	In       int64 `json:"records_in"`
	Out      int64 `json:"records_out"`
	Filtered int64 `json:"records_filtered"`
	Failed   int64 `json:"records_failed"`
	Bytes    int64 `json:"bytes_out"`
	Batches  int64 `json:"batches"`
}

// runner moves records from a source to a sink, one batch at a time, at least once: a batch
// is acknowledged to its source only after the sink committed it and any failed records are in
// the dead-letter queue.
type runner struct {
	spec       Spec
	runID      string
	src        connector.Source
	sink       connector.Sink
	transforms []Transform
	// dead publishes failed records; nil when the spec has no dead-letter queue.
	dead func(ctx context.Context, recs []DeadRecord) error
	log  *slog.Logger
	// progress is called after each batch, and every progressEvery while none comes, with
	// the totals so far and the latest dead-letter error.
	progress func(st RunStats, lastDead string)
	lastDead string
}

// progressEvery is how often a run reports its totals while no batch comes.
var progressEvery = 5 * time.Second

// run reads until the source ends (or, continuous, until stop closes), then returns. Reading
// and transforming the next batch overlaps writing the current one; acknowledgements stay in
// read order, so a checkpoint never passes a batch that is not committed. Stopping ends reads
// at once; the batch in flight is finished with ctx, which the caller cancels after its drain
// timeout.
func (r *runner) run(ctx context.Context, stop <-chan struct{}, continuous bool) (RunStats, error) {
	var st RunStats
	readCtx, cancelRead := context.WithCancel(ctx)
	defer cancelRead()
	go func() {
		select {
		case <-stop:
			cancelRead()
		case <-readCtx.Done():
		}
	}()
	batches := make(chan transformed, 1)
	var readErr error
	go func() {
		defer close(batches)
		readErr = r.read(readCtx, stop, continuous, batches)
	}()
	var err error
	tick := time.NewTicker(progressEvery)
	defer tick.Stop()
	for {
		var b transformed
		var more bool
		select {
		case b, more = <-batches:
		case <-tick.C:
			if err == nil && r.progress != nil {
				r.progress(st, r.lastDead)
			}
			continue
		}
		if !more {
			break
		}
		if err != nil {
			// A batch read ahead of a failure goes back to its source.
			_ = b.ack(ctx, err)
			continue
		}
		if err = r.commit(ctx, b, &st); err != nil {
			cancelRead()
			continue
		}
		if r.progress != nil {
			r.progress(st, r.lastDead)
		}
	}
	if err != nil {
		return st, err
	}
	return st, readErr
}

// transformed is a batch read and transformed, waiting to be written.
type transformed struct {
	in       int
	ack      connector.AckFunc
	out      []connector.Record
	dead     []DeadRecord
	filtered int64
}

// read reads and transforms batches until the source ends or stop closes.
func (r *runner) read(ctx context.Context, stop <-chan struct{}, continuous bool, out chan<- transformed) error {
	for {
		select {
		case <-stop:
			return nil
		default:
		}
		recs, ack, err := r.src.Read(ctx, r.spec.Batch.Size)
		if errors.Is(err, connector.ErrEndOfInput) {
			if !continuous {
				return nil
			}
			select {
			case <-stop:
				return nil
			case <-ctx.Done():
				return nil
			case <-time.After(r.spec.Batch.FlushInterval):
			}
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil // stopped while waiting, or the writer failed
			}
			return fmt.Errorf("source: %w", err)
		}
		b := transformed{in: len(recs), ack: ack}
		b.out, b.dead, b.filtered = r.transform(recs)
		select {
		case out <- b:
		case <-ctx.Done():
			_ = ack(context.Background(), ctx.Err())
			return nil
		}
	}
}

func (r *runner) commit(ctx context.Context, b transformed, st *RunStats) error {
	st.In += int64(b.in)
	st.Batches++
	st.Filtered += b.filtered
	out, dead, ack := b.out, b.dead, b.ack
	if len(out) > 0 {
		failed, err := r.write(ctx, out)
		if err != nil {
			_ = ack(ctx, err)
			return err
		}
		dead = append(dead, failed...)
	}
	if len(dead) > 0 {
		if r.dead == nil {
			err := fmt.Errorf("%d records failed and the pipeline has no dead-letter queue; first: %s", len(dead), dead[0].Error)
			_ = ack(ctx, err)
			return err
		}
		if err := r.dead(ctx, dead); err != nil {
			err = fmt.Errorf("dead-letter queue: %w", err)
			_ = ack(ctx, err)
			return err
		}
		st.Failed += int64(len(dead))
		r.lastDead = dead[0].Error
		r.log.Warn("records sent to the dead-letter queue", "count", len(dead), "first_error", dead[0].Error)
	}
	written := len(out) - countStage(dead, "sink")
	st.Out += int64(written)
	if len(out) > 0 {
		// Estimated from the first record, so counting costs nothing per record.
		st.Bytes += approxSize(out[0]) * int64(written)
	}
	if err := ack(ctx, nil); err != nil {
		return fmt.Errorf("acknowledge source: %w", err)
	}
	return nil
}

func countStage(d []DeadRecord, stage string) int {
	n := 0
	for _, x := range d {
		if x.Stage == stage {
			n++
		}
	}
	return n
}

// transform applies the transforms to every record, in up to spec.Concurrency goroutines.
func (r *runner) transform(recs []connector.Record) (out []connector.Record, dead []DeadRecord, filtered int64) {
	if len(r.transforms) == 0 {
		return recs, nil, 0
	}
	type result struct {
		rec  connector.Record
		keep bool
		err  error
	}
	res := make([]result, len(recs))
	workers := min(r.spec.Concurrency, len(recs))
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < len(recs); i += workers {
				rec, keep := recs[i], true
				var err error
				for _, t := range r.transforms {
					if rec, keep, err = t.Apply(rec); err != nil || !keep {
						break
					}
				}
				if err != nil {
					rec = recs[i]
				}
				res[i] = result{rec, keep, err}
			}
		}()
	}
	wg.Wait()
	for i, x := range res {
		switch {
		case x.err != nil:
			dead = append(dead, r.deadRecord("transform", recs[i], x.err))
		case x.keep:
			out = append(out, x.rec)
		default:
			filtered++
		}
	}
	return out, dead, filtered
}

func (r *runner) deadRecord(stage string, rec connector.Record, err error) DeadRecord {
	return DeadRecord{Pipeline: r.spec.Name, Run: r.runID, Stage: stage, Error: err.Error(), Time: time.Now().UTC(), Record: rec}
}

// write commits out to the sink, retrying with exponential backoff and jitter. Records the
// sink rejects for good come back as dead records. When the retries run out, every record is
// dead (with a dead-letter queue) or the error is returned (without one).
func (r *runner) write(ctx context.Context, out []connector.Record) ([]DeadRecord, error) {
	var err error
	for attempt := 0; ; attempt++ {
		err = r.sink.Write(ctx, out)
		var rejected connector.RecordErrors
		if errors.As(err, &rejected) {
			var dead []DeadRecord
			for i, e := range rejected {
				dead = append(dead, r.deadRecord("sink", out[i], e))
			}
			return dead, nil
		}
		if err == nil {
			return nil, nil
		}
		if attempt >= r.spec.Errors.retries() || ctx.Err() != nil {
			break
		}
		wait := backoff(r.spec.Errors.Backoff, attempt)
		var ra *connector.RetryError
		if errors.As(err, &ra) && ra.After > wait {
			wait = ra.After
		}
		r.log.Warn("sink write failed, retrying", "attempt", attempt+1, "of", r.spec.Errors.retries(), "in", wait.String(), "error", err.Error())
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(wait):
		}
	}
	if r.dead == nil {
		return nil, fmt.Errorf("sink: %w", err)
	}
	dead := make([]DeadRecord, len(out))
	for i, rec := range out {
		dead[i] = r.deadRecord("sink", rec, fmt.Errorf("after %d retries: %w", r.spec.Errors.retries(), err))
	}
	return dead, nil
}

// backoff is min·2^attempt, capped at max, with "full jitter" on its upper half.
func backoff(b Backoff, attempt int) time.Duration {
	d := b.Min << min(attempt, 30)
	if d > b.Max || d <= 0 {
		d = b.Max
	}
	return d/2 + rand.N(d/2+1)
}

// approxSize estimates a record's size without encoding it: text by its length, other values
// at 8 bytes.
func approxSize(rec connector.Record) int64 {
	var n int64
	for k, v := range rec {
		n += int64(len(k))
		if s, ok := v.(string); ok {
			n += int64(len(s))
		} else {
			n += 8
		}
	}
	return n
}
