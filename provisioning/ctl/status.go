package ctl

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/siterelay/siterelay/provisioning/api"
)

func (e *env) whoami(ctx context.Context, args []string) int {
	return e.call(ctx, func(ctx context.Context, c *api.Client) error {
		w, err := c.WhoAmI(ctx)
		if err != nil {
			return err
		}
		return e.out(w, func(t *tabwriter.Writer) {
			who := w.Login
			if who == "" {
				who = strings.Join(w.Tags, ",")
			}
			fmt.Fprintf(t, "identity\t%s\nnode\t%s\nrole\t%s\nvia\t%s\nsite\t%s\n", who, w.Node, w.Role, w.Via, w.Site)
		})
	})
}

func (e *env) status(ctx context.Context, args []string) int {
	return e.call(ctx, func(ctx context.Context, c *api.Client) error {
		s, err := c.Status(ctx)
		if err != nil {
			return err
		}
		return e.out(s, func(t *tabwriter.Writer) {
			fmt.Fprintf(t, "site\t%s (%s)\nversion\t%s\nhealth\t%s\nstarted\t%s ago\n", s.Site, s.Hostname, s.Version, s.Health, ago(s.Started, s.Now))
			fmt.Fprintf(t, "queue\t%d messages, %s, oldest %s\n", s.Queue.Messages, bytesStr(s.Queue.Bytes), ago(s.Queue.Oldest, s.Now))
			up := s.Upstream.Name
			if s.Upstream.Failing {
				up += " FAILING"
			}
			fmt.Fprintf(t, "upstream\t%s, last delivery %s ago\n", up, ago(s.Upstream.LastDelivered, s.Now))
			if p := s.Upstream.LastProblem; p != nil {
				fmt.Fprintf(t, "last problem\t%s %s ago: %s\n", p.Kind, ago(p.Time, s.Now), p.Reply)
				if p.Hint != "" {
					fmt.Fprintf(t, "hint\t%s\n", p.Hint)
				}
			}
			for _, l := range s.Listeners {
				fmt.Fprintf(t, "listener %s\t%s %s tls=%s auth=%s\n", l.Name, l.Address, l.Mode, l.TLS, l.Auth)
			}
			fmt.Fprintf(t, "disk free\t%s of %s\n", bytesStr(s.Disk.FreeBytes), bytesStr(s.Disk.TotalBytes))
			fmt.Fprintf(t, "clock\t%s (%s)\n", s.Now.Format(time.RFC3339), clockState(s.ClockSynchronised))
			if !s.TLSCertificateExpires.IsZero() {
				fmt.Fprintf(t, "tls certificate\texpires %s\n", day(s.TLSCertificateExpires))
			}
			fmt.Fprintf(t, "config version\t%d\n", s.ConfigVersion)
			for _, cr := range s.Credentials {
				fmt.Fprintf(t, "credential %s\t%s, expires %s, last used %s\n", cr.Name, cr.Kind, day(cr.NotAfter), day(cr.LastUsed))
			}
			fmt.Fprintf(t, "devices (24h)\t%d\n", len(s.Devices))
			fmt.Fprintf(t, "tailnet\t%s %s\n", s.Tailnet.State, s.Tailnet.Name)
			if s.Audit.Problem != "" {
				fmt.Fprintf(t, "audit log\tFAILING (changes are refused while it cannot be written): %s\n", s.Audit.Problem)
			} else if s.Audit.WriteFailures > 0 {
				fmt.Fprintf(t, "audit log\tok (%d write failures since start)\n", s.Audit.WriteFailures)
			}
		})
	})
}

// clockState words the relay's view of its clock for the status table.
func clockState(synced *bool) string {
	switch {
	case synced == nil:
		return "synchronisation unknown"
	case *synced:
		return "synchronised"
	}
	return "NOT synchronised: tokens and certificates may be refused"
}
