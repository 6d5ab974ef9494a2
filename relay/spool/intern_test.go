package spool

import (
	"strings"
	"testing"
	"unsafe"
)

// Envelopes that repeat share their strings, as committed and as
// recovered: a long queue then holds each address and reply once.
func TestEnvelopeStringsShared(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{})
	// Each message's strings are allocations of their own, as the SMTP
	// session's parsed lines are.
	fresh := func(v string) string { return strings.Clone(v) }
	var ids []string
	for range 2 {
		m := s.NewMessage()
		if _, err := m.Write([]byte("Subject: x\r\n\r\nbody\r\n")); err != nil {
			t.Fatal(err)
		}
		id, err := m.Commit(Envelope{From: fresh("printer@plant.example"), ClientIP: fresh("10.0.0.7"), Device: fresh("mfp-1"),
			To: []Rcpt{{Addr: fresh("ops@example.com")}, {Addr: fresh("qa@example.com")}}})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Update(id, 1, Pending, fresh("451 4.7.500 Server busy")); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	check := func(when string, s *Spool) {
		t.Helper()
		s.mu.Lock()
		defer s.mu.Unlock()
		a, b := s.entries[ids[0]].env, s.entries[ids[1]].env
		pairs := []struct {
			name string
			x, y string
		}{
			{"From", a.From, b.From},
			{"ClientIP", a.ClientIP, b.ClientIP},
			{"Device", a.Device, b.Device},
			{"To[0].Addr", a.To[0].Addr, b.To[0].Addr},
			{"To[1].Addr", a.To[1].Addr, b.To[1].Addr},
			{"To[1].Reply", a.To[1].Reply, b.To[1].Reply},
		}
		for _, p := range pairs {
			if p.x != p.y {
				t.Errorf("%s: %s %q and %q, want equal", when, p.name, p.x, p.y)
				continue
			}
			if got, want := unsafe.StringData(p.y), unsafe.StringData(p.x); got != want {
				t.Errorf("%s: %s kept twice, want one shared copy", when, p.name)
			}
		}
		if got, want := a.To[1].Reply, "451 4.7.500 Server busy"; got != want {
			t.Errorf("%s: reply %q, want %q", when, got, want)
		}
	}
	check("committed", s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	check("recovered", open(t, dir, Options{}))
}
