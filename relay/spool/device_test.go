package spool

import (
	"testing"
	"time"

	"github.com/siterelay/siterelay/relay/relaytest"
)

// The device, its class and the sender the device gave survive a restart
// (the scheduler rebuilds its per-device queues from them), and a record
// without them (written before devices existed) still reads.
func TestEnvelopeDeviceSurvivesReopen(t *testing.T) {
	dir := relaytest.StateDir(t)
	s := open(t, dir, Options{})
	m := s.NewMessage()
	m.Write([]byte("Subject: x\r\n\r\nx\r\n"))
	env := Envelope{From: "relay@contoso.com", FromReceived: "root@localhost", Device: "scada-boiler", Class: "alarm",
		Received: time.Unix(1700000000, 0).UTC(), To: []Rcpt{{Addr: "ops@contoso.com"}}}
	id, err := m.Commit(env)
	if err != nil {
		t.Fatal(err)
	}
	old := put(t, s, []byte("Subject: y\r\n\r\ny\r\n"), "a@x.example")
	s.Close()
	s = open(t, dir, Options{})
	info, ok := s.Get(id)
	if !ok {
		t.Fatal("message lost")
	}
	got := [3]string{info.Envelope.Device, info.Envelope.Class, info.Envelope.FromReceived}
	if want := [3]string{"scada-boiler", "alarm", "root@localhost"}; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	info, ok = s.Get(old)
	if !ok || info.Envelope.Device != "" || info.Envelope.From != "printer@plant.example" {
		t.Errorf("record without device: %+v, %v", info.Envelope, ok)
	}
}
