package redact_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/penstock/penstock/internal/redact"
)

const plain = "sup3r-s3cret-value"

type holder struct {
	Name   string
	Secret redact.Secret
	Ptr    *redact.Secret
}

func TestEveryTextFormIsRedacted(t *testing.T) {
	s := redact.NewSecret(plain)
	h := holder{Name: "db", Secret: s, Ptr: &s}
	var forms []string
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%10s", "%d"} {
		forms = append(forms, fmt.Sprintf(verb, s), fmt.Sprintf(verb, h), fmt.Sprintf(verb, &s))
	}
	forms = append(forms, s.String(), fmt.Sprint(s), fmt.Sprintln(s), fmt.Errorf("connect: %v", s).Error(),
		errors.New("x: "+s.String()).Error())
	j, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	forms = append(forms, string(j))
	txt, _ := s.MarshalText()
	forms = append(forms, string(txt))

	var logs bytes.Buffer
	for _, hnd := range []slog.Handler{slog.NewJSONHandler(&logs, nil), slog.NewTextHandler(&logs, nil)} {
		l := slog.New(hnd)
		l.Info("msg", "secret", s, "holder", h, "ptr", &s, slog.Group("g", "inner", s))
		l.With("secret", s).Info("with")
	}
	forms = append(forms, logs.String())

	for _, f := range forms {
		if strings.Contains(f, plain) {
			t.Errorf("secret leaked: %s", f)
		}
	}
	if !strings.Contains(logs.String(), redact.Redacted) || !strings.Contains(string(j), redact.Redacted) {
		t.Errorf("redaction marker missing: %s %s", logs.String(), j)
	}
}

func TestRevealAndCompare(t *testing.T) {
	s := redact.NewSecret(plain)
	if s.Reveal() != plain {
		t.Fatal("Reveal does not return the value")
	}
	if !s.Equal(redact.NewSecret(plain)) || s.Equal(redact.NewSecret(plain+"x")) || s.Equal(redact.Secret{}) {
		t.Fatal("Equal is wrong")
	}
	if s.IsZero() || !(redact.Secret{}).IsZero() {
		t.Fatal("IsZero is wrong")
	}
	var u redact.Secret
	if err := u.UnmarshalText([]byte(plain)); err != nil || u.Reveal() != plain {
		t.Fatalf("UnmarshalText: %v", err)
	}
}
