package main

import "testing"

func TestZZClusterStarts(t *testing.T) {
	tc := newTestCluster(t)
	tc.start()
	tc.admin()
}
