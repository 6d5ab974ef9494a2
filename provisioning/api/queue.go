package api

import "time"

// QueueFilter selects queued messages; empty fields match everything.
type QueueFilter struct {
	Sender    string `json:"sender,omitempty"`
	Recipient string `json:"recipient,omitempty"`
	// State: "pending" (has a pending recipient) or "" for all.
	State     string        `json:"state,omitempty"`
	OlderThan time.Duration `json:"older_than,omitempty"`
	Limit     int           `json:"limit,omitempty"`
}

// QueueItem is one queued message in a list.
type QueueItem struct {
	ID        string    `json:"id"`
	From      string    `json:"from"`
	To        []string  `json:"to"`
	Subject   string    `json:"subject,omitempty"`
	Size      int64     `json:"size"`
	Received  time.Time `json:"received"`
	Pending   int       `json:"pending"`
	LastReply string    `json:"last_reply,omitempty"`
}

// Message is one queued message in detail.
type Message struct {
	ID         string      `json:"id"`
	From       string      `json:"from"`
	Received   time.Time   `json:"received"`
	Size       int64       `json:"size"`
	ClientIP   string      `json:"client_ip,omitempty"`
	Login      string      `json:"login,omitempty"`
	MessageID  string      `json:"message_id,omitempty"`
	Subject    string      `json:"subject,omitempty"`
	Recipients []Recipient `json:"recipients"`
	LastReply  string      `json:"last_reply,omitempty"`
	LastHint   string      `json:"last_hint,omitempty"`
	Headers    string      `json:"headers,omitempty"`
	// Body is the whole message; only an admin gets it (?body=1).
	Body string `json:"body,omitempty"`
}

type Recipient struct {
	Addr  string `json:"addr"`
	State string `json:"state"`
	Reply string `json:"reply,omitempty"`
}
