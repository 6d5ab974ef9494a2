package ctl

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/siterelay/siterelay/provisioning/api"
)

// trace searches the relay's message trace with the filters relayd trace
// has, -since and -until taking what relayd trace's take.
func (e *env) trace(ctx context.Context, args []string) int {
	fs := sub("trace", e)
	var q api.TraceQuery
	fs.StringVar(&q.QueueID, "id", "", "the queue id: the ID in the device's \"250 OK queued as ID\", in a bounce, in relayctl queue")
	fs.StringVar(&q.MessageID, "message-id", "", "Message-ID header, with or without <>")
	fs.StringVar(&q.Sender, "from", "", "envelope sender, or part of it (@plant.example)")
	fs.StringVar(&q.Recipient, "to", "", "recipient, or part of it")
	fs.StringVar(&q.ClientIP, "client", "", "the sending device's IP address")
	fs.StringVar(&q.Subject, "subject", "", "part of the subject")
	fs.StringVar(&q.Kind, "kind", "", "the status: received, deferred, delivered, bounced, expired or failed; renewal for the steps of a certificate renewal")
	fs.StringVar(&q.Kind, "status", "", "the same as -kind")
	fs.StringVar(&q.Device, "device", "", "a configured device's name (devices[].name); events from before it was configured match by its login or listener")
	since := fs.String("since", "24h", "only events from then on: a duration back from now (24h), a date (2026-11-23) or an RFC 3339 time")
	until := fs.String("until", "", "only events before then, as -since")
	fs.IntVar(&q.Limit, "limit", 100, "at most this many events, newest first")
	if pos, err := parse(fs, args); err != nil || len(pos) > 0 {
		return e.fail(usageErr("relayctl trace [flags] (relayctl trace -h lists them)"))
	}
	now := time.Now()
	for _, b := range []struct {
		flag, v string
		to      *time.Time
	}{{"-since", *since, &q.Since}, {"-until", *until, &q.Until}} {
		if b.v == "" {
			continue
		}
		t, ago, err := sinceFlag(b.v)
		if err != nil {
			return e.fail(usageErr("%s: %v", b.flag, strings.TrimPrefix(err.Error(), "usage: -since ")))
		}
		if ago > 0 || t.IsZero() {
			t = now.Add(-ago)
		}
		*b.to = t
	}
	return e.call(ctx, func(ctx context.Context, c *api.Client) error {
		l, err := c.Trace(ctx, q)
		if err != nil {
			return err
		}
		return e.out(l, func(t *tabwriter.Writer) {
			fmt.Fprintln(t, "TIME\tKIND\tID\tDEVICE\tFROM\tTO\tREPLY\tHINT")
			for _, ev := range l {
				if ev.Kind == "renewal" { // no message: the credential, the step and its result
					row(t, "%s\t%s\t%s\t%s\t%s %s\t%s\t%.50s\t%.60s\n", ev.Time.UTC().Format(time.RFC3339), ev.Kind, ev.Credential, "-", ev.Step, ev.Result, dash(ev.KeyID), ev.Reply, ev.Hint)
					continue
				}
				row(t, "%s\t%s\t%s\t%s\t%s\t%s\t%.50s\t%.60s\n", ev.Time.UTC().Format(time.RFC3339), ev.Kind, ev.QueueID, dash(ev.Device), ev.From, strings.Join(ev.To, ","), ev.Reply, ev.Hint)
			}
		})
	})
}
