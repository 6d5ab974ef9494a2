package server

import (
	"net/http"
	"strconv"
	"time"

	"github.com/siterelay/siterelay/provisioning/api"
)

func (s *server) trace(w http.ResponseWriter, c *call) error {
	q := c.r.URL.Query()
	tq := api.TraceQuery{QueueID: q.Get("queue_id"), MessageID: q.Get("message_id"), Sender: q.Get("sender"), Recipient: q.Get("recipient"), Kind: q.Get("kind"), Device: q.Get("device"),
		ClientIP: q.Get("client_ip"), Subject: q.Get("subject")}
	for _, b := range []struct {
		name string
		to   *time.Time
	}{{"since", &tq.Since}, {"until", &tq.Until}} {
		v := q.Get(b.name)
		if v == "" {
			continue
		}
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			d, derr := time.ParseDuration(v)
			if derr != nil {
				return badParam(b.name, "want an RFC 3339 time or a duration like 24h")
			}
			t = s.Clock().Add(-d)
		}
		*b.to = t
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > 100000 {
			return badParam("limit", "want a number up to 100000")
		}
		tq.Limit = n
	}
	l, err := s.Box.Trace(c.r.Context(), tq)
	if err != nil {
		return err
	}
	if l == nil {
		l = []api.TraceEvent{}
	}
	return ok(w, l)
}
