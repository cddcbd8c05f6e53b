package files

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/penstock/penstock/internal/connector"
	"github.com/penstock/penstock/internal/connector/conformance"
)

func TestConformance(t *testing.T) {
	for _, format := range []string{"csv", "jsonl"} {
		t.Run(format, func(t *testing.T) {
			root := t.TempDir()
			res := conformance.Resources(nil, root)
			name := "in/data." + format
			if err := os.MkdirAll(filepath.Join(root, "in"), 0o700); err != nil {
				t.Fatal(err)
			}
			if format == "csv" {
				os.WriteFile(filepath.Join(root, name), []byte("id,name\n"), 0o600)
			}
			conformance.RunSource(t, conformance.Source{
				New: func(res connector.Resources) connector.Source {
					s, _, err := Plugin.Source("source", map[string]any{"path": name}, res)
					if err != nil {
						t.Fatal(err)
					}
					return s
				},
				Seed: func(t *testing.T, ids []int) {
					f, err := os.OpenFile(filepath.Join(root, name), os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o600)
					if err != nil {
						t.Fatal(err)
					}
					defer f.Close()
					for _, id := range ids {
						if format == "csv" {
							fmt.Fprintf(f, "%d,\"name, %d\"\n", id, id)
						} else {
							fmt.Fprintf(f, "{\"id\": %d, \"name\": \"n%d\"}\n", id, id)
						}
					}
				},
				ID: func(r connector.Record) int {
					switch v := r["id"].(type) {
					case string:
						n, _ := strconv.Atoi(v)
						return n
					case float64:
						return int(v)
					}
					return -1
				},
			}, res)
			out := "out/data." + format
			conformance.RunSink(t, conformance.Sink{
				New: func(res connector.Resources) connector.Sink {
					s, _, err := Plugin.Sink("sink", map[string]any{"path": out}, res)
					if err != nil {
						t.Fatal(err)
					}
					return s
				},
				Stored: func(t *testing.T) []int {
					f, err := os.Open(filepath.Join(root, out))
					if err != nil {
						t.Fatal(err)
					}
					defer f.Close()
					var ids []int
					sc := bufio.NewScanner(f)
					for sc.Scan() {
						line := sc.Text()
						if format == "csv" {
							if strings.HasPrefix(line, "id,") {
								continue
							}
							n, _ := strconv.Atoi(strings.SplitN(line, ",", 2)[0])
							ids = append(ids, n)
							continue
						}
						var r map[string]any
						json.Unmarshal([]byte(line), &r)
						ids = append(ids, int(r["id"].(float64)))
					}
					return ids
				},
			}, res)
		})
	}
}

// TestConfinedToTheRoot proves neither .. nor a symlink leads out of the tenant's root.
func TestConfinedToTheRoot(t *testing.T) {
	root, outside := t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(outside, "secret.csv"), []byte("id\n1\n"), 0o600)
	if err := os.Symlink(filepath.Join(outside, "secret.csv"), filepath.Join(root, "link.csv")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(root, "dir")); err != nil {
		t.Fatal(err)
	}
	res := conformance.Resources(nil, root)
	if _, _, err := Plugin.Source("source", map[string]any{"path": "../x.csv"}, res); err == nil || !strings.Contains(err.Error(), "source.path") {
		t.Fatalf("..: %v", err)
	}
	if _, _, err := Plugin.Source("source", map[string]any{"path": "/etc/passwd.csv"}, res); err == nil {
		t.Fatal("absolute path accepted")
	}
	for _, p := range []string{"link.csv", "dir/secret.csv"} {
		s, _, err := Plugin.Source("source", map[string]any{"path": p}, res)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Connect(t.Context()); err == nil {
			t.Fatalf("%s: opened a file outside the root", p)
		}
		k, _, _ := Plugin.Sink("sink", map[string]any{"path": p}, res)
		if err := k.Connect(t.Context()); err == nil {
			t.Fatalf("%s: sink opened a file outside the root", p)
		}
	}
}

// TestPartialLastLineWaits: a line still being written (no newline yet) is not read; once it
// is complete the next run reads it whole.
func TestPartialLastLineWaits(t *testing.T) {
	for _, c := range []struct{ name, head, partial, rest string }{
		{"p.csv", "id,name\n1,a\n", "2,b", "b\n"},
		{"p.jsonl", "{\"id\": 1, \"name\": \"a\"}\n", "{\"id\": 2, \"na", "me\": \"bb\"}\n"},
	} {
		root := t.TempDir()
		res := conformance.Resources(nil, root)
		path := filepath.Join(root, c.name)
		os.WriteFile(path, []byte(c.head+c.partial), 0o600)
		read := func() []connector.Record {
			s, _, err := Plugin.Source("source", map[string]any{"path": c.name}, res)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Connect(t.Context()); err != nil {
				t.Fatal(err)
			}
			defer s.Close(t.Context())
			var out []connector.Record
			for {
				recs, ack, err := s.Read(t.Context(), 10)
				if err != nil {
					return out
				}
				out = append(out, recs...)
				ack(t.Context(), nil)
			}
		}
		if got := read(); len(got) != 1 || got[0]["name"] != "a" {
			t.Fatalf("%s with a partial line: %v", c.name, got)
		}
		f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
		f.WriteString(c.rest)
		f.Close()
		if got := read(); len(got) != 1 || got[0]["name"] != "bb" {
			t.Fatalf("%s once complete: %v", c.name, got)
		}
	}
}
