package api

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"
)

// strictJSONText refuses a JSON request body that is not valid UTF-8 or that escapes a lone
// UTF-16 surrogate (\ud800 with no low half): encoding/json would quietly replace either with
// U+FFFD, and a payload must be stored byte for byte as sent or not at all. Binary payloads go
// as base64 (data_base64). Webhook bodies are taken raw: read here too, but not checked.
func strictJSONText(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Whatever the Content-Type says: the decoder's idea of JSON is wider than any check of
		// the header, and only JSON bodies are taken outside webhooks.
		if r.Body == nil || r.ContentLength == 0 {
			next.ServeHTTP(w, r)
			return
		}
		b, err := io.ReadAll(r.Body)
		if err != nil {
			var tooLarge *http.MaxBytesError
			if errors.As(err, &tooLarge) {
				writeError(w, NewError(http.StatusRequestEntityTooLarge, "body_too_large", "the request body is larger than api.limits.max_body_bytes"))
				return
			}
			writeError(w, NewError(http.StatusBadRequest, "invalid_request", "the request body could not be read"))
			return
		}
		// Webhook bodies are whatever the sender sends; they are read here all the same, so
		// that every body is read under the server's read timeout before an operation runs.
		if msg := jsonTextProblem(b); msg != "" && !strings.HasPrefix(r.URL.Path, "/v1/hooks/") {
			writeError(w, NewError(http.StatusBadRequest, "body.invalid_text", msg+": send binary data as base64 (data_base64)"))
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(b))
		next.ServeHTTP(w, r)
	})
}

// jsonTextProblem says what in b would not survive decoding unchanged, or "".
func jsonTextProblem(b []byte) string {
	if !utf8.Valid(b) {
		i := 0
		for i < len(b) {
			r, n := utf8.DecodeRune(b[i:])
			if r == utf8.RuneError && n <= 1 {
				break
			}
			i += n
		}
		return "the body is not valid UTF-8 (first bad byte at offset " + strconv.Itoa(i) + ")"
	}
	for i := 0; i+1 < len(b); i++ {
		if b[i] != '\\' {
			continue
		}
		if b[i+1] != 'u' {
			i++ // an escaped character, such as \\ or \"
			continue
		}
		u, ok := hex4(b, i+2)
		if !ok {
			i++
			continue // the decoder reports the malformed escape itself
		}
		switch {
		case u >= 0xD800 && u <= 0xDBFF:
			low, ok := uint16(0), false
			if i+11 < len(b) && b[i+6] == '\\' && b[i+7] == 'u' {
				low, ok = hex4(b, i+8)
			}
			if !ok || low < 0xDC00 || low > 0xDFFF {
				return "the body escapes a lone UTF-16 surrogate at offset " + strconv.Itoa(i)
			}
			i += 11
		case u >= 0xDC00 && u <= 0xDFFF:
			return "the body escapes a lone UTF-16 surrogate at offset " + strconv.Itoa(i)
		default:
			i += 5
		}
	}
	return ""
}

func hex4(b []byte, at int) (uint16, bool) {
	if at+4 > len(b) {
		return 0, false
	}
	var v uint16
	for _, c := range b[at : at+4] {
		v <<= 4
		switch {
		case c >= '0' && c <= '9':
			v |= uint16(c - '0')
		case c >= 'a' && c <= 'f':
			v |= uint16(c-'a') + 10
		case c >= 'A' && c <= 'F':
			v |= uint16(c-'A') + 10
		default:
			return 0, false
		}
	}
	return v, true
}
