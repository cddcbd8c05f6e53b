package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/datadir"
	"github.com/penstock/penstock/internal/engine"
	"github.com/penstock/penstock/internal/integrity"
	"github.com/penstock/penstock/internal/keyring"
)

// DoctorOptions say what Doctor does beyond checking.
type DoctorOptions struct {
	// Scan reads every message of every stream (slow on large stores).
	Scan bool
	// Accept clears the findings and records the streams as they are now: the operator
	// restored what was damaged, or accepts the loss. Only on a stopped directory.
	Accept bool
}

// DoctorReport is what Doctor found.
type DoctorReport struct {
	Running bool // a server holds the directory: findings are those it recorded
	// Recorded says when the record compared against was written, and whether by a clean stop.
	Recorded      time.Time
	RecordedClean bool
	Streams       int // streams checked
	Messages      uint64
	Findings      []integrity.Finding
	Accepted      int
}

// Doctor checks a data directory. Stopped, it opens the store as serve does (no listeners, no
// subsystems), compares every stream with the record and, with Scan, reads every message; a
// refusal to open (a missing or damaged key file) is its error. Running, it reads the findings
// the server recorded. It changes nothing Penstock records unless Accept is set (opening the
// engine rewrites the engine's own metadata files, as any start does).
func Doctor(ctx context.Context, cfg config.Config, o DoctorOptions) (DoctorReport, error) {
	var rep DoctorReport
	if !cfg.Engine.Embedded() {
		return rep, errors.New("doctor checks the embedded engine's store; with engine.url the store belongs to that NATS server")
	}
	if _, err := os.Stat(cfg.DataDir); err != nil {
		return rep, fmt.Errorf("data directory: %w", err)
	}
	switch state, err := datadir.State(cfg.DataDir); {
	case err != nil:
		return rep, err
	case state == datadir.StateInitializing:
		return rep, errors.New("its first start did not complete: start serve on it to finish it, or remove the directory")
	case state == "":
		// A directory from before the first-start marker, or none at all.
		if _, err := os.Stat(filepath.Join(cfg.DataDir, "jetstream")); err != nil {
			return rep, errors.New("no store in this directory: nothing to check")
		}
	}
	if _, err := os.Stat(filepath.Join(cfg.DataDir, "jetstream.key")); err == nil {
		if _, err := os.Stat(filepath.Join(cfg.DataDir, keyring.StoreKeysFile)); err != nil {
			return rep, errors.New("a directory from before the keyring (a plain jetstream.key): start serve on it once to convert it, then check it")
		}
	}
	lock, err := datadir.Acquire(cfg.DataDir)
	if err != nil {
		if o.Accept {
			return rep, fmt.Errorf("%w: stop it to accept findings", err)
		}
		return running(ctx, cfg)
	}
	defer lock.Release()
	master, chk, err := openRecord(ctx, cfg)
	if err != nil {
		return rep, err
	}
	defer master.Close()
	ecfg := cfg.Engine
	ecfg.ClientListen = ""
	eng, err := engine.Open(ctx, engine.Options{DataDir: cfg.DataDir, Config: ecfg, StoreKey: master.StoreKey(),
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return rep, fmt.Errorf("engine: %w", err)
	}
	defer eng.Close()
	chk.Attach(eng)
	now, err := eng.Streams()
	if err != nil {
		return rep, err
	}
	rep.Streams = len(now)
	for _, s := range now {
		rep.Messages += s.Msgs
	}
	_, rep.RecordedClean, rep.Recorded = chk.Recorded()
	rep.Findings = append(chk.Findings(), chk.Compare(now)...)
	if o.Scan {
		found, err := chk.Scan(ctx)
		if err != nil {
			return rep, err
		}
		rep.Findings = append(rep.Findings, found...)
	}
	rep.Findings = dedupe(rep.Findings)
	if o.Accept {
		if _, err := chk.Accept(ctx); err != nil {
			return rep, err
		}
		rep.Accepted = len(rep.Findings)
	}
	return rep, nil
}

// running reads what the server that holds the directory recorded.
func running(ctx context.Context, cfg config.Config) (DoctorReport, error) {
	rep := DoctorReport{Running: true}
	master, chk, err := openRecord(ctx, cfg)
	if err != nil {
		return rep, err
	}
	defer master.Close()
	_, rep.RecordedClean, rep.Recorded = chk.Recorded()
	rep.Findings = chk.Findings()
	return rep, nil
}

// openRecord loads the directory's keys and its integrity record; the caller closes master.
func openRecord(ctx context.Context, cfg config.Config) (*keyring.Master, *integrity.Checker, error) {
	master, err := keyring.LoadMaster(ctx, cfg.DataDir, cfg.Keyring)
	if err != nil {
		return nil, nil, err
	}
	chk, err := integrity.Open(cfg.DataDir, master, nil)
	if err != nil {
		master.Close()
		return nil, nil, err
	}
	return master, chk, nil
}

func dedupe(in []integrity.Finding) []integrity.Finding {
	var out []integrity.Finding
	seen := map[string]bool{}
	for _, f := range in {
		k := strings.Join([]string{f.Account, f.Stream, f.Problem}, "\x00")
		if !seen[k] {
			seen[k] = true
			out = append(out, f)
		}
	}
	return out
}
