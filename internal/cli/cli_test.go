package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func run(t *testing.T, environ []string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Run(context.Background(), args, &out, &errb, environ)
	return code, out.String(), errb.String()
}

func TestConfigCheck(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, []byte("api:\n  listen: 0.0.0.0:8443\n  tls:\n    sans: [penstock.example.com]\n"), 0o600)
	code, out, errOut := run(t, nil, "config", "check", good)
	if code != 0 || !strings.Contains(out, "good.yaml: ok") {
		t.Fatalf("good file: code %d, out %q, err %q", code, out, errOut)
	}

	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("api:\n  lisen: x\n  limits:\n    read_timeout: soon\nengine:\n  replicas: 9\n"), 0o600)
	code, _, errOut = run(t, []string{"PENSTOCK_LOG_LEVEL=loud"}, "config", "check", bad)
	if code != 1 {
		t.Fatalf("bad file: exit %d, want 1", code)
	}
	for _, want := range []string{
		"configuration has 4 error(s)",
		"api.lisen: unknown key",
		"api.limits.read_timeout: expected a duration",
		"engine.replicas: must be between 1 and 5",
		"log.level: must be one of",
	} {
		if !strings.Contains(errOut, want) {
			t.Errorf("output lacks %q:\n%s", want, errOut)
		}
	}

	if code, _, _ := run(t, nil, "config", "check"); code == 0 {
		t.Fatal("config check without a file succeeded")
	}
}

func TestVersionAndUnknownCommand(t *testing.T) {
	code, out, _ := run(t, nil, "version")
	if code != 0 || !strings.HasPrefix(out, "penstock ") {
		t.Fatalf("version: %d %q", code, out)
	}
	code, _, errOut := run(t, nil, "frobnicate")
	if code != 1 || !strings.Contains(errOut, "unknown command") {
		t.Fatalf("unknown command: %d %q", code, errOut)
	}
}

func TestStatusWithoutCA(t *testing.T) {
	code, _, errOut := run(t, nil, "status", "--data-dir", t.TempDir())
	if code != 1 || !strings.Contains(errOut, "no CA certificate at ") || !strings.Contains(errOut, "--ca") {
		t.Fatalf("status without a CA: %d %q", code, errOut)
	}
}
