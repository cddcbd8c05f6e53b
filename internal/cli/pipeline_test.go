package cli

import (
	"os"
	"path/filepath"
	"testing"
)

// pipeline validate prints every problem of a spec, each at its file, line and column.
func TestPipelineValidatePrintsEveryError(t *testing.T) {
	spec := filepath.Join(t.TempDir(), "orders.yaml")
	os.WriteFile(spec, []byte("name: orders\nsource: {type: file, path: in.csv, delimter: \";\"}\n"+
		"transforms:\n  - map: '{id: int(id), cents: amount * 100 +}'\nsink: {type: queue, queue: out}\nbatch: {size: lots}\n"), 0o600)
	code, out, errOut := run(t, nil, "pipeline", "validate", "-f", spec)
	want := "penstock: pipeline spec has 3 error(s):\n" +
		"  " + spec + ":2:36: source.delimter: unknown key (known: columns, delimiter, format, header, path)\n" +
		"  " + spec + ":4:46: transforms[0].map: unexpected token Bracket(\"}\")\n" +
		"      {id: int(id), cents: amount * 100 +}\n" +
		"                                         ^\n" +
		"  " + spec + ":6:15: batch.size: must be an integer\n"
	if code != 1 || out != "" || errOut != want {
		t.Fatalf("exit %d, out %q, err\n%s\nwant\n%s", code, out, errOut, want)
	}
}
