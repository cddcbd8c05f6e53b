// Package crashpoint kills the process at a named step of a multi-step change when the
// environment variable PENSTOCK_CRASHPOINT names that step: the way the process tests prove
// that a kill -9 between any two steps of a rotation or a lifecycle change resumes without
// losing anything. Unset (always, outside those tests) it does nothing. It never logs.
package crashpoint

import (
	"os"
	"strings"
	"syscall"
)

// Env names the step to die at, as "name" or "name#n" for its n-th hit (1-based).
const Env = "PENSTOCK_CRASHPOINT"

var (
	want  string
	nth   = 1
	count int
)

func init() {
	v := os.Getenv(Env)
	if v == "" {
		return
	}
	name, n, _ := strings.Cut(v, "#")
	want = name
	if n != "" {
		k := 0
		for _, c := range n {
			if c < '0' || c > '9' {
				return
			}
			k = k*10 + int(c-'0')
		}
		nth = max(k, 1)
	}
}

// Hit is a step boundary: the process dies here with SIGKILL when the environment names it.
// Callers run it from one goroutine per name, so the count needs no lock beyond that.
func Hit(name string) {
	if want == "" || name != want {
		return
	}
	count++
	if count >= nth {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the signal is on its way
	}
}
