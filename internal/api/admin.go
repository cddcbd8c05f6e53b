package api

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"strings"
)

// requireAdmin lets /v1/ requests through only with the platform administrator's bootstrap
// token as a bearer token; every other route (health, the OpenAPI document) is public. The
// server keeps only the token's SHA-256, and compares in constant time.
func requireAdmin(next http.Handler, tokenHash [32]byte) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/v1/") {
			next.ServeHTTP(w, r)
			return
		}
		token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		sum := sha256.Sum256([]byte(token))
		if !ok || subtle.ConstantTimeCompare(sum[:], tokenHash[:]) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="penstock"`)
			writeError(w, NewError(http.StatusUnauthorized, "unauthenticated", "a platform administrator's token is required"))
			return
		}
		next.ServeHTTP(w, r)
	})
}
