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
			row(t, "identity\t%s\nnode\t%s\nrole\t%s\nvia\t%s\nsite\t%s\n", who, w.Node, w.Role, w.Via, w.Site)
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
			row(t, "site\t%s (%s)\nversion\t%s\nhealth\t%s\nstarted\t%s ago\n", s.Site, s.Hostname, s.Version, s.Health, ago(s.Started, s.Now))
			for _, n := range s.HealthNotes {
				row(t, "why\t%s\n", n)
			}
			if s.Problem != "" {
				row(t, "relay\tNOT RUNNING: %s\n", s.Problem)
			}
			if c := s.Config; c != nil {
				in := c.InForce
				if in == "" {
					in = "none (no SMTP listener)"
				}
				row(t, "configuration\t%s does not build (%s); running %s\n", c.Broken, c.Problem, in)
			}
			for _, w := range s.Waiting {
				what := "secret " + w.Secret
				if w.Secret == "" {
					what = "file " + w.File
				}
				up := w.Upstream
				if up == "" {
					up = "alerts"
				}
				row(t, "waiting\t%s holds for %s (%s): %s\n", up, what, w.Key, w.Reason)
				row(t, "fix\t%s\n", w.Fix)
			}
			row(t, "queue\t%d messages, %s, oldest %s\n", s.Queue.Messages, bytesStr(s.Queue.Bytes), ago(s.Queue.Oldest, s.Now))
			up := s.Upstream.Name
			if s.Upstream.Failing {
				up += " FAILING"
			}
			row(t, "upstream\t%s, last delivery %s ago\n", up, ago(s.Upstream.LastDelivered, s.Now))
			if p := s.Upstream.LastProblem; p != nil {
				row(t, "last problem\t%s %s ago: %s\n", p.Kind, ago(p.Time, s.Now), p.Reply)
				if p.Hint != "" {
					row(t, "hint\t%s\n", p.Hint)
				}
			}
			for _, l := range s.Listeners {
				row(t, "listener %s\t%s %s tls=%s auth=%s\n", l.Name, l.Address, l.Mode, l.TLS, l.Auth)
				if l.Problem != "" {
					row(t, "listener %s\tNOT BOUND: %s\n", l.Name, l.Problem)
				}
			}
			row(t, "refused\t%d device commands or messages since start\n", s.Refused)
			row(t, "disk free\t%s of %s\n", bytesStr(s.Disk.FreeBytes), bytesStr(s.Disk.TotalBytes))
			row(t, "clock\t%s (%s)\n", s.Now.Format(time.RFC3339), clockState(s.ClockSynchronised))
			if !s.TLSCertificateExpires.IsZero() {
				row(t, "tls certificate\texpires %s\n", day(s.TLSCertificateExpires))
			}
			row(t, "config version\t%d\n", s.ConfigVersion)
			for _, cr := range s.Credentials {
				row(t, "credential %s\t%s, expires %s, last used %s\n", cr.Name, cr.Kind, day(cr.NotAfter), day(cr.LastUsed))
			}
			for _, rn := range s.Renewals {
				state := "renews itself from " + day(rn.Due)
				if rn.Failures > 0 {
					state = fmt.Sprintf("RENEWAL FAILING (%d attempts, next %s): %s %s", rn.Failures, rn.NextTry.UTC().Format(time.RFC3339), rn.LastError, rn.Hint)
				}
				row(t, "renewal %s\t%s\n", rn.Credential, state)
				if len(rn.OldKeys) > 0 {
					row(t, "renewal %s\told key %s still on the app (removeKey failed; tried again from %s)\n", rn.Credential, strings.Join(rn.OldKeys, ", "), rn.RemoveNextTry.UTC().Format(time.RFC3339))
				}
			}
			for _, w := range s.Warnings {
				row(t, "warning\t%s\n", w)
			}
			if f := s.Forward; f != nil {
				row(t, "syslog\t%s\n", forwardLine(f, s.Now))
			}
			row(t, "devices (24h)\t%d\n", len(s.Devices))
			row(t, "tailnet\t%s %s\n", s.Tailnet.State, s.Tailnet.Name)
			if s.Audit.Problem != "" {
				row(t, "audit log\tFAILING (changes are refused while it cannot be written): %s\n", s.Audit.Problem)
			} else if s.Audit.WriteFailures > 0 {
				row(t, "audit log\tok (%d write failures since start)\n", s.Audit.WriteFailures)
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

// forwardLine words the syslog forwarding for the status table: where to,
// its state, what waits, what was dropped, the last error while it lasts.
func forwardLine(f *api.Forward, now time.Time) string {
	state := f.State
	if state == "buffering" {
		state = "BUFFERING (the collector does not take messages; retried)"
	}
	line := fmt.Sprintf("%s %s, %s waiting", f.Address, state, bytesStr(f.BufferedBytes))
	if n := f.DroppedTotal(); n > 0 {
		var by []string
		for _, st := range []string{"trace", "audit", "logs"} {
			if f.Dropped[st] > 0 {
				by = append(by, fmt.Sprintf("%s %d", st, f.Dropped[st]))
			}
		}
		line += fmt.Sprintf(", %d DROPPED since start (%s)", n, strings.Join(by, ", "))
	} else {
		line += ", none dropped"
	}
	if f.LastError != "" && f.State != "connected" {
		line += fmt.Sprintf("; last error %s ago: %s", ago(f.LastErrorAt, now), f.LastError)
	}
	return line
}
