// Package keyringtest opens a keyring on a fresh embedded engine in a directory, wired as the
// app wires it, for the tests and benchmarks of the packages built on the keyring. It is never
// imported by the server.
package keyringtest

import (
	"context"
	"fmt"
	"os"

	"github.com/penstock/penstock/internal/config"
	"github.com/penstock/penstock/internal/engine"
	"github.com/penstock/penstock/internal/keyring"
)

// Stack is a master key, an embedded engine and a keyring.
type Stack struct {
	Master   *keyring.Master
	Engine   *engine.Engine
	Platform *engine.Account
	Keyring  *keyring.Keyring
}

// Open builds a Stack in dir (a new data directory, with its own master key file).
func Open(ctx context.Context, dir string) (*Stack, error) {
	return OpenNative(ctx, dir, engine.Native{})
}

// OpenNative is Open with the engine's native listeners configured.
func OpenNative(ctx context.Context, dir string, native engine.Native) (*Stack, error) {
	return OpenEngine(ctx, dir, config.Default().Engine, native)
}

// OpenEngine is Open with the engine's configuration and native listeners given.
func OpenEngine(ctx context.Context, dir string, ecfg config.Engine, native engine.Native) (*Stack, error) {
	m, err := keyring.LoadMaster(ctx, dir, config.Keyring{})
	if err != nil {
		return nil, err
	}
	eng, err := engine.Open(ctx, engine.Options{DataDir: dir, Config: ecfg, StoreKey: m.StoreKey(), Native: native})
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("engine: %w", err)
	}
	st := &Stack{Master: m, Engine: eng}
	if err := m.StoreOpened(); err != nil {
		st.Close()
		return nil, err
	}
	if st.Platform, err = eng.Account(ctx, engine.PlatformAccount); err != nil {
		st.Close()
		return nil, err
	}
	if st.Keyring, err = keyring.New(ctx, keyring.Options{Master: m, Platform: st.Platform}); err != nil {
		st.Close()
		return nil, err
	}
	return st, nil
}

// Close releases everything, keyring first.
func (s *Stack) Close() {
	if s.Keyring != nil {
		s.Keyring.Close()
	}
	s.Engine.Close()
	s.Master.Close()
}

// OpenTemp builds a Stack in a new temporary directory; close releases it and removes the
// directory. For benchmarks, which have no testing.T.
func OpenTemp(ctx context.Context) (st *Stack, close func(), err error) {
	dir, err := os.MkdirTemp("", "penstock-bench")
	if err != nil {
		return nil, nil, err
	}
	if st, err = Open(ctx, dir); err != nil {
		os.RemoveAll(dir)
		return nil, nil, err
	}
	return st, func() { st.Close(); os.RemoveAll(dir) }, nil
}
