//go:build !linux

package engine

import "errors"

func openSyncfs(string) (syncfs, closeFn func() error, err error) {
	return nil, nil, errors.New("group sync needs syncfs(2), which this platform lacks")
}

const groupSyncSupported = false
