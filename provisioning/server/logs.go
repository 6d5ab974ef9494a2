package server

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/siterelay/siterelay/provisioning/api"
)

// logs answers GET /v1/logs: relayd's log as NDJSON, following it with
// ?follow=1 (operator: the log names addresses and subjects).
func (s *server) logs(w http.ResponseWriter, c *call) error {
	v := c.r.URL.Query()
	var q api.LogQuery
	if since := v.Get("since"); since != "" {
		if t, err := time.Parse(time.RFC3339, since); err == nil {
			q.Since = t
		} else if d, err := time.ParseDuration(since); err == nil && d >= 0 {
			q.Since = s.Clock().Add(-d)
		} else {
			return badParam("since", "want an RFC 3339 time or a duration like 1h")
		}
	}
	switch lv := strings.ToLower(v.Get("level")); lv {
	case "", "info":
		q.Level = "info"
	case "debug", "warn", "error":
		q.Level = lv
	default:
		return badParam("level", "want debug, info, warn or error")
	}
	switch f := v.Get("follow"); f {
	case "", "0", "false":
	case "1", "true":
		q.Follow = true
	default:
		return badParam("follow", "want 1 or 0")
	}
	w.Header().Set("Content-Type", api.LogContentType)
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	rc := http.NewResponseController(w)
	started := false
	if q.Follow {
		// The header goes out now: a follower may wait long for a line.
		w.WriteHeader(http.StatusOK)
		rc.Flush()
		started = true
	}
	err := s.Box.Logs(c.r.Context(), q, func(line []byte) error {
		if !started {
			w.WriteHeader(http.StatusOK)
			started = true
		}
		if _, err := w.Write(append(line, '\n')); err != nil {
			return err
		}
		if q.Follow {
			return rc.Flush()
		}
		return nil
	})
	if !started {
		if err != nil && !errors.Is(err, context.Canceled) {
			return err
		}
		w.WriteHeader(http.StatusOK) // no record selected: an empty answer
		return nil
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		s.Logger.Debug("log stream ended", "err", err)
	}
	return nil
}
