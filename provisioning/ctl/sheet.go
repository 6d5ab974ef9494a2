package ctl

import (
	"context"
	"fmt"
	"io"

	"github.com/siterelay/siterelay/provisioning/api"
)

// sheet prints the relay's device setup sheet: what the LAN status page's
// /sheet shows, as text (or JSON with -json), for the admin to send to
// the site.
func (e *env) sheet(ctx context.Context, args []string) int {
	fs := sub("sheet", e)
	if rest, err := parse(fs, args); err != nil || len(rest) > 0 {
		if err == nil {
			fmt.Fprintln(e.Stderr, "relayctl sheet: takes no arguments")
		}
		return ExitUsage
	}
	return e.call(ctx, func(ctx context.Context, c *api.Client) error {
		s, err := c.Sheet(ctx)
		if err != nil {
			return err
		}
		if e.json {
			return e.out(s, nil)
		}
		_, err = io.WriteString(e.Stdout, s.Text)
		return err
	})
}
