package engine

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// openSyncfs opens dir for syncfs(2), which writes out every dirty page and the journal of
// the filesystem holding dir and, since Linux 5.8, reports a write-back error.
func openSyncfs(dir string) (syncfs, closeFn func() error, err error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open %s for syncfs: %w", dir, err)
	}
	return func() error { return unix.Syncfs(fd) }, func() error { return unix.Close(fd) }, nil
}

const groupSyncSupported = true
