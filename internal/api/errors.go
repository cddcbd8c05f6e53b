package api

import (
	"encoding/json"
	"net/http"

	"github.com/danielgtaylor/huma/v2"
)

// Error is what a client sees when a request fails: the HTTP status, a stable machine code
// (such as rate_limited or engine.unavailable) and a human message. The cause is logged by
// the server and never serialised.
type Error struct {
	Status  int            `json:"-"`
	Code    string         `json:"code" doc:"Stable machine-readable error code" example:"not_found"`
	Message string         `json:"message" doc:"Human-readable explanation"`
	Details []*ErrorDetail `json:"details,omitempty" doc:"Which inputs were wrong, by location"`
}

// ErrorDetail names one invalid input. It never echoes the value, which may be a secret.
type ErrorDetail struct {
	Location string `json:"location,omitempty" doc:"Where the problem is, e.g. body.name or query.limit"`
	Message  string `json:"message"`
}

func (e *Error) Error() string  { return e.Code + ": " + e.Message }
func (e *Error) GetStatus() int { return e.Status }

// NewError builds an Error with an explicit code.
func NewError(status int, code, msg string) *Error {
	return &Error{Status: status, Code: code, Message: msg}
}

// codeForStatus gives errors huma raises itself (validation, unknown routes) a stable code.
func codeForStatus(status int) string {
	switch status {
	case http.StatusBadRequest:
		return "bad_request"
	case http.StatusUnauthorized:
		return "unauthenticated"
	case http.StatusForbidden:
		return "forbidden"
	case http.StatusNotFound:
		return "not_found"
	case http.StatusMethodNotAllowed:
		return "method_not_allowed"
	case http.StatusRequestEntityTooLarge:
		return "body_too_large"
	case http.StatusUnsupportedMediaType:
		return "unsupported_media_type"
	case http.StatusUnprocessableEntity:
		return "invalid_request"
	case http.StatusTooManyRequests:
		return "rate_limited"
	case http.StatusServiceUnavailable:
		return "unavailable"
	default:
		if status >= 500 {
			return "internal"
		}
		return "bad_request"
	}
}

func init() {
	// huma builds its own errors (validation, body too large) through this hook; they get the
	// same shape and stable codes as the handlers' errors.
	huma.NewError = func(status int, msg string, errs ...error) huma.StatusError {
		e := &Error{Status: status, Code: codeForStatus(status), Message: msg}
		if status >= 500 {
			e.Message = http.StatusText(status)
		}
		for _, err := range errs {
			if err == nil {
				continue
			}
			d := &ErrorDetail{Message: err.Error()}
			if ed, ok := err.(huma.ErrorDetailer); ok {
				hd := ed.ErrorDetail()
				d = &ErrorDetail{Location: hd.Location, Message: hd.Message}
			}
			if status < 500 {
				e.Details = append(e.Details, d)
			}
		}
		return e
	}
}

// writeError writes e as JSON, for responses made outside huma (edge refusals, unknown routes).
func writeError(w http.ResponseWriter, e *Error) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(e.Status)
	_ = json.NewEncoder(w).Encode(e)
}
