package message

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// A go-smtp server on loopback whose Data calls Prepare: the smuggling
// payloads go through go-smtp's real DATA reader, then Prepare. (The
// relay's own front end reads DATA itself, so that Prepare sees every byte;
// relay/inbound tests that path with the same payloads.)
type backend struct {
	mu   sync.Mutex
	msgs []string
	opts Options
}

func (b *backend) NewSession(*smtp.Conn) (smtp.Session, error) { return &session{b: b}, nil }

type session struct{ b *backend }

func (s *session) Mail(string, *smtp.MailOptions) error { return nil }
func (s *session) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *session) Reset()                               {}
func (s *session) Logout() error                        { return nil }
func (s *session) Data(r io.Reader) error {
	var out bytes.Buffer
	_, err := Prepare(&out, r, s.b.opts)
	if se, ok := Reply(err); ok {
		return se
	}
	if err != nil {
		return err
	}
	s.b.mu.Lock()
	s.b.msgs = append(s.b.msgs, out.String())
	s.b.mu.Unlock()
	return nil
}

func startServer(t *testing.T, opts Options) (*backend, string) {
	t.Helper()
	be := &backend{opts: opts}
	srv := smtp.NewServer(be)
	srv.Domain = "relay.test"
	srv.AllowInsecureAuth = true
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return be, ln.Addr().String()
}

// dialogue sends raw lines (pipelined as a smuggler would) and returns the
// server's replies.
func dialogue(t *testing.T, addr, data string) []string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "EHLO printer\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n%s\r\n.\r\nQUIT\r\n", data)
	var replies []string
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		if l := sc.Text(); len(l) > 3 && l[3] == ' ' {
			replies = append(replies, l[:3])
		}
	}
	return replies
}

func TestSmugglingThroughGoSMTP(t *testing.T) {
	const smuggled = "MAIL FROM:<admin@d.example>\r\nRCPT TO:<victim@d.example>\r\nDATA\r\nFrom: admin@d.example\r\n\r\nsmuggled"
	for _, eod := range smuggling {
		t.Run(strings.NewReplacer("\r", `\r`, "\n", `\n`).Replace(eod), func(t *testing.T) {
			be, addr := startServer(t, Options{})
			replies := dialogue(t, addr, "Subject: s\r\n\r\nbody"+eod+smuggled)
			if got, want := strings.Join(replies, " "), "220 250 250 250 354 250 221"; got != want {
				t.Errorf("replies %s, want %s (one message)", got, want)
			}
			if len(be.msgs) != 1 {
				t.Fatalf("%d messages", len(be.msgs))
			}
			m := be.msgs[0]
			if !onlyCRLF(m) || !strings.Contains(m, "MAIL FROM:<admin@d.example>\r\n") {
				t.Errorf("message %q", m)
			}
		})
	}
}

func TestRefuseThroughGoSMTP(t *testing.T) {
	be, addr := startServer(t, Options{BareLineEndings: Refuse})
	replies := dialogue(t, addr, "Subject: s\r\n\r\nbody\n.\nmore\r\n"+strings.Repeat("filler\r\n", 20000))
	// 550 for the message, then QUIT is read as a command: the session
	// stayed in step.
	if got, want := strings.Join(replies, " "), "220 250 250 250 354 550 221"; got != want {
		t.Errorf("replies %s, want %s", got, want)
	}
	if len(be.msgs) != 0 {
		t.Errorf("%d messages stored", len(be.msgs))
	}
}
