package forward

import (
	"context"
	"fmt"
)

// Probe connects to t's collector (and for TLS completes the handshake,
// verifying its certificate as the forwarder would) and hangs up, sending
// nothing: relayd doctor's check that the collector is reachable.
func Probe(ctx context.Context, t *Target) error {
	c, err := dial(ctx, t)
	if err != nil {
		return fmt.Errorf("connecting to %s: %w", t.Address, err)
	}
	return c.Close()
}
