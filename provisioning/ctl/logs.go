package ctl

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/siterelay/siterelay/provisioning/api"
)

// logs prints relayd's log (the box's log ring, previous runs included),
// one line a record, every control character escaped; -f follows it until
// Ctrl-C.
func (e *env) logs(ctx context.Context, args []string) int {
	fs := sub("logs", e)
	follow := fs.Bool("f", false, "follow: print new lines as they are written, until Ctrl-C")
	since := fs.String("since", "", "only lines from then on: a duration back from now (1h), a date (2026-11-23) or an RFC 3339 time; default the whole log kept")
	level := fs.String("level", "info", "the least level shown: debug, info, warn or error")
	if pos, err := parse(fs, args); err != nil || len(pos) > 0 {
		return e.fail(usageErr("relayctl logs [-f] [-since D|TIME] [-level L]"))
	}
	var q api.LogQuery
	q.Follow = *follow
	q.Level = strings.ToLower(*level)
	switch q.Level {
	case "debug", "info", "warn", "error":
	default:
		return e.fail(usageErr("-level %q: want debug, info, warn or error", *level))
	}
	if *since != "" {
		var err error
		if q.Since, q.Ago, err = sinceFlag(*since); err != nil {
			return e.fail(err)
		}
	}
	print := func(l api.LogLine) error {
		if e.json {
			_, err := fmt.Fprintf(e.Stdout, "%s\n", l.Raw)
			return err
		}
		_, err := fmt.Fprintln(e.Stdout, l.Text())
		return err
	}
	if !q.Follow {
		return e.call(ctx, func(ctx context.Context, c *api.Client) error { return c.Logs(ctx, q, print) })
	}
	// Following has no timeout: it ends with ctx (Ctrl-C). Finding the
	// relay still has one.
	rctx, cancel := context.WithTimeout(ctx, e.timeout)
	c, _, err := e.client(rctx)
	cancel()
	if err != nil {
		return e.fail(err)
	}
	return e.fail(c.Logs(ctx, q, print))
}

// sinceFlag reads a -since value as relayd trace -since does: a duration
// back from now (24h), a date (2026-11-23, UTC midnight) or an RFC 3339
// time. A duration is sent as one, so it counts back from the relay's
// clock.
func sinceFlag(v string) (time.Time, time.Duration, error) {
	if d, err := time.ParseDuration(v); err == nil {
		if d < 0 {
			return time.Time{}, 0, usageErr("-since %q: a duration back from now must be positive", v)
		}
		return time.Time{}, d, nil
	}
	for _, layout := range []string{time.DateOnly, time.RFC3339} {
		if t, err := time.Parse(layout, v); err == nil {
			return t, 0, nil
		}
	}
	return time.Time{}, 0, usageErr("-since %q: want a duration (24h), a date (2026-11-23) or an RFC 3339 time", v)
}
