package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeSink is a minimal SMTP server in the sink's place: it counts
// messages and records each session's TLS state as the front left it.
type fakeSink struct {
	l     net.Listener
	mu    sync.Mutex
	msgs  int
	helos []string
	rcpts []string // every RCPT TO command, in order
}

func startFakeSink(t *testing.T) *fakeSink {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &fakeSink{l: l}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go s.serve(c)
		}
	}()
	return s
}

func (s *fakeSink) serve(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	fmt.Fprint(c, "220 sink\r\n")
	inData := false
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		if inData {
			if line == ".\r\n" {
				inData = false
				s.mu.Lock()
				s.msgs++
				s.mu.Unlock()
				fmt.Fprint(c, "250 ok\r\n")
			}
			continue
		}
		verb := strings.ToUpper(strings.Fields(line + " x")[0])
		switch verb {
		case "EHLO":
			s.mu.Lock()
			s.helos = append(s.helos, strings.TrimSpace(line))
			s.mu.Unlock()
			fmt.Fprint(c, "250-sink\r\n250 8BITMIME\r\n")
		case "DATA":
			inData = true
			fmt.Fprint(c, "354 go\r\n")
		case "QUIT":
			fmt.Fprint(c, "221 bye\r\n")
			return
		case "RCPT":
			s.mu.Lock()
			s.rcpts = append(s.rcpts, strings.TrimSpace(line))
			s.mu.Unlock()
			fmt.Fprint(c, "250 ok\r\n")
		default:
			fmt.Fprint(c, "250 ok\r\n")
		}
	}
}

// The load generator's STARTTLS (each version) through the front reaches
// the sink: every message counted, the second EHLO (after the handshake)
// is the first the sink sees, and the front refuses mail before STARTTLS.
func TestTLSFront(t *testing.T) {
	p, err := makePKI(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"1.2", "1.3"} {
		t.Run(v, func(t *testing.T) {
			sk := startFakeSink(t)
			f, err := startTLSFront(sk.l.Addr().String(), p)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Stop()
			const n, c = 20, 1 // one session: exactly n/4 connections
			lr, err := runLoad(context.Background(), loadOptions{Addr: f.Addr(), N: n, C: c, Size: 1024, PerConn: 4,
				Deadline: time.Now().Add(time.Minute), ClientTLS: v, RootCAs: p.Pool, SessionCache: tls.NewLRUClientSessionCache(8)})
			if err != nil {
				t.Fatal(err)
			}
			sk.mu.Lock()
			defer sk.mu.Unlock()
			if lr.Accepted != n || sk.msgs != n {
				t.Errorf("accepted %d, the sink counted %d, want %d", lr.Accepted, sk.msgs, n)
			}
			// 20 messages, 4 a connection: 5 connections, one EHLO each
			// at the sink (the first EHLO is the front's).
			if got, want := len(sk.helos), n/4; got != want {
				t.Errorf("the sink saw %d EHLOs, want %d (one a connection, after STARTTLS)", got, want)
			}
		})
	}
	t.Run("no STARTTLS", func(t *testing.T) {
		sk := startFakeSink(t)
		f, err := startTLSFront(sk.l.Addr().String(), p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Stop()
		_, err = runLoad(context.Background(), loadOptions{Addr: f.Addr(), N: 1, C: 1, Size: 1024, Deadline: time.Now().Add(time.Minute)})
		if err == nil || !strings.Contains(err.Error(), "530") {
			t.Errorf("got %v, want the front's 530 for MAIL before STARTTLS", err)
		}
	})
}

func TestConditionNames(t *testing.T) {
	tests := []struct {
		c    condition
		want string
	}{
		{condition{}, "in plain, out plain"},
		{condition{ClientTLS: "1.3", UpstreamTLS: true, UpstreamKind: "smtp"}, "in TLS1.3, out TLS"},
		{condition{ClientTLS: "1.2", UpstreamTLS: true, UpstreamKind: "m365-connector"}, "in TLS1.2, out TLS, relayd m365-connector"},
	}
	for _, tt := range tests {
		if got := tt.c.String(); got != tt.want {
			t.Errorf("%+v: got %q, want %q", tt.c, got, tt.want)
		}
	}
}
