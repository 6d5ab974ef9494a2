package relaytest

import (
	"fmt"
	"net"
	"testing"

	"github.com/emersion/go-smtp"
)

// DialFrom connects an SMTP client to addr from the loopback address
// local (127.0.0.2 and so on: how tests play several devices on one
// machine). A system that cannot bind local skips the test.
func DialFrom(t testing.TB, local net.IP, addr string) *smtp.Client {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: local}}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Skipf("cannot dial from %s: %v", local, err)
	}
	return smtp.NewClient(conn)
}

// SendFrom sends one message to addr as a device at local would: HELO
// helo, from boiler@plant.example to ops@example.com, with subject; it
// returns the first error (a refusal is an *smtp.SMTPError).
func SendFrom(t testing.TB, local net.IP, addr, helo, subject string) error {
	t.Helper()
	c := DialFrom(t, local, addr)
	defer c.Close()
	if err := c.Hello(helo); err != nil {
		return err
	}
	if err := c.Mail("boiler@plant.example", nil); err != nil {
		return err
	}
	if err := c.Rcpt("ops@example.com", nil); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "Subject: %s\r\n\r\npressure\r\n", subject)
	if err := w.Close(); err != nil {
		return err
	}
	return c.Quit()
}
