package api

import "time"

// TraceQuery selects trace events.
type TraceQuery struct {
	QueueID   string    `json:"queue_id,omitempty"`
	MessageID string    `json:"message_id,omitempty"`
	Sender    string    `json:"sender,omitempty"`
	Recipient string    `json:"recipient,omitempty"`
	Kind      string    `json:"kind,omitempty"`
	Since     time.Time `json:"since,omitzero"`
	Limit     int       `json:"limit,omitempty"`
	// Device is a configured device's name (devices[].name); the login or
	// listener name of events from before devices existed match too.
	Device string `json:"device,omitempty"`
	// ClientIP is the sending device's address; Subject part of the
	// subject; Until the end of the time range (exclusive).
	ClientIP string    `json:"client_ip,omitempty"`
	Subject  string    `json:"subject,omitempty"`
	Until    time.Time `json:"until,omitzero"`
}

// TraceEvent is one trace line (docs/trace.md has the fields).
type TraceEvent struct {
	Time      time.Time `json:"time"`
	Kind      string    `json:"kind"`
	QueueID   string    `json:"queue_id,omitempty"`
	MessageID string    `json:"message_id,omitempty"`
	ClientIP  string    `json:"client_ip,omitempty"`
	From      string    `json:"from"`
	To        []string  `json:"to,omitempty"`
	Subject   string    `json:"subject,omitempty"`
	Size      int64     `json:"size,omitempty"`
	Attempt   int       `json:"attempt,omitempty"`
	Reply     string    `json:"reply,omitempty"`
	Hint      string    `json:"hint,omitempty"`
	Upstream  string    `json:"upstream,omitempty"`
	// Device is the configured device that sent the message.
	Device string `json:"device,omitempty"`
	// Credential, Step, KeyID and Result are a "renewal" event's (a step
	// of a box-made certificate's renewal; no message): the credential's
	// name, the step, the key id at the app registration, "ok" or
	// "failed".
	Credential string `json:"credential,omitempty"`
	Step       string `json:"step,omitempty"`
	KeyID      string `json:"key_id,omitempty"`
	Result     string `json:"result,omitempty"`
}
