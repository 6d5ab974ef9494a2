package ctl

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/siterelay/siterelay/provisioning/api"
)

// followEvery is how often audit -follow asks for new entries.
const followEvery = 2 * time.Second

func (e *env) audit(ctx context.Context, args []string) int {
	fs := sub("audit", e)
	limit := fs.Int("limit", 50, "the newest this many entries")
	follow := fs.Bool("follow", false, "after the newest entries, print new ones as they are written until interrupted")
	if pos, err := parse(fs, args); err != nil || len(pos) > 0 {
		return e.fail(usageErr("relayctl audit [-limit N] [-follow]"))
	}
	if *follow {
		return e.fail(e.followAudit(ctx, *limit))
	}
	return e.call(ctx, func(ctx context.Context, c *api.Client) error {
		l, err := c.Audit(ctx, *limit)
		if err != nil {
			return err
		}
		return e.out(l, func(t *tabwriter.Writer) {
			fmt.Fprintln(t, "TIME\tWHO\tNODE\tROLE\tWHAT\tRESULT")
			for _, a := range l {
				auditRow(t, a)
			}
		})
	})
}

func auditRow(t *tabwriter.Writer, a api.AuditEntry) {
	result := a.Result
	if a.Count > 1 {
		result += fmt.Sprintf(" (x%d)", a.Count)
	}
	row(t, "%s\t%s\t%s\t%s\t%s\t%s\n", a.Time.UTC().Format(time.RFC3339), a.Login, a.Node, a.Role, a.What, result)
}

// followAudit prints the newest limit entries, oldest first, then each
// new one (a line of JSON each with -json) until ctx ends. A relay that
// does not answer for a while is asked again; entries are told apart by
// their sequence number, so none is printed twice.
func (e *env) followAudit(ctx context.Context, limit int) error {
	c, err := func() (*api.Client, error) {
		rctx, cancel := context.WithTimeout(ctx, e.timeout)
		defer cancel()
		c, _, err := e.client(rctx)
		return c, err
	}()
	if err != nil {
		return err
	}
	var last uint64
	first := true
	for {
		rctx, cancel := context.WithTimeout(ctx, e.timeout)
		var l []api.AuditEntry
		if first {
			l, err = c.Audit(rctx, limit)
		} else {
			l, err = c.AuditAfter(rctx, last, 1000)
		}
		cancel()
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil && first:
			return err
		case err != nil:
			fmt.Fprintf(e.Stderr, "relayctl: audit -follow: %v (asking again)\n", err)
		default:
			slices.Reverse(l) // oldest first
			var fresh []api.AuditEntry
			for _, a := range l {
				if a.Seq > last || first {
					fresh = append(fresh, a)
				}
			}
			for _, a := range fresh {
				last = max(last, a.Seq)
			}
			if err := e.printFollowed(fresh, first); err != nil {
				return err
			}
			first = false
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(followEvery):
		}
	}
}

func (e *env) printFollowed(l []api.AuditEntry, header bool) error {
	if e.json {
		enc := json.NewEncoder(e.Stdout)
		for _, a := range l {
			if err := enc.Encode(a); err != nil {
				return err
			}
		}
		return nil
	}
	t := tabwriter.NewWriter(e.Stdout, 0, 4, 2, ' ', 0)
	if header {
		fmt.Fprintln(t, "TIME\tWHO\tNODE\tROLE\tWHAT\tRESULT")
	}
	for _, a := range l {
		auditRow(t, a)
	}
	return t.Flush()
}
