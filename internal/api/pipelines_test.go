package api

import (
	"encoding/json"
	"net/http"
	"testing"

	"github.com/penstock/penstock/internal/connector"
	"github.com/penstock/penstock/internal/connector/queue"
	"github.com/penstock/penstock/internal/pipeline"
)

// A spec's problems answer 422 pipeline.invalid with one detail each, located at the field
// path in the body; an expression's position is given in words.
func TestSpecErrorsAreDetails(t *testing.T) {
	doc := `{"name": "a", "source": {"type": "queue", "queue": "in", "x": 1}, "sink": {"type": "queue"},
		"transforms": [{"map": "{a: 1 +}"}], "bogus": true}`
	_, _, err := pipeline.Load("", []byte(doc), connector.NewRegistry(queue.Plugin))
	e, ok := pipelineError(Options{}, "validate pipeline", err).(*Error)
	if !ok || e.Status != http.StatusUnprocessableEntity {
		t.Fatalf("%v", err)
	}
	got, _ := json.Marshal(e)
	want := `{"code":"pipeline.invalid","message":"pipeline spec has 4 error(s)","details":[` +
		`{"location":"body.source.x","message":"unknown key (known: queue)"},` +
		`{"location":"body.sink.queue","message":"required"},` +
		`{"location":"body.transforms[0].map","message":"unexpected token Bracket(\"}\") (line 1, column 8 of the expression)"},` +
		`{"location":"body.bogus","message":"unknown key (known: batch, concurrency, description, errors, name, schedule, sink, source, transforms)"}]}`
	if string(got) != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
}
