package ctl

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/siterelay/siterelay/provisioning/api"
)

// devices is `relayctl devices` (viewer: what learning mode saw) and
// `relayctl devices adopt` (admin: a new configuration version with the
// learned clients as devices, as `relayd devices adopt` makes it).
func (e *env) devices(ctx context.Context, args []string) int {
	if len(args) > 0 && args[0] == "adopt" {
		return e.adopt(ctx, args[1:])
	}
	if len(args) > 0 && args[0] == "list" {
		args = args[1:]
	}
	if pos, err := parse(sub("devices", e), args); err != nil || len(pos) > 0 {
		return e.fail(usageErr("relayctl devices [list] | devices adopt [-address A,B] [-lock=false] [-dry-run]"))
	}
	return e.call(ctx, func(ctx context.Context, c *api.Client) error {
		l, err := c.Devices(ctx)
		if err != nil {
			return err
		}
		now := time.Now()
		return e.out(l, func(t *tabwriter.Writer) {
			fmt.Fprintln(t, "ADDRESS\tDEVICE\tLOGIN\tTLS\tLAST MESSAGE\tMESSAGES\tREFUSED MAILS\tHELO\tSENDERS")
			for _, d := range l {
				dev := d.Device
				if !d.Adopted {
					dev = "(not adopted)"
				}
				last := "-"
				if !d.LastMessage.IsZero() {
					last = ago(d.LastMessage, now) + " ago"
				}
				row(t, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\n", d.Address, dev, join(d.Logins), lastOf(d.TLS, "none"), last,
					d.Messages, max(0, d.Mails-d.Messages), join(d.Helo), join(d.Senders))
			}
		})
	})
}

func (e *env) adopt(ctx context.Context, args []string) int {
	fs := sub("devices adopt", e)
	addrs := fs.String("address", "", "adopt only the clients learned at these comma-separated addresses")
	lock := fs.Bool("lock", true, "devices_only in the new configuration (false: unknown clients still relay as before)")
	dry := fs.Bool("dry-run", false, "only show what would change")
	base := fs.Int("base", 0, "the configuration version this adoption is based on (the one a dry run showed); default: the one in force now")
	if pos, err := parse(fs, args); err != nil || len(pos) > 0 {
		return e.fail(usageErr("relayctl devices adopt [-address A,B] [-lock=false] [-dry-run] [-base VERSION]"))
	}
	req := api.AdoptRequest{DevicesOnly: lock, DryRun: *dry}
	if *addrs != "" {
		req.Addresses = strings.Split(*addrs, ",")
	}
	return e.change(ctx, func(ctx context.Context, c *api.Client) error {
		v, err := e.baseVersion(ctx, c, *base)
		if err != nil {
			return err
		}
		r, err := c.AdoptBased(ctx, req, v)
		if err != nil {
			return err
		}
		return e.out(r, func(t *tabwriter.Writer) {
			for _, d := range r.Adopted {
				row(t, "adopted %s\t%s\t%s\t%s\n", d.Name, join(d.Addresses), join(d.AllowedSenders), d.Owner)
			}
			if len(r.Adopted) == 0 {
				fmt.Fprintln(t, "no new device: every learned client that sent mail is a device already")
			}
			row(t, "devices_only\t%v\n", r.DevicesOnly)
			e.changes(t, &r.Config)
		})
	})
}

func join(l []string) string {
	if len(l) == 0 {
		return "-"
	}
	return strings.Join(l, ",")
}

// lastOf is the last of l (the most recent a client used), or none.
func lastOf(l []string, none string) string {
	if len(l) == 0 {
		return none
	}
	return l[len(l)-1]
}
