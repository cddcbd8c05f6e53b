// Package pipeline owns pipelines: their spec and its validation, transforms, the runtime that
// moves records from a source to a sink at least once, checkpoints, run history and the
// scheduler. It never dials or reads secrets itself: connectors do, through the resources the
// runtime hands them, scoped to the pipeline's application.
package pipeline

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/penstock/penstock/internal/connector"
	"github.com/penstock/penstock/internal/names"
)

// MaxSpecBytes bounds a spec document.
const MaxSpecBytes = 1 << 20

// ErrInvalid is what every spec error is (errors.Is): SpecErrors, each with its field path.
var ErrInvalid = errors.New("invalid pipeline")

// Spec is a pipeline as declared.
type Spec struct {
	Name        string `json:"name" required:"true"`
	Description string `json:"description"`
	// Source and Sink hold a connector's `type` and its settings.
	Source     map[string]any   `json:"source" required:"true"`
	Transforms []map[string]any `json:"transforms"`
	Sink       map[string]any   `json:"sink" required:"true"`
	// Schedule is "continuous", "manual", "every <duration>" or a five-field cron expression.
	Schedule    string      `json:"schedule"`
	Batch       Batch       `json:"batch"`
	Errors      ErrorPolicy `json:"errors"`
	Concurrency int         `json:"concurrency" max:"16"`
}

// Batch bounds what one read, transform and write cycle handles.
type Batch struct {
	// Size is the most records per batch (default 500, at most 10000).
	Size int `json:"size" max:"10000"`
	// FlushInterval is how long a continuous source waits to fill a batch (default 1s).
	FlushInterval time.Duration `json:"flush_interval" max:"1h"`
}

// ErrorPolicy says what happens when a write fails.
type ErrorPolicy struct {
	// Retries is how many times a failed write is tried again: 0 means the default, 5, and
	// -1 means none.
	Retries int     `json:"retries" max:"100"`
	Backoff Backoff `json:"backoff"`
	// DeadLetter sends records that keep failing to the pipeline's dead-letter queue,
	// "<name>-dlq", and goes on (default true). False stops the run instead, leaving the
	// records unacknowledged for the next run.
	DeadLetter *bool `json:"dead_letter"`
	// Notify names a queue of the application that is told when records go to the
	// dead-letter queue: at once for a run's first, then at most once a minute with the
	// count since (created at apply if it does not exist).
	Notify string `json:"notify"`
}

// retries is how many times a failed write is tried again.
func (e ErrorPolicy) retries() int { return max(e.Retries, 0) }

// Backoff bounds the exponential, jittered wait between retries.
type Backoff struct {
	Min time.Duration `json:"min" max:"1h"`
	Max time.Duration `json:"max" max:"1h"`
}

var nameRe = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,57}$`)

// Parse reads a spec from YAML or JSON (YAML's superset), refusing unknown keys, wrong types,
// duplicate keys and documents over MaxSpecBytes, and fills defaults. It does not look at
// connectors or transforms: Check does, and Load does both. Its error is SpecErrors.
func Parse(doc []byte) (Spec, error) {
	var c checker
	s, _ := c.parse("", doc)
	if err := c.err(); err != nil {
		return Spec{}, err
	}
	return s, nil
}

// parse reads doc (named name) into a spec as far as it can, recording every problem, and reports whether
// the document was a mapping, whose connectors and transforms are then worth checking.
func (c *checker) parse(name string, doc []byte) (Spec, bool) {
	var s Spec
	if len(doc) > MaxSpecBytes {
		c.src = newSource(name, nil)
		c.addf("", "larger than %d bytes", MaxSpecBytes)
		return s, false
	}
	c.src = newSource(name, doc)
	raw, ok := c.load(doc)
	if !ok {
		return s, false
	}
	m, ok := normalize(raw).(map[string]any)
	if !ok {
		c.add("", "must be a mapping with name, source and sink")
		return s, false
	}
	if _, err := connector.Decode("", m, &s); err != nil {
		c.addErr("", err)
	}
	s.defaults(c)
	return s, true
}

// normalize turns YAML's decoded values into JSON's: maps keyed by strings, ints as int64.
func normalize(v any) any {
	switch t := v.(type) {
	case map[string]any:
		for k, e := range t {
			t[k] = normalize(e)
		}
		return t
	case map[any]any:
		out := make(map[string]any, len(t))
		for k, e := range t {
			out[fmt.Sprint(k)] = normalize(e)
		}
		return out
	case []any:
		for i, e := range t {
			t[i] = normalize(e)
		}
		return t
	case int:
		return int64(t)
	}
	return v
}

// defaults fills what the spec leaves out and checks what the decoder cannot: each field
// refused here keeps only its first problem (checker.add).
func (s *Spec) defaults(c *checker) {
	if !nameRe.MatchString(s.Name) {
		c.add("name", "1-58 of a-z, 0-9 and -, starting with a letter or digit")
	}
	if s.Schedule == "" {
		s.Schedule = "manual"
	}
	if _, err := ParseSchedule(s.Schedule); err != nil {
		c.add("schedule", err.Error())
	}
	switch {
	case s.Batch.Size == 0:
		s.Batch.Size = 500
	case s.Batch.Size < 1 || s.Batch.Size > 10000:
		c.add("batch.size", "1 to 10000")
	}
	if s.Batch.FlushInterval == 0 {
		s.Batch.FlushInterval = time.Second
	}
	switch {
	case s.Errors.Retries == 0:
		s.Errors.Retries = 5
	case s.Errors.Retries < -1 || s.Errors.Retries > 100:
		c.add("errors.retries", "-1 (none) to 100")
	}
	if s.Errors.Backoff.Min == 0 {
		s.Errors.Backoff.Min = 100 * time.Millisecond
	}
	if s.Errors.Backoff.Max == 0 {
		s.Errors.Backoff.Max = 30 * time.Second
	}
	if s.Errors.Backoff.Max < s.Errors.Backoff.Min {
		c.add("errors.backoff.max", "must not be below errors.backoff.min")
	}
	if s.Errors.DeadLetter == nil {
		t := true
		s.Errors.DeadLetter = &t
	}
	if s.Errors.Notify != "" {
		switch err := names.Check("queue", s.Errors.Notify); {
		case err != nil:
			c.add("errors.notify", err.Error())
		case !*s.Errors.DeadLetter:
			c.add("errors.notify", "needs errors.dead_letter (records that fail stop the run instead)")
		case s.Errors.Notify == s.Name+"-dlq" || s.Source["type"] == "queue" && s.Source["queue"] == s.Errors.Notify:
			c.addf("errors.notify", "%q is the pipeline's own dead-letter or source queue", s.Errors.Notify)
		}
	}
	switch {
	case s.Concurrency == 0:
		s.Concurrency = 1
	case s.Concurrency < 1:
		c.add("concurrency", "1 to 16")
	}
	if len(s.Transforms) > 64 {
		c.add("transforms", "at most 64")
	}
	for _, side := range []struct {
		path string
		m    map[string]any
	}{{"source", s.Source}, {"sink", s.Sink}} {
		if t, ok := side.m["type"].(string); side.m != nil && (!ok || t == "") {
			c.addf(side.path+".type", "required (a connector name)")
		}
	}
}

// connectorConfig splits a source or sink into its type and its settings.
func connectorConfig(m map[string]any) (string, map[string]any) {
	cfg := make(map[string]any, len(m))
	for k, v := range m {
		if k != "type" {
			cfg[k] = v
		}
	}
	t, _ := m["type"].(string)
	return t, cfg
}

// JSON is the spec as stored and served.
func (s Spec) JSON() []byte {
	b, _ := json.Marshal(s)
	return b
}

// MarshalJSON writes durations as text, as Parse reads them.
func (b Batch) MarshalJSON() ([]byte, error) {
	return json.Marshal(map[string]any{"size": b.Size, "flush_interval": b.FlushInterval.String()})
}

// MarshalJSON writes durations as text, as Parse reads them.
func (b Backoff) MarshalJSON() ([]byte, error) {
	return json.Marshal(map[string]any{"min": b.Min.String(), "max": b.Max.String()})
}

// Schedule says when runs start.
type Schedule struct {
	Continuous bool
	Manual     bool
	Every      time.Duration
	Cron       cron.Schedule
}

// ParseSchedule reads "continuous", "manual", "every 5m" or a five-field cron expression.
func ParseSchedule(s string) (Schedule, error) {
	switch {
	case s == "continuous":
		return Schedule{Continuous: true}, nil
	case s == "manual":
		return Schedule{Manual: true}, nil
	case strings.HasPrefix(s, "every "):
		d, err := time.ParseDuration(strings.TrimSpace(strings.TrimPrefix(s, "every ")))
		if err != nil || d < time.Second {
			return Schedule{}, fmt.Errorf("%q: every takes a duration of at least 1s, such as every 5m", s)
		}
		return Schedule{Every: d}, nil
	}
	c, err := cron.ParseStandard(s)
	if err != nil || strings.HasPrefix(strings.TrimSpace(s), "TZ=") || strings.HasPrefix(strings.TrimSpace(s), "CRON_TZ=") {
		return Schedule{}, fmt.Errorf("%q: continuous, manual, every <duration>, or five cron fields such as */5 * * * *", s)
	}
	if c.Next(time.Now()).IsZero() {
		return Schedule{}, fmt.Errorf("%q: never fires (no such date)", s)
	}
	return Schedule{Cron: c}, nil
}
