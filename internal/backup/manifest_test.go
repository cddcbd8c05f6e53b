package backup

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"testing"
	"time"
)

// A signed manifest reads back as written; any change to it, a signature by another key and a
// missing signature are refused before anything is decoded; a part is checked against it.
func TestManifestSignature(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(nil)
	otherPub, otherPriv, _ := ed25519.GenerateKey(nil)
	part := []byte("sealed part bytes")
	sum := sha256.Sum256(part)
	m := Manifest{ID: "b1", Created: time.Date(2026, 12, 5, 4, 0, 0, 0, time.UTC), Tenant: "acme",
		Parts: []Part{{Object: "acme_production/Q_orders", Account: "acme_production", Stream: "Q_orders", Scope: "acme/production",
			Size: int64(len(part)), State: StreamState{Messages: 3, FirstSeq: 1, LastSeq: 3}, Config: []byte(`{"name":"Q_orders"}`)}}}
	m.Parts[0].SHA256 = hex.EncodeToString(sum[:])
	b, err := m.Sign(priv)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ReadManifest(b, pub)
	if err != nil || got.ID != "b1" || got.Tenant != "acme" || len(got.Parts) != 1 || got.Parts[0].State.LastSeq != 3 {
		t.Fatalf("read back: %+v %v", got, err)
	}
	if err := got.Parts[0].Check(int64(len(part)), sum); err != nil {
		t.Fatal(err)
	}
	if err := got.Parts[0].Check(int64(len(part)), sha256.Sum256(append(part, 'x'))); !errors.Is(err, ErrUnreadable) {
		t.Fatalf("a changed part: %v", err)
	}

	// One changed byte anywhere in the body: the message count, say.
	tampered := bytes.Replace(b, []byte(`"messages": 3`), []byte(`"messages": 4`), 1)
	if bytes.Equal(tampered, b) {
		t.Fatal("the test's change did not apply")
	}
	other, _ := (&Manifest{ID: "b1"}).Sign(otherPriv)
	for what, tc := range map[string]struct {
		b   []byte
		pub ed25519.PublicKey
	}{
		"a changed count":      {tampered, pub},
		"another key's":        {other, pub},
		"checked with another": {b, otherPub},
		"no signature":         {b[:bytes.LastIndex(b, []byte(signaturePrefix))], pub},
		"a cut signature":      {b[:len(b)-10], pub},
	} {
		if _, err := ReadManifest(tc.b, tc.pub); !errors.Is(err, ErrManifest) {
			t.Errorf("%s: %v, want ErrManifest", what, err)
		} else {
			t.Logf("%s: %v", what, err)
		}
	}
}
