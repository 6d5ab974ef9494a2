package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/siterelay/siterelay/provisioning/api"
)

func (s *server) queue(w http.ResponseWriter, c *call) error {
	q := c.r.URL.Query()
	f := api.QueueFilter{Sender: q.Get("sender"), Recipient: q.Get("recipient"), State: q.Get("state")}
	switch f.State {
	case "", "pending":
	default:
		return badParam("state", "want pending or nothing")
	}
	if v := q.Get("older_than"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return badParam("older_than", "want a duration like 30m or 2h")
		}
		f.OlderThan = d
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return badParam("limit", "want a number of messages")
		}
		f.Limit = n
	}
	l, err := s.Box.Queue(c.r.Context(), f)
	if err != nil {
		return err
	}
	if l == nil {
		l = []api.QueueItem{}
	}
	return ok(w, l)
}

func (s *server) message(w http.ResponseWriter, c *call) error {
	id := c.r.PathValue("id")
	body := c.r.URL.Query().Get("body") == "1"
	if body && c.d.Role < api.Admin {
		return &api.Error{Status: 403, Code: api.CodeForbidden, Field: "body",
			Message: fmt.Sprintf("%s has role %s; a message's body needs admin", c.d.Identity, c.d.Role)}
	}
	m, err := s.Box.Message(c.r.Context(), id, body)
	if errors.Is(err, ErrNotFound) {
		return &api.Error{Status: 404, Code: api.CodeNotFound, Field: "id", Message: "no message " + id + " in the queue"}
	}
	if err != nil {
		return err
	}
	return ok(w, m)
}

func (s *server) queueOp(op string, fn func(ctx context.Context, id string) error) handler {
	return func(w http.ResponseWriter, c *call) error {
		id := c.r.PathValue("id")
		c.what = op + " message " + id
		if c.r.Method == http.MethodPost {
			var empty struct{}
			if c.r.ContentLength != 0 {
				if err := decode(w, c.r, &empty); err != nil {
					return err
				}
			}
		}
		err := fn(c.r.Context(), id)
		if errors.Is(err, ErrNotFound) {
			return &api.Error{Status: 404, Code: api.CodeNotFound, Field: "id", Message: "no message " + id + " in the queue"}
		}
		if err != nil {
			return err
		}
		return ok(w, api.OK{OK: true})
	}
}
