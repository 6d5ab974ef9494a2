package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/siterelay/siterelay/relay/layout"
	"github.com/siterelay/siterelay/relay/trace"
)

// runTrace searches the message trace of a state directory:
//
//	relayd trace [-state DIR] [-id QUEUEID] [-from ADDR] [-to ADDR] [-since 24h] [-json] ...
func runTrace(args []string, stdout, stderr io.Writer, now time.Time) int {
	fs := flag.NewFlagSet("trace", flag.ContinueOnError)
	fs.SetOutput(stderr)
	state := fs.String("state", defaultState(), "state directory")
	var f trace.Filter
	fs.StringVar(&f.QueueID, "id", "", "the queue id: the ID in the device's \"250 OK queued as ID\", in a bounce, in relayctl queue (the Message-ID header is -message-id)")
	fs.StringVar(&f.MessageID, "message-id", "", "Message-ID header, with or without <>")
	fs.StringVar(&f.Sender, "from", "", "envelope sender as the device gave it or as sent on (senders.rewrite_from), or part of it (@plant.example)")
	fs.StringVar(&f.Recipient, "to", "", "recipient, or part of it")
	fs.StringVar(&f.ClientIP, "client", "", "the sending device's IP address")
	fs.StringVar(&f.Subject, "subject", "", "part of the subject")
	fs.StringVar(&f.Device, "device", "", "a configured device's name (devices[].name); events from before it was configured match by its login or the listener it sent to")
	kind := fs.String("kind", "", "the status: received, deferred, delivered, bounced, expired or failed; renewal for the steps of a certificate renewal")
	fs.StringVar(kind, "status", "", "the same as -kind")
	since := fs.String("since", "", "only events from then on: a duration back from now (24h), a date (2026-11-23) or an RFC 3339 time")
	until := fs.String("until", "", "only events before then, as -since")
	fs.IntVar(&f.Limit, "limit", 100, fmt.Sprintf("at most this many events, newest first (up to %d)", trace.MaxLimit))
	asJSON := fs.Bool("json", false, "one JSON object a line, as in the trace files")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "relayd trace: unexpected argument %q (filters are flags, see -h)\n", fs.Arg(0))
		return 2
	}
	if *kind != "" {
		f.Kind = trace.Kind(*kind)
		if !slices.Contains(trace.SearchKinds, f.Kind) {
			fmt.Fprintf(stderr, "relayd trace: -kind %q: want one of %v\n", *kind, trace.SearchKinds)
			return 2
		}
	}
	var err error
	if f.Since, err = parseWhen(*since, now); err != nil {
		fmt.Fprintf(stderr, "relayd trace: -since: %v\n", err)
		return 2
	}
	if f.Until, err = parseWhen(*until, now); err != nil {
		fmt.Fprintf(stderr, "relayd trace: -until: %v\n", err)
		return 2
	}
	events, err := trace.Search(context.Background(), layout.Dir(*state).Trace(), f)
	if err != nil {
		fmt.Fprintf(stderr, "relayd trace: %v\n", err)
		return 1
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		for _, e := range events {
			enc.Encode(e)
		}
		return 0
	}
	if len(events) == 0 {
		fmt.Fprintln(stderr, "no events match")
		return 0
	}
	trace.WriteText(stdout, events)
	return 0
}

// parseWhen reads "24h" (back from now), "2026-11-23" (UTC midnight) or
// an RFC 3339 time; "" is no bound.
func parseWhen(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("%q: a duration back from now must be positive", s)
		}
		return now.Add(-d), nil
	}
	for _, layout := range []string{time.DateOnly, time.RFC3339} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%q: want a duration (24h), a date (2026-11-23) or an RFC 3339 time", s)
}
