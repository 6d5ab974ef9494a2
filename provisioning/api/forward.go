package api

import "time"

// Forward is the box's syslog forwarding (forward.syslog): where to, whether
// the collector takes the messages, what waits on disk for it, what was
// lost. The words of State are the relay's (relay/forward): "connected",
// "buffering" (the collector does not take messages; they wait on disk and
// are retried) or "idle" (nothing to send, no connection).
type Forward struct {
	Address       string            `json:"address"`
	State         string            `json:"state"`
	BufferedBytes int64             `json:"buffered_bytes"`
	Dropped       map[string]uint64 `json:"dropped"`
	LastError     string            `json:"last_error,omitempty"`
	LastErrorAt   time.Time         `json:"last_error_at,omitzero"`
}

// DroppedTotal is the messages dropped since start, of every stream.
func (f *Forward) DroppedTotal() uint64 {
	var n uint64
	for _, v := range f.Dropped {
		n += v
	}
	return n
}
