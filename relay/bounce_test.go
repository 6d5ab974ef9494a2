package relay

import (
	"context"
	"strings"
	"testing"

	"github.com/siterelay/siterelay/relay/relaytest"
	"github.com/siterelay/siterelay/relay/trace"
	"github.com/siterelay/siterelay/relay/upstream/upstreamtest"
)

// A bounce that fails for good gets no bounce of its own, and the trace
// says so: failed, not bounced (docs/trace.md).
func TestFailedBounceTracedAsFailed(t *testing.T) {
	fake := upstreamtest.NewFakeServer(t, upstreamtest.FakeOptions{TLS: "none"})
	fake.RefuseRcpt("gone@example.com", upstreamtest.Reply(550, "5.1.10", "RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"))
	fake.RefuseRcpt("mfp2@plant.example", upstreamtest.Reply(550, "5.1.10", "RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"))
	r, addr := run(t, smarthostConfig(fake), relaytest.StateDir(t))
	if err := send(t, addr, "mfp2@plant.example", []string{"gone@example.com"}, "Subject: scan 8\r\n\r\npages\r\n"); err != nil {
		t.Fatal(err)
	}
	fake.WaitMessages(t, 1) // the bounce's copy to the admin
	relaytest.Eventually(t, "queue empty", func() bool { return r.Spool().Stats().Messages == 0 })
	r.Trace().Flush(context.Background())
	bounced, _ := r.Trace().Query(context.Background(), trace.Filter{Kind: trace.Bounced})
	failed, _ := r.Trace().Query(context.Background(), trace.Filter{Kind: trace.Failed})
	if len(bounced) != 1 || bounced[0].To[0] != "gone@example.com" {
		t.Errorf("bounced events %+v, want only the original message's", bounced)
	}
	if len(failed) != 1 || failed[0].To[0] != "mfp2@plant.example" || !strings.Contains(failed[0].Reply, "5.1.10") {
		t.Errorf("failed events %+v, want the bounce to mfp2@plant.example", failed)
	}
}
