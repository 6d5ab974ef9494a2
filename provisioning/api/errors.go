package api

// Error codes, stable for scripts.
const (
	CodeBadRequest    = "bad_request"    // malformed JSON, unknown field, bad parameter
	CodeTooLarge      = "too_large"      // body over MaxBody
	CodeInvalidConfig = "invalid_config" // configuration with key errors (see Problems)
	CodeInvalidCred   = "invalid_credential"
	CodeNotFound      = "not_found"
	CodeConflict      = "conflict"
	CodeForbidden     = "forbidden"       // identity lacks the role
	CodeUnauthorized  = "unauthenticated" // no tailnet identity
	CodeCSRF          = "missing_header"  // changing call without CSRFHeader
	CodeMethod        = "method_not_allowed"
	CodeInternal      = "internal"
	CodeUnavailable   = "unavailable"
	// CodeAuditUnavailable: a changing call refused because its audit
	// entry could not be written first (nothing was changed).
	CodeAuditUnavailable = "audit_unavailable"
	// CodeMisdirected: the request named a host (Host or Origin) that is
	// not one of the relay's own tailnet names or addresses (DNS
	// rebinding); answered 421.
	CodeMisdirected = "misdirected"
	// CodeStale: a configuration change based on a version that is no
	// longer the current one (If-Match); answered 409.
	CodeStale = "stale_version"
)

// Error is every error answer's body: {"error": {...}}.
type Error struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`
	Message string `json:"message"`
	// Field names the request field or configuration key at fault.
	Field string `json:"field,omitempty"`
	// Problems lists every key error of a configuration or a request body.
	Problems []Problem `json:"problems,omitempty"`
}

// Problem is one configuration key and what is wrong with it.
type Problem struct {
	Key     string `json:"key"`
	Problem string `json:"problem"`
}

func (e *Error) Error() string {
	s := e.Code + ": " + e.Message
	if e.Field != "" {
		s = e.Code + ": " + e.Field + ": " + e.Message
	}
	for _, p := range e.Problems {
		s += "\n  " + p.Key + ": " + p.Problem
	}
	return s
}

// ErrorBody wraps Error on the wire.
type ErrorBody struct {
	Error *Error `json:"error"`
}
