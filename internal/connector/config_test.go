package connector_test

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/penstock/penstock/internal/connector"
)

type everyKind struct {
	URL      string              `json:"url" url:"true" required:"true"`
	Password connector.SecretRef `json:"password"`
	Mode     string              `json:"mode" enum:"a,b"`
	Timeout  time.Duration       `json:"timeout" max:"1m"`
	Retries  int                 `json:"retries" max:"5"`
	Columns  []string            `json:"columns"`
	Headers  map[string]string   `json:"headers"`
	Inner    struct {
		Table string `json:"table" required:"true"`
	} `json:"inner"`
}

// Decode reports every problem, in field order after the unknown keys, not just the first.
func TestDecodeReportsEveryError(t *testing.T) {
	var out everyKind
	_, err := connector.Decode("sink", map[string]any{
		"password": "hunter2", "mode": "c", "timeout": "1h", "retries": "3",
		"columns": []any{"a", 2, "c", true}, "headers": map[string]any{"x": 1}, "inner": map[string]any{},
		"bogus": 1,
	}, &out)
	var fes connector.FieldErrors
	if !errors.As(err, &fes) {
		t.Fatalf("%v (%T), want FieldErrors", err, err)
	}
	want := connector.FieldErrors{
		{Path: "sink.bogus", Msg: "unknown key (known: columns, headers, inner, mode, password, retries, timeout, url)", Key: true},
		{Path: "sink.columns[1]", Msg: "must be a string"},
		{Path: "sink.columns[3]", Msg: "must be a string"},
		{Path: "sink.headers.x", Msg: "must be a string"},
		{Path: "sink.inner.table", Msg: "required"},
		{Path: "sink.mode", Msg: `"c" is not one of a, b`},
		{Path: "sink.password", Msg: "a literal credential is not allowed; store it with `penstock secrets put` and write ${secret:NAME}"},
		{Path: "sink.retries", Msg: "must be an integer"},
		{Path: "sink.timeout", Msg: "at most 1m"},
		{Path: "sink.url", Msg: "required"},
	}
	if !reflect.DeepEqual(fes, want) {
		t.Fatalf("got\n%v\nwant\n%v", fes, want)
	}
}
