package ctl

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/relay/safetext"
)

func (e *env) queue(ctx context.Context, args []string) int {
	if len(args) > 0 && (args[0] == "show" || args[0] == "retry" || args[0] == "bounce" || args[0] == "delete") {
		op := args[0]
		fs := sub("queue "+op, e)
		body := fs.Bool("body", false, "include the message body (admin)")
		pos, err := parse(fs, args[1:])
		if err != nil || len(pos) != 1 {
			return e.fail(usageErr("relayctl queue %s ID", op))
		}
		id := pos[0]
		call := e.change
		if op == "show" {
			call = e.call
		}
		return call(ctx, func(ctx context.Context, c *api.Client) error {
			switch op {
			case "retry":
				err = c.Retry(ctx, id)
			case "bounce":
				err = c.Bounce(ctx, id)
			case "delete":
				err = c.Delete(ctx, id)
			default:
				m, err := c.Message(ctx, id, *body)
				if err != nil {
					return err
				}
				return e.out(m, func(t *tabwriter.Writer) {
					row(t, "id\t%s\nfrom\t%s\nreceived\t%s\nsize\t%s\nclient\t%s\nsubject\t%s\n", m.ID, m.From, m.Received.UTC().Format(time.RFC3339), bytesStr(m.Size), m.ClientIP, m.Subject)
					for _, r := range m.Recipients {
						row(t, "to %s\t%s %s\n", r.Addr, r.State, r.Reply)
					}
					if m.LastReply != "" {
						row(t, "last reply\t%s\n", m.LastReply)
					}
					if m.LastHint != "" {
						row(t, "hint\t%s\n", m.LastHint)
					}
					t.Flush()
					fmt.Fprintf(e.Stdout, "\n%s", safetext.EscapeText(m.Headers))
					if m.Body != "" {
						fmt.Fprintf(e.Stdout, "\n--- body ---\n%s\n", safetext.EscapeText(m.Body))
					}
				})
			}
			if err != nil {
				return err
			}
			return e.out(api.OK{OK: true}, func(t *tabwriter.Writer) { row(t, "%s: %s done\n", id, op) })
		})
	}
	if len(args) > 0 && args[0] == "list" {
		args = args[1:]
	}
	fs := sub("queue", e)
	var f api.QueueFilter
	fs.StringVar(&f.Sender, "sender", "", "only from this envelope sender")
	fs.StringVar(&f.Recipient, "recipient", "", "only to this recipient")
	fs.DurationVar(&f.OlderThan, "older-than", 0, "only messages queued longer than this")
	pending := fs.Bool("pending", false, "only messages with a recipient still pending")
	fs.IntVar(&f.Limit, "limit", 0, "at most this many")
	if pos, err := parse(fs, args); err != nil || len(pos) > 0 {
		return e.fail(usageErr("relayctl queue [list] [flags]; see relayctl -h"))
	}
	if *pending {
		f.State = "pending"
	}
	return e.call(ctx, func(ctx context.Context, c *api.Client) error {
		l, err := c.Queue(ctx, f)
		if err != nil {
			return err
		}
		now := time.Now()
		return e.out(l, func(t *tabwriter.Writer) {
			fmt.Fprintln(t, "ID\tAGE\tFROM\tTO\tPENDING\tSIZE\tLAST REPLY")
			for _, m := range l {
				row(t, "%s\t%s\t%s\t%s\t%d\t%s\t%.60s\n", m.ID, ago(m.Received, now), m.From, strings.Join(m.To, ","), m.Pending, bytesStr(m.Size), m.LastReply)
			}
		})
	})
}
