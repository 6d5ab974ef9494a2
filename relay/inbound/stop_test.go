package inbound

import (
	"context"
	"net"
	"testing"
	"time"
)

// StopAccepting (a listener handing its port over on reload) closes the
// socket but lets every session go on, an idle one included, until it
// ends by itself; Wait sees it end.
func TestStopAcceptingLetsSessionsFinish(t *testing.T) {
	f, srv := startServer(t, nil)
	idle := dialRaw(t, f.addr)
	idle.cmd("EHLO idle", "250")
	srv.StopAccepting()
	if c, err := net.DialTimeout("tcp", f.addr, time.Second); err == nil {
		c.Close()
		t.Error("still accepting after StopAccepting")
	}
	idle.cmd("NOOP", "250") // not told to go
	idle.cmd("MAIL FROM:<p@plant.example>", "250")
	idle.cmd("RCPT TO:<a@example.com>", "250")
	idle.cmd("DATA", "354")
	idle.cmd("Subject: after\r\n\r\nx\r\n.", "250")
	idle.cmd("QUIT", "221")
	if err := srv.Wait(context.Background()); err != nil {
		t.Errorf("Wait: %v", err)
	}
}
