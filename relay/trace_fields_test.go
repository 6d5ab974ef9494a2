package relay

import (
	"context"
	"testing"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/relaytest"
	"github.com/siterelay/siterelay/relay/trace"
)

// The trace keeps the sender as the device gave it when
// senders.rewrite_from replaces it, and the listener; a search by the
// device's own address finds the delivery too.
func TestTraceSenderAsReceivedAndListener(t *testing.T) {
	dir := relaytest.StateDir(t)
	cfg := config.Default()
	cfg.Senders.RewriteFrom = "relay@example.com"
	r, addr := run(t, cfg, dir)
	if err := send(t, addr, "MFP-3F@printer.local", []string{"ops@example.com"}, "Subject: scan 9\r\n\r\npage\r\n"); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var got []trace.Event
	relaytest.Eventually(t, "received and delivered in the trace", func() bool {
		got, _ = r.Trace().Query(ctx, trace.Filter{Sender: "mfp-3f@printer.local"})
		return len(got) == 2
	})
	rcv, dlv := got[1], got[0]
	if rcv.Kind != trace.Received || rcv.From != "relay@example.com" || rcv.FromReceived != "MFP-3F@printer.local" || rcv.Listener != cfg.Listeners[0].Name {
		t.Errorf("received event: %+v", rcv)
	}
	if dlv.Kind != trace.Delivered || dlv.From != "relay@example.com" || dlv.QueueID != rcv.QueueID {
		t.Errorf("delivered event: %+v", dlv)
	}
	if got, _ := r.Trace().Query(ctx, trace.Filter{Device: cfg.Listeners[0].Name, Kind: trace.Delivered}); len(got) != 1 {
		t.Errorf("by listener: %d delivered events, want 1", len(got))
	}
}
