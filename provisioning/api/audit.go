package api

import "time"

// AuditEntry is one changing call, allowed or refused.
type AuditEntry struct {
	Time   time.Time `json:"time"`
	Login  string    `json:"login,omitempty"`
	Node   string    `json:"node"`
	Role   Role      `json:"role"`
	Method string    `json:"method"`
	Path   string    `json:"path"`
	// What is the operation with its non-secret arguments, e.g.
	// "put credential m365-secret (client-secret)".
	What string `json:"what"`
	// Result is "ok", "started" (written before an allowed change is
	// made; its outcome follows in an entry of its own) or the error code.
	Result string `json:"result"`
	Status int    `json:"status"`
	// Cut says a field was longer than the log keeps and was cut (its
	// end is marked "…[cut]").
	Cut bool `json:"cut,omitempty"`
	// Count, when over 1, says this entry stands for that many refused
	// calls of a caller with no role (they are summarised, at most one
	// entry a minute per caller).
	Count int `json:"count,omitempty"`
	// Seq numbers the entries of a box in the order they were written
	// (the order of entries with the same time).
	Seq uint64 `json:"seq,omitempty"`
}

// AuditResultStarted is the result of the entry written before an allowed
// change is made.
const AuditResultStarted = "started"

// AuditHealth is the audit log's state in the status.
type AuditHealth struct {
	// WriteFailures counts entries that could not be written (and so
	// changes that were refused) and failed rotations since start.
	WriteFailures uint64 `json:"write_failures"`
	// Problem is the last failure, while it lasts ("" when the log is
	// written normally).
	Problem string `json:"problem,omitempty"`
}
