package ctl

import (
	"context"
	"text/tabwriter"

	"github.com/siterelay/siterelay/provisioning/api"
)

func (e *env) doctor(ctx context.Context, args []string) int {
	fs := sub("doctor", e)
	to := fs.String("to", "", "send a test message to this address")
	if pos, err := parse(fs, args); err != nil || len(pos) > 0 {
		return e.fail(usageErr("relayctl doctor [-to ADDR]"))
	}
	failed := 0
	code := e.change(ctx, func(ctx context.Context, c *api.Client) error {
		steps, err := c.Doctor(ctx, *to)
		if err != nil {
			return err
		}
		for _, s := range steps {
			if !s.OK {
				failed++
			}
		}
		return e.out(steps, func(t *tabwriter.Writer) {
			for _, s := range steps {
				mark := "ok"
				if !s.OK {
					mark = "FAIL"
				}
				row(t, "%s\t%s\t%s\n", mark, s.Name, s.Detail)
			}
		})
	})
	if code == ExitOK && failed > 0 {
		return ExitFailed
	}
	return code
}
