package ctl

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/siterelay/siterelay/provisioning/api"
)

func (e *env) audit(ctx context.Context, args []string) int {
	fs := sub("audit", e)
	limit := fs.Int("limit", 50, "the newest this many entries")
	if pos, err := parse(fs, args); err != nil || len(pos) > 0 {
		return e.fail(usageErr("relayctl audit [-limit N]"))
	}
	return e.call(ctx, func(ctx context.Context, c *api.Client) error {
		l, err := c.Audit(ctx, *limit)
		if err != nil {
			return err
		}
		return e.out(l, func(t *tabwriter.Writer) {
			fmt.Fprintln(t, "TIME\tWHO\tNODE\tROLE\tWHAT\tRESULT")
			for _, a := range l {
				row(t, "%s\t%s\t%s\t%s\t%s\t%s\n", a.Time.UTC().Format(time.RFC3339), a.Login, a.Node, a.Role, a.What, a.Result)
			}
		})
	})
}
