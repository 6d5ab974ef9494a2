package ctl

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/siterelay/siterelay/provisioning/api"
)

func (e *env) trace(ctx context.Context, args []string) int {
	fs := sub("trace", e)
	var q api.TraceQuery
	fs.StringVar(&q.QueueID, "id", "", "queue id")
	fs.StringVar(&q.MessageID, "message-id", "", "Message-ID")
	fs.StringVar(&q.Sender, "from", "", "envelope sender")
	fs.StringVar(&q.Recipient, "to", "", "recipient")
	fs.StringVar(&q.Kind, "kind", "", "received, deferred, delivered, bounced, expired or failed")
	fs.StringVar(&q.Device, "device", "", "the device's name (devices[].name)")
	since := fs.Duration("since", 24*time.Hour, "how far back")
	fs.IntVar(&q.Limit, "limit", 100, "at most this many events")
	if pos, err := parse(fs, args); err != nil || len(pos) > 0 {
		return e.fail(usageErr("relayctl trace [flags]"))
	}
	q.Since = time.Now().Add(-*since)
	return e.call(ctx, func(ctx context.Context, c *api.Client) error {
		l, err := c.Trace(ctx, q)
		if err != nil {
			return err
		}
		return e.out(l, func(t *tabwriter.Writer) {
			fmt.Fprintln(t, "TIME\tKIND\tID\tDEVICE\tFROM\tTO\tREPLY\tHINT")
			for _, ev := range l {
				row(t, "%s\t%s\t%s\t%s\t%s\t%s\t%.50s\t%.60s\n", ev.Time.UTC().Format(time.RFC3339), ev.Kind, ev.QueueID, dash(ev.Device), ev.From, strings.Join(ev.To, ","), ev.Reply, ev.Hint)
			}
		})
	})
}
