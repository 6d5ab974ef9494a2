package web

import (
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/siterelay/siterelay/provisioning/api"
)

// logLines bounds the lines the page shows (the newest).
const logLines = 500

type logsPage struct {
	frame
	Levels []string
	Level  string
	Since  string
	Lines  []api.LogLine
	Cut    bool
	Kept   string
}

// logs shows the newest lines of relayd's log (operator, as the API).
func (s *site) logs(w http.ResponseWriter, c *call) error {
	q := c.r.URL.Query()
	p := logsPage{frame: s.frame(c), Levels: []string{"debug", "info", "warn", "error"}, Kept: "2 MiB"}
	p.Level = strings.ToLower(strings.TrimSpace(q.Get("level")))
	if p.Level == "" {
		p.Level = "info"
	}
	if !slices.Contains(p.Levels, p.Level) {
		return &pageError{status: 400, code: api.CodeBadRequest, msg: "Level: want debug, info, warn or error, not " + strconv.Quote(p.Level) + "."}
	}
	p.Since = strings.TrimSpace(q.Get("since"))
	if p.Since == "" {
		p.Since = "24h"
	}
	lq := api.LogQuery{Level: p.Level}
	if t, err := time.Parse(time.RFC3339, p.Since); err == nil {
		lq.Since = t
	} else if d, err := time.ParseDuration(p.Since); err == nil && d > 0 {
		lq.Since = p.Now.Add(-d)
	} else {
		return &pageError{status: 400, code: api.CodeBadRequest, msg: "Since: want a duration like 24h or an RFC 3339 time, not " + strconv.Quote(p.Since) + "."}
	}
	err := s.Box.Logs(c.r.Context(), lq, func(line []byte) error {
		p.Lines = append(p.Lines, api.ParseLogLine(line))
		if len(p.Lines) > logLines {
			p.Lines, p.Cut = p.Lines[1:], true
		}
		return nil
	})
	if err != nil {
		return err
	}
	slices.Reverse(p.Lines)
	return s.render(w, "logs.html", p)
}
