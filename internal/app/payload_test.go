package app

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"testing"
)

// A payload is stored byte for byte as sent or refused: invalid UTF-8 and lone surrogates in a
// JSON string are a 400 that says to use base64 (encoding/json would store U+FFFD instead);
// escaped surrogate pairs and base64 binary come back exactly.
func TestPayloadsAreStoredAsSent(t *testing.T) {
	ta := startApp(t, nil)
	admin := ta.adminSession(t)
	for _, s := range []struct {
		path string
		body any
	}{
		{"/v1/tenants", map[string]string{"name": "acme"}},
		{"/v1/tenants/acme/environments/production/applications", map[string]string{"name": "shop"}},
		{"/v1/tenants/acme/environments/production/applications/shop/queues", map[string]any{"name": "orders"}},
	} {
		if st, _, raw := ta.call(t, "POST", s.path, admin, s.body); st != 201 {
			t.Fatalf("setup %s: %d %s", s.path, st, raw)
		}
	}
	q := "/v1/tenants/acme/environments/production/applications/shop/queues/orders"
	contentType := "application/json"
	raw := func(body []byte) (int, string) {
		req, _ := http.NewRequest("POST", ta.url(q+"/messages"), bytes.NewReader(body))
		req.Header.Set("Content-Type", contentType)
		req.Header.Set("Authorization", "Bearer "+admin)
		st, out := do(t, ta.client("", nil), req)
		return st, string(out)
	}
	for name, body := range map[string][]byte{
		"invalid UTF-8":           []byte("{\"messages\":[{\"data\":\"ab\xff\xfecd\"}]}"),
		"lone high surrogate":     []byte(`{"messages":[{"data":"x\ud800y"}]}`),
		"lone low surrogate":      []byte(`{"messages":[{"data":"x\udc00"}]}`),
		"high surrogate at end":   []byte(`{"messages":[{"data":"\ud83d"}]}`),
		"invalid UTF-8 in an id":  []byte("{\"messages\":[{\"id\":\"\xc3\x28\",\"data\":\"x\"}]}"),
		"invalid UTF-8 in header": []byte("{\"messages\":[{\"data\":\"x\",\"headers\":{\"k\":\"\xed\xa0\x80\"}}]}"),
	} {
		if st, out := raw(body); st != 400 || !bytes.Contains([]byte(out), []byte(`"body.invalid_text"`)) {
			t.Errorf("%s: %d %s", name, st, out)
		}
	}
	// Whatever the Content-Type claims, since the decoder's idea of JSON is wider than a check
	// of the header.
	for _, ct := range []string{"json", "application/json; charset", "a+application/json", "application/json;;", "+", "text/plain", ""} {
		contentType = ct
		if st, out := raw([]byte("{\"messages\":[{\"data\":\"ab\xffcd\"}]}")); st < 400 || st >= 500 {
			t.Errorf("Content-Type %q with invalid UTF-8: %d %s", ct, st, out)
		}
	}
	contentType = "application/json"
	if st, out, _ := ta.call(t, "GET", q, admin, nil); st != 200 || out["stats"].(map[string]any)["depth"] != float64(0) {
		t.Fatalf("a refused publish stored something: %v", out)
	}
	bin := []byte{0, 0xff, 0xfe, 0xed, 0xa0, 0x80}
	if st, out := raw([]byte(`{"messages":[{"data":"pile of \ud83d\udca9 \\ud800 literal"},{"data_base64":"` + base64.StdEncoding.EncodeToString(bin) + `"}]}`)); st != 200 {
		t.Fatalf("valid publish: %d %s", st, out)
	}
	st, out, rawOut := ta.call(t, "POST", q+"/consume", admin, map[string]any{"max": 2})
	if st != 200 {
		t.Fatalf("consume: %d %s", st, rawOut)
	}
	var got struct {
		Messages []struct {
			Data       *string `json:"data"`
			DataBase64 []byte  `json:"data_base64"`
		} `json:"messages"`
	}
	_ = out
	if err := json.Unmarshal([]byte(rawOut), &got); err != nil || len(got.Messages) != 2 {
		t.Fatalf("consume: %v %s", err, rawOut)
	}
	if got.Messages[0].Data == nil || *got.Messages[0].Data != "pile of \U0001F4A9 \\ud800 literal" {
		t.Fatalf("text payload changed: %s", rawOut)
	}
	if !bytes.Equal(got.Messages[1].DataBase64, bin) {
		t.Fatalf("binary payload changed: %s", rawOut)
	}
}
