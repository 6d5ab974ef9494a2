package smarthost

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/siterelay/siterelay/relay/upstream"
	"github.com/siterelay/siterelay/relay/upstream/upstreamtest"
)

func message(id, from string, to []string, body string) *upstream.Message {
	return &upstream.Message{QueueID: id, From: from, To: to, Size: int64(len(body)), Body: strings.NewReader(body)}
}

const body1 = "From: a@example.com\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nhello\r\n"

// setup starts a fake and an Upstream pointed at it; mod adjusts the
// client's options after the defaults for the fake are set.
func setup(t *testing.T, fo upstreamtest.FakeOptions, mod func(*Options)) (*upstreamtest.FakeServer, *Upstream) {
	t.Helper()
	f := upstreamtest.NewFakeServer(t, fo)
	o := Options{Addr: f.Addr, TLS: fo.TLS, RootCAs: f.CA.Pool, ServerName: "localhost",
		CommandTimeout: 10 * time.Second, DataTimeout: 10 * time.Second, DialTimeout: 10 * time.Second}
	if mod != nil {
		mod(&o)
	}
	u, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	return f, u
}

func deliver(t *testing.T, u *Upstream, msg *upstream.Message) ([]upstream.RcptResult, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return u.Deliver(ctx, msg)
}

func mustDeliver(t *testing.T, u *Upstream, msg *upstream.Message) {
	t.Helper()
	res, err := deliver(t, u, msg)
	if err != nil {
		t.Fatalf("Deliver: %v", err)
	}
	for _, r := range res {
		if r.Err != nil {
			t.Fatalf("recipient %s: %v", r.Rcpt, r.Err)
		}
	}
	if len(res) != len(msg.To) {
		t.Fatalf("got %d results for %d recipients", len(res), len(msg.To))
	}
}

func TestTLSModes(t *testing.T) {
	for _, mode := range []string{"starttls", "implicit", "none"} {
		t.Run(mode, func(t *testing.T) {
			f, u := setup(t, upstreamtest.FakeOptions{TLS: mode}, nil)
			mustDeliver(t, u, message("q1", "a@example.com", []string{"b@example.com"}, body1))
			got := f.WaitMessages(t, 1)[0]
			if got.From != "a@example.com" || len(got.To) != 1 || got.To[0] != "b@example.com" {
				t.Errorf("envelope: got %q -> %q", got.From, got.To)
			}
			if string(got.Data) != body1 {
				t.Errorf("data: got %q, want %q", got.Data, body1)
			}
			if want := mode != "none"; got.TLS != want {
				t.Errorf("TLS: got %v, want %v", got.TLS, want)
			}
			if mode != "none" && f.Stats().TLSVersion < tls.VersionTLS12 {
				t.Errorf("TLS version %x", f.Stats().TLSVersion)
			}
			if got.Opts.Size != int64(len(body1)) {
				t.Errorf("SIZE=: got %d, want %d", got.Opts.Size, len(body1))
			}
		})
	}
}

func TestTLSFailures(t *testing.T) {
	otherCA := upstreamtest.NewTestCA(t)
	tests := []struct {
		name string
		fo   upstreamtest.FakeOptions
		mod  func(*Options)
		want string
	}{
		{"starttls not offered", upstreamtest.FakeOptions{TLS: "none"}, func(o *Options) { o.TLS = "starttls" }, "does not offer STARTTLS"},
		{"wrong CA", upstreamtest.FakeOptions{}, func(o *Options) { o.RootCAs = otherCA.Pool }, "certificate signed by unknown authority"},
		{"wrong CA implicit", upstreamtest.FakeOptions{TLS: "implicit"}, func(o *Options) { o.RootCAs = otherCA.Pool }, "certificate signed by unknown authority"},
		{"wrong name", upstreamtest.FakeOptions{}, func(o *Options) { o.ServerName = "smtp.example.net" }, "not smtp.example.net"},
		{"old TLS only", upstreamtest.FakeOptions{MaxTLS: tls.VersionTLS11}, nil, "protocol version"},
		{"client cert required", upstreamtest.FakeOptions{TLS: "implicit", RequireClientCert: true}, nil, "certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, u := setup(t, tt.fo, tt.mod)
			_, err := deliver(t, u, message("q1", "a@example.com", []string{"b@example.com"}, body1))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error containing %q", err, tt.want)
			}
			if upstream.IsPermanent(err) {
				t.Errorf("TLS failure is permanent: %v", err)
			}
			if n := f.Count(); n != 0 {
				t.Errorf("fake received %d messages", n)
			}
		})
	}
}

func TestClientCertificate(t *testing.T) {
	ca := upstreamtest.NewTestCA(t)
	cert := ca.ClientCert(t, "relay.contoso.com")
	for _, mode := range []string{"starttls", "implicit"} {
		t.Run(mode, func(t *testing.T) {
			f, u := setup(t, upstreamtest.FakeOptions{TLS: mode, CA: ca, RequireClientCert: true},
				func(o *Options) { o.ClientCertificate = &cert })
			mustDeliver(t, u, message("q1", "a@contoso.com", []string{"b@example.com"}, body1))
			if got := f.WaitMessages(t, 1)[0].ClientCN; got != "relay.contoso.com" {
				t.Errorf("client CN: got %q", got)
			}
		})
	}
}

func TestCAFile(t *testing.T) {
	ca := upstreamtest.NewTestCA(t)
	f, u := setup(t, upstreamtest.FakeOptions{CA: ca}, func(o *Options) { o.RootCAs = nil; o.CAFile = ca.WriteFile(t) })
	mustDeliver(t, u, message("q1", "a@example.com", []string{"b@example.com"}, body1))
	f.WaitMessages(t, 1)
}

type staticToken string

func (s staticToken) Token(context.Context) (string, error) { return string(s), nil }

type failingToken struct{ err error }

func (s failingToken) Token(context.Context) (string, error) { return "", s.err }

const (
	goodPassword = "correct-horse-battery-staple"
	badPassword  = "hunter2-wrong-secret"
	goodToken    = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.good-token"
	badToken     = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.bad-token"
)

func checkAuth(mech, user, secret string) error {
	if user != "dev@contoso.com" {
		return errors.New("unknown user")
	}
	switch mech {
	case "XOAUTH2":
		if secret != goodToken {
			return upstreamtest.Reply(535, "5.7.3", "Authentication unsuccessful")
		}
	default:
		if secret != goodPassword {
			return upstreamtest.Reply(535, "5.7.3", "Authentication unsuccessful")
		}
	}
	return nil
}

func TestAuth(t *testing.T) {
	tests := []struct {
		name      string
		auth      Auth
		challenge bool
		wantErr   string
	}{
		{"plain", Auth{Mechanism: "plain", Username: "dev@contoso.com", Password: goodPassword}, false, ""},
		{"login", Auth{Mechanism: "login", Username: "dev@contoso.com", Password: goodPassword}, false, ""},
		{"xoauth2", Auth{Mechanism: "xoauth2", Username: "dev@contoso.com", TokenSource: staticToken(goodToken)}, false, ""},
		{"plain refused", Auth{Mechanism: "plain", Username: "dev@contoso.com", Password: badPassword}, false, "535 5.7.3 Authentication unsuccessful"},
		{"login refused", Auth{Mechanism: "LOGIN", Username: "dev@contoso.com", Password: badPassword}, false, "535 5.7.3 Authentication unsuccessful"},
		{"xoauth2 refused", Auth{Mechanism: "xoauth2", Username: "dev@contoso.com", TokenSource: staticToken(badToken)}, false, "535 5.7.3 Authentication unsuccessful"},
		{"xoauth2 refused with challenge", Auth{Mechanism: "xoauth2", Username: "dev@contoso.com", TokenSource: staticToken(badToken)}, true, "535 5.7.3 Authentication unsuccessful"},
		{"unknown user", Auth{Mechanism: "plain", Username: "x@contoso.com", Password: goodPassword}, false, "535 5.7.8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs bytes.Buffer
			f, u := setup(t, upstreamtest.FakeOptions{AuthMechanisms: []string{"PLAIN", "LOGIN", "XOAUTH2"},
				RequireAuth: true, CheckAuth: checkAuth, XOAUTH2Challenge: tt.challenge}, func(o *Options) {
				o.Auth = tt.auth
				o.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
			})
			_, err := deliver(t, u, message("q1", "dev@contoso.com", []string{"b@example.com"}, body1))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if got := f.WaitMessages(t, 1)[0].User; got != "dev@contoso.com" {
					t.Errorf("user: got %q", got)
				}
				if f.Stats().Logins != 1 {
					t.Errorf("logins: got %d", f.Stats().Logins)
				}
			} else {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %v, want %q", err, tt.wantErr)
				}
				ue := upstream.Classify(err)
				if ue.Reply == nil || ue.Reply.Code != 535 {
					t.Errorf("reply not carried: %#v", ue)
				}
				if ue.Permanent {
					t.Errorf("auth refusal is permanent")
				}
				if !strings.Contains(err.Error(), "dev@contoso.com") && tt.name != "unknown user" {
					t.Errorf("error does not name the user: %v", err)
				}
			}
			all := logs.String()
			if err != nil {
				all += err.Error()
			}
			for _, secret := range []string{goodPassword, badPassword, goodToken, badToken} {
				for _, form := range []string{secret, base64.StdEncoding.EncodeToString([]byte(secret)),
					base64.StdEncoding.EncodeToString([]byte("\x00dev@contoso.com\x00" + secret)),
					upstreamtest.EncodeXOAUTH2("dev@contoso.com", secret)} {
					if strings.Contains(all, form) {
						t.Errorf("secret %q appears in errors or logs: %s", secret, all)
					}
				}
			}
		})
	}
}

func TestAuthNotOffered(t *testing.T) {
	_, u := setup(t, upstreamtest.FakeOptions{AuthMechanisms: []string{"PLAIN"}}, func(o *Options) {
		o.Auth = Auth{Mechanism: "xoauth2", Username: "dev@contoso.com", TokenSource: staticToken(goodToken)}
	})
	_, err := deliver(t, u, message("q1", "a@example.com", []string{"b@example.com"}, body1))
	if err == nil || !strings.Contains(err.Error(), "does not offer AUTH XOAUTH2") || upstream.IsPermanent(err) {
		t.Fatalf("got %v", err)
	}
}

func TestTokenSourceError(t *testing.T) {
	perm := &upstream.Error{Permanent: true, Hint: "fix the app", Err: errors.New("AADSTS7000215 invalid client secret")}
	tests := []struct {
		name     string
		err      error
		wantPerm bool
	}{
		{"temporary", errors.New("token endpoint unreachable"), false},
		{"permanent", perm, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, u := setup(t, upstreamtest.FakeOptions{AuthMechanisms: []string{"XOAUTH2"}}, func(o *Options) {
				o.Auth = Auth{Mechanism: "xoauth2", Username: "dev@contoso.com", TokenSource: failingToken{tt.err}}
			})
			_, err := deliver(t, u, message("q1", "a@example.com", []string{"b@example.com"}, body1))
			if err == nil || !strings.Contains(err.Error(), tt.err.Error()) {
				t.Fatalf("got %v", err)
			}
			if got := upstream.IsPermanent(err); got != tt.wantPerm {
				t.Errorf("permanent: got %v, want %v", got, tt.wantPerm)
			}
			if tt.wantPerm && upstream.Classify(err).Hint != "fix the app" {
				t.Errorf("hint lost: %#v", upstream.Classify(err))
			}
		})
	}
}

func TestRecipientResults(t *testing.T) {
	for _, pipe := range []bool{true, false} {
		t.Run(fmt.Sprintf("pipelining=%v", pipe), func(t *testing.T) {
			f, u := setup(t, upstreamtest.FakeOptions{TLS: "none", NoPipelining: !pipe}, nil)
			f.RefuseRcpt("gone@example.com", upstreamtest.Reply(550, "5.1.1", "no such user"))
			f.RefuseRcpt("full@example.com", upstreamtest.Reply(452, "4.2.2", "mailbox full"))
			to := []string{"ok1@example.com", "gone@example.com", "full@example.com", "ok2@example.com"}
			res, err := deliver(t, u, message("q1", "a@example.com", to, body1))
			if err != nil {
				t.Fatal(err)
			}
			want := []struct {
				ok, perm bool
				status   string
			}{{true, false, ""}, {false, true, "550 5.1.1 no such user"}, {false, false, "452 4.2.2 mailbox full"}, {true, false, ""}}
			for i, w := range want {
				r := res[i]
				if r.Rcpt != to[i] || (r.Err == nil) != w.ok || upstream.IsPermanent(r.Err) != w.perm ||
					(!w.ok && upstream.Classify(r.Err).Reply == nil) || (!w.ok && !strings.Contains(r.Err.Error(), w.status)) {
					t.Errorf("result %d: got %+v, want %+v", i, r, w)
				}
			}
			got := f.WaitMessages(t, 1)[0]
			if strings.Join(got.To, ",") != "ok1@example.com,ok2@example.com" {
				t.Errorf("delivered to %v", got.To)
			}
		})
	}
}

// TestReplies covers refusals at each stage and checks that a connection
// that is still in step is reused afterwards.
func TestReplies(t *testing.T) {
	r550 := upstreamtest.Reply(550, "5.7.1", "refused")
	r451 := upstreamtest.Reply(451, "4.7.500", "Server busy, try again later")
	r554 := upstreamtest.Reply(554, "5.6.0", "content refused")
	tests := []struct {
		name     string
		rule     upstreamtest.Rule
		wantErr  string // whole-call error
		rcptErr  string // else every recipient's error
		wantPerm bool
	}{
		{"MAIL 5xx", upstreamtest.Rule{Stage: "mail", Times: 1, Reply: r550}, "550 5.7.1 refused", "", true},
		{"MAIL 4xx", upstreamtest.Rule{Stage: "mail", Times: 1, Reply: r451}, "451 4.7.500 Server busy", "", false},
		{"RCPT 5xx", upstreamtest.Rule{Stage: "rcpt", Times: 2, Reply: r550}, "", "550 5.7.1 refused", true},
		{"RCPT 4xx", upstreamtest.Rule{Stage: "rcpt", Times: 2, Reply: r451}, "", "451 4.7.500", false},
		{"DATA 5xx", upstreamtest.Rule{Stage: "data", Times: 1, Reply: r554}, "554 5.6.0 content refused", "", true},
		{"DATA 4xx", upstreamtest.Rule{Stage: "data", Times: 1, Reply: r451}, "451 4.7.500", "", false},
		{"closing 421", upstreamtest.Rule{Stage: "mail", Times: 1, Reply: upstreamtest.Reply(421, "4.3.2", "sender thread limit exceeded")}, "421 4.3.2", "", false},
	}
	for _, tt := range tests {
		for _, pipe := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/pipelining=%v", tt.name, pipe), func(t *testing.T) {
				f, u := setup(t, upstreamtest.FakeOptions{TLS: "none", NoPipelining: !pipe}, nil)
				f.Script(tt.rule)
				to := []string{"b@example.com", "c@example.com"}
				res, err := deliver(t, u, message("q1", "a@example.com", to, body1))
				switch {
				case tt.wantErr != "":
					if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
						t.Fatalf("got %v, %v; want error %q", res, err, tt.wantErr)
					}
					if upstream.IsPermanent(err) != tt.wantPerm || upstream.Classify(err).Reply == nil {
						t.Errorf("classified %#v", upstream.Classify(err))
					}
				default:
					if err != nil || len(res) != 2 {
						t.Fatalf("got %v, %v", res, err)
					}
					for _, r := range res {
						if r.Err == nil || !strings.Contains(r.Err.Error(), tt.rcptErr) || upstream.IsPermanent(r.Err) != tt.wantPerm {
							t.Errorf("result %+v", r)
						}
					}
				}
				if f.Count() != 0 {
					t.Errorf("a refused message arrived")
				}
				// The next message goes through (on the same connection
				// unless the server said 421).
				mustDeliver(t, u, message("q2", "a@example.com", to, body1))
				f.WaitMessages(t, 1)
				wantConns := 1
				if strings.HasPrefix(tt.wantErr, "421") {
					wantConns = 2
				}
				if got := f.Stats().Connections; got != wantConns {
					t.Errorf("connections: got %d, want %d", got, wantConns)
				}
			})
		}
	}
}

func TestDropMidData(t *testing.T) {
	f, u := setup(t, upstreamtest.FakeOptions{}, nil)
	f.DropNextData(1)
	body := strings.Repeat("line of text to fill the data stream\r\n", 2000)
	_, err := deliver(t, u, message("q1", "a@example.com", []string{"b@example.com"}, body))
	if err == nil || upstream.IsPermanent(err) || upstream.Classify(err).Reply != nil {
		t.Fatalf("got %v (%#v)", err, upstream.Classify(err))
	}
	mustDeliver(t, u, message("q2", "a@example.com", []string{"b@example.com"}, body))
	if got := f.WaitMessages(t, 1); len(got) != 1 || string(got[0].Data) != body {
		t.Errorf("got %d messages", len(got))
	}
	if f.Stats().Connections != 2 {
		t.Errorf("connections: got %d, want 2", f.Stats().Connections)
	}
}

func TestTimeout(t *testing.T) {
	for _, stage := range []string{"mail", "data"} {
		t.Run(stage, func(t *testing.T) {
			f, u := setup(t, upstreamtest.FakeOptions{}, func(o *Options) {
				o.CommandTimeout = 200 * time.Millisecond
				o.DataTimeout = 200 * time.Millisecond
			})
			f.Script(upstreamtest.Rule{Stage: stage, Times: 1, Delay: time.Minute})
			_, err := deliver(t, u, message("q1", "a@example.com", []string{"b@example.com"}, body1))
			if err == nil || !strings.Contains(err.Error(), "timeout") || upstream.IsPermanent(err) {
				t.Fatalf("got %v", err)
			}
		})
	}
}

func TestContextCancel(t *testing.T) {
	f, u := setup(t, upstreamtest.FakeOptions{}, nil)
	f.Script(upstreamtest.Rule{Stage: "mail", Times: 1, Delay: time.Minute})
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		// Cancel once the server holds the connection.
		for f.Stats().Open == 0 {
			time.Sleep(time.Millisecond)
		}
		cancel()
	}()
	_, err := u.Deliver(ctx, message("q1", "a@example.com", []string{"b@example.com"}, body1))
	if !errors.Is(err, context.Canceled) || upstream.IsPermanent(err) {
		t.Fatalf("got %v", err)
	}
}

func TestReuse(t *testing.T) {
	tests := []struct {
		perConn, n, wantConns int
	}{{100, 10, 1}, {3, 10, 4}, {1, 3, 3}}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.perConn), func(t *testing.T) {
			f, u := setup(t, upstreamtest.FakeOptions{TLS: "none", AuthMechanisms: []string{"PLAIN"}, RequireAuth: true},
				func(o *Options) {
					o.MessagesPerConnection = tt.perConn
					o.Auth = Auth{Mechanism: "plain", Username: "u", Password: "p"}
				})
			for i := range tt.n {
				mustDeliver(t, u, message(fmt.Sprint(i), "a@example.com", []string{"b@example.com"}, body1))
			}
			f.WaitMessages(t, tt.n)
			if got := f.Stats().Connections; got != tt.wantConns {
				t.Errorf("connections: got %d, want %d", got, tt.wantConns)
			}
			if got := f.Stats().Logins; got != tt.wantConns {
				t.Errorf("logins: got %d, want %d", got, tt.wantConns)
			}
			if got, want := f.Stats().Resets, tt.n-tt.wantConns; got != want {
				t.Errorf("RSETs: got %d, want %d", got, want)
			}
			if tt.perConn < tt.n {
				// Connections that reached their quota were closed with QUIT.
				u.Close()
				f.WaitClosed(t)
			}
		})
	}
}

func TestIdleTimeout(t *testing.T) {
	var mu sync.Mutex
	now := time.Date(2026, 11, 2, 8, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	// The server is slow to answer QUIT: the stale session must have ended
	// before the next one starts, or the upstream sees two at once with
	// Concurrency 1 (Microsoft's limit of 3 a mailbox answers 432 4.3.2).
	f, u := setup(t, upstreamtest.FakeOptions{TLS: "none", SlowQuit: 200 * time.Millisecond},
		func(o *Options) { o.Clock = clock; o.IdleTimeout = time.Hour; o.Concurrency = 1 })
	mustDeliver(t, u, message("q1", "a@example.com", []string{"b@example.com"}, body1))
	mu.Lock()
	now = now.Add(2 * time.Hour)
	mu.Unlock()
	mustDeliver(t, u, message("q2", "a@example.com", []string{"b@example.com"}, body1))
	if got := f.Stats().Connections; got != 2 {
		t.Errorf("connections: got %d, want 2", got)
	}
	if got := f.Stats().PeakOpen; got != 1 {
		t.Errorf("sessions open at once: got %d, want 1 (Concurrency)", got)
	}
}

func TestStalePooledConnection(t *testing.T) {
	for _, pipe := range []bool{true, false} {
		t.Run(fmt.Sprintf("pipelining=%v", pipe), func(t *testing.T) {
			f, u := setup(t, upstreamtest.FakeOptions{TLS: "none", NoPipelining: !pipe}, nil)
			mustDeliver(t, u, message("q1", "a@example.com", []string{"b@example.com"}, body1))
			f.DropAll()
			f.WaitClosed(t)
			mustDeliver(t, u, message("q2", "a@example.com", []string{"b@example.com"}, body1))
			if got := f.Stats().Connections; got != 2 {
				t.Errorf("connections: got %d, want 2", got)
			}
		})
	}
}

func TestPipelining(t *testing.T) {
	to := []string{"b@example.com", "c@example.com", "d@example.com"}
	tests := []struct {
		name      string
		fo        upstreamtest.FakeOptions
		disable   bool
		wantBatch int
	}{
		// RSET + MAIL + 3 RCPT + DATA in one read on the reused connection.
		{"offered", upstreamtest.FakeOptions{TLS: "none"}, false, 6},
		{"offered implicit TLS", upstreamtest.FakeOptions{TLS: "implicit"}, false, 6},
		{"not offered", upstreamtest.FakeOptions{TLS: "none", NoPipelining: true}, false, 1},
		{"disabled", upstreamtest.FakeOptions{TLS: "none"}, true, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, u := setup(t, tt.fo, func(o *Options) { o.DisablePipelining = tt.disable })
			mustDeliver(t, u, message("q1", "a@example.com", to, body1))
			mustDeliver(t, u, message("q2", "a@example.com", to, body1))
			f.WaitMessages(t, 2)
			if got := f.Stats().MaxPipelined; got != tt.wantBatch {
				t.Errorf("most commands in one read: got %d, want %d", got, tt.wantBatch)
			}
		})
	}
}

// TestNoSmuggling sends bodies that try to end the data early; each must
// arrive as exactly one message holding every line.
func TestNoSmuggling(t *testing.T) {
	inject := "MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nSubject: smuggled\r\n\r\nowned\r\n"
	tests := []struct{ name, body, want string }{
		{"CRLF dot CRLF", "Subject: x\r\n\r\nhi\r\n.\r\n" + inject + ".\r\n", "Subject: x\r\n\r\nhi\r\n.\r\n" + inject + ".\r\n"},
		{"bare LF dot LF", "Subject: x\r\n\r\nhi\n.\n" + inject, "Subject: x\r\n\r\nhi\r\n.\r\n" + inject},
		{"LF dot CRLF", "Subject: x\r\n\r\nhi\n.\r\n" + inject, "Subject: x\r\n\r\nhi\r\n.\r\n" + inject},
		{"CR dot CR", "Subject: x\r\n\r\nhi\r.\r" + inject, "Subject: x\r\n\r\nhi\r\n.\r\n" + inject},
		{"CRLF dot LF", "Subject: x\r\n\r\nhi\r\n.\n" + inject, "Subject: x\r\n\r\nhi\r\n.\r\n" + inject},
		{"leading dots", "..\r\n.x\r\n.\r\n", "..\r\n.x\r\n.\r\n"},
		{"no final line ending", "Subject: x\r\n\r\nlast.", "Subject: x\r\n\r\nlast.\r\n"},
		{"ends in dot line", "Subject: x\r\n\r\n.", "Subject: x\r\n\r\n.\r\n"},
		{"empty", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, u := setup(t, upstreamtest.FakeOptions{TLS: "none"}, nil)
			mustDeliver(t, u, message("q1", "a@example.com", []string{"b@example.com"}, tt.body))
			mustDeliver(t, u, message("q2", "a@example.com", []string{"b@example.com"}, "Subject: after\r\n\r\nok\r\n"))
			got := f.WaitMessages(t, 2)
			if len(got) != 2 {
				t.Fatalf("got %d messages, want 2", len(got))
			}
			if string(got[0].Data) != tt.want {
				t.Errorf("data: got %q, want %q", got[0].Data, tt.want)
			}
			if got[0].From != "a@example.com" || got[1].From != "a@example.com" || got[1].To[0] != "b@example.com" {
				t.Errorf("envelopes: %+v", got)
			}
		})
	}
}

func TestBadAddresses(t *testing.T) {
	f, u := setup(t, upstreamtest.FakeOptions{TLS: "none"}, nil)
	_, err := deliver(t, u, message("q1", "a@example.com>\r\nRCPT TO:<x@evil", []string{"b@example.com"}, body1))
	if !upstream.IsPermanent(err) || !strings.Contains(err.Error(), "invalid sender") || upstream.Enhanced(err) != "5.1.7" {
		t.Errorf("bad sender: got %v", err)
	}
	res, err := deliver(t, u, message("q2", "a@example.com", []string{"b@example.com", "c@x\r\nDATA"}, body1))
	if err != nil || res[0].Err != nil || !upstream.IsPermanent(res[1].Err) || upstream.Enhanced(res[1].Err) != "5.1.3" {
		t.Errorf("bad recipient: got %+v, %v", res, err)
	}
	if got := f.WaitMessages(t, 1)[0].To; len(got) != 1 {
		t.Errorf("delivered to %v", got)
	}
}

func TestExtensions(t *testing.T) {
	tests := []struct {
		name     string
		fo       upstreamtest.FakeOptions
		utf8, eb bool
		wantErr  string
		wantBody smtp.BodyType
	}{
		{"utf8 offered", upstreamtest.FakeOptions{}, true, true, "", smtp.Body8BitMIME},
		{"8bit", upstreamtest.FakeOptions{}, false, true, "", smtp.Body8BitMIME},
		{"7bit", upstreamtest.FakeOptions{}, false, false, "", ""},
		{"utf8 not offered", upstreamtest.FakeOptions{NoSMTPUTF8: true}, true, false, "needs SMTPUTF8", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, u := setup(t, tt.fo, nil)
			msg := message("q1", "ålesund@example.com", []string{"b@example.com"}, "Subject: ø\r\n\r\nblåbær\r\n")
			msg.UTF8, msg.EightBit = tt.utf8, tt.eb
			_, err := deliver(t, u, msg)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !upstream.IsPermanent(err) {
					t.Fatalf("got %v", err)
				}
				if ue := upstream.Classify(err); ue.Reply == nil || ue.Reply.EnhancedCode != (smtp.EnhancedCode{5, 6, 7}) || ue.Hint == "" {
					t.Errorf("got reply %+v, hint %q; want 5.6.7 with a hint", ue.Reply, ue.Hint)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := f.WaitMessages(t, 1)[0]
			if got.Opts.UTF8 != tt.utf8 || got.Opts.Body != tt.wantBody {
				t.Errorf("got UTF8 %v BODY %q", got.Opts.UTF8, got.Opts.Body)
			}
		})
	}
}

func TestSizeLimits(t *testing.T) {
	big := strings.Repeat("x", 2000) + "\r\n"
	tests := []struct {
		name   string
		fo     upstreamtest.FakeOptions
		max    int64
		wantOK bool
	}{
		{"own limit", upstreamtest.FakeOptions{}, 1000, false},
		{"server SIZE", upstreamtest.FakeOptions{MaxSize: 1000}, 0, false},
		{"fits", upstreamtest.FakeOptions{MaxSize: 10000}, 10000, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, u := setup(t, tt.fo, func(o *Options) { o.MaxSize = tt.max })
			_, err := deliver(t, u, message("q1", "a@example.com", []string{"b@example.com"}, big))
			if tt.wantOK {
				if err != nil {
					t.Fatal(err)
				}
				f.WaitMessages(t, 1)
				return
			}
			if err == nil || !upstream.IsPermanent(err) || !strings.Contains(err.Error(), "5.3.4") {
				t.Fatalf("got %v", err)
			}
			// Either way (our limit or the server's reply) the trace gets
			// a reply code to show, and our own refusal says what to do.
			ue := upstream.Classify(err)
			if ue.Reply == nil || ue.Reply.Code != 552 {
				t.Errorf("reply: got %+v, want 552 5.3.4", ue.Reply)
			}
			if !strings.Contains(ue.Hint, "smaller attachments") {
				t.Errorf("hint: got %q, want advice", ue.Hint)
			}
		})
	}
	_, u := setup(t, upstreamtest.FakeOptions{}, func(o *Options) { o.MaxSize = 77; o.MaxRecipients = 5 })
	if got := u.Limits(); got.MaxSize != 77 || got.MaxRecipients != 5 || got.Concurrency != 4 {
		t.Errorf("limits: %+v", got)
	}
}

func TestMaxRecipients(t *testing.T) {
	f, u := setup(t, upstreamtest.FakeOptions{TLS: "none", MaxRecipients: 2}, func(o *Options) { o.MaxRecipients = 2 })
	f.RefuseRcpt("r3@example.com", upstreamtest.Reply(550, "5.1.1", "no such user"))
	var to []string
	for i := range 5 {
		to = append(to, fmt.Sprintf("r%d@example.com", i))
	}
	res, err := deliver(t, u, message("q1", "a@example.com", to, body1))
	if err != nil || len(res) != 5 {
		t.Fatalf("got %v, %v", res, err)
	}
	for i, r := range res {
		if r.Rcpt != to[i] || (r.Err != nil) != (i == 3) {
			t.Errorf("result %d: %+v", i, r)
		}
	}
	var got []string
	for _, m := range f.WaitMessages(t, 3) {
		if len(m.To) > 2 {
			t.Errorf("transaction with %d recipients", len(m.To))
		}
		got = append(got, m.To...)
	}
	if strings.Join(got, ",") != "r0@example.com,r1@example.com,r2@example.com,r4@example.com" {
		t.Errorf("delivered to %v", got)
	}
}

func TestConcurrency(t *testing.T) {
	f, u := setup(t, upstreamtest.FakeOptions{TLS: "none"}, func(o *Options) { o.Concurrency = 2 })
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := range 20 {
		wg.Go(func() {
			_, err := u.Deliver(context.Background(), message(fmt.Sprint(i), "a@example.com", []string{"b@example.com"}, body1))
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	f.WaitMessages(t, 20)
	if got := f.Stats().PeakOpen; got > 2 {
		t.Errorf("peak connections: got %d, want at most 2", got)
	}
}

func TestClose(t *testing.T) {
	f, u := setup(t, upstreamtest.FakeOptions{TLS: "none"}, nil)
	mustDeliver(t, u, message("q1", "a@example.com", []string{"b@example.com"}, body1))
	u.Close()
	f.WaitClosed(t)
	if _, err := deliver(t, u, message("q2", "a@example.com", []string{"b@example.com"}, body1)); err == nil || upstream.IsPermanent(err) {
		t.Errorf("Deliver after Close: %v", err)
	}
}

func TestConnectRefused(t *testing.T) {
	f := upstreamtest.NewFakeServer(t, upstreamtest.FakeOptions{})
	addr := f.Addr
	f.Close()
	u, err := New(Options{Addr: addr})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	_, err = deliver(t, u, message("q1", "a@example.com", []string{"b@example.com"}, body1))
	if err == nil || upstream.IsPermanent(err) || !strings.Contains(err.Error(), "connecting to") {
		t.Fatalf("got %v", err)
	}
}

func TestNewErrors(t *testing.T) {
	tests := []struct {
		name string
		o    Options
		want string
	}{
		{"no port", Options{Addr: "smtp.example.com"}, "not host:port"},
		{"empty host", Options{Addr: ":25"}, "not host:port"},
		{"tls mode", Options{Addr: "h:25", TLS: "ssl"}, "TLS mode"},
		{"min tls", Options{Addr: "h:25", MinTLS: 7}, "not a TLS version"},
		{"mechanism", Options{Addr: "h:25", Auth: Auth{Mechanism: "cram-md5"}}, "not one of plain"},
		{"plain without password", Options{Addr: "h:25", Auth: Auth{Mechanism: "plain", Username: "u"}}, "needs a username and a password"},
		{"xoauth2 without token", Options{Addr: "h:25", Auth: Auth{Mechanism: "xoauth2", Username: "u"}}, "token source"},
		{"negative", Options{Addr: "h:25", Concurrency: -1}, "negative"},
		{"local name", Options{Addr: "h:25", LocalName: "a b"}, "white space"},
		{"missing CA file", Options{Addr: "h:25", CAFile: "/nonexistent/ca.pem"}, "reading CA file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.o)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want %q", err, tt.want)
			}
		})
	}
	t.Run("CA file without certificates", func(t *testing.T) {
		p := t.TempDir() + "/empty.pem"
		if err := writeFile(p, "not a certificate"); err != nil {
			t.Fatal(err)
		}
		if _, err := New(Options{Addr: "h:25", CAFile: p}); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
			t.Fatalf("got %v", err)
		}
	})
}

func TestProbe(t *testing.T) {
	t.Run("ok", func(t *testing.T) {
		f, u := setup(t, upstreamtest.FakeOptions{AuthMechanisms: []string{"PLAIN"}, CheckAuth: checkAuth},
			func(o *Options) {
				o.Auth = Auth{Mechanism: "plain", Username: "dev@contoso.com", Password: goodPassword}
			})
		steps, err := u.Probe(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, s := range steps {
			names = append(names, s.Name)
			if !s.OK {
				t.Errorf("step %+v", s)
			}
		}
		if got := strings.Join(names, ","); got != "connect,banner,tls,ehlo,auth" {
			t.Errorf("steps: %s", got)
		}
		if tlsStep := steps[2].Detail; !strings.Contains(tlsStep, "TLS 1.3") || !strings.Contains(tlsStep, "CN=localhost") || !strings.Contains(tlsStep, "expires") {
			t.Errorf("tls detail: %s", tlsStep)
		}
		if !strings.Contains(steps[3].Detail, "PIPELINING") || !strings.Contains(steps[3].Detail, "AUTH PLAIN") {
			t.Errorf("ehlo detail: %s", steps[3].Detail)
		}
		f.WaitClosed(t)
		if f.Count() != 0 {
			t.Errorf("probe sent mail")
		}
	})
	t.Run("auth refused", func(t *testing.T) {
		_, u := setup(t, upstreamtest.FakeOptions{AuthMechanisms: []string{"PLAIN"}, CheckAuth: checkAuth},
			func(o *Options) {
				o.Auth = Auth{Mechanism: "plain", Username: "dev@contoso.com", Password: badPassword}
			})
		steps, err := u.Probe(context.Background())
		if err == nil {
			t.Fatal("no error")
		}
		last := steps[len(steps)-1]
		if last.Name != "auth" || last.OK || !strings.Contains(last.Detail, "535 5.7.3") || strings.Contains(last.Detail, badPassword) {
			t.Errorf("last step %+v", last)
		}
	})
}

func writeFile(p, s string) error { return os.WriteFile(p, []byte(s), 0o644) }

func TestConnectionsCount(t *testing.T) {
	f, u := setup(t, upstreamtest.FakeOptions{TLS: "none"}, nil)
	if got := u.Connections(); got != 0 {
		t.Errorf("before any delivery: %d connections, want 0", got)
	}
	mustDeliver(t, u, message("q1", "a@example.com", []string{"b@example.com"}, body1))
	if got := u.Connections(); got != 1 {
		t.Errorf("one pooled: %d connections, want 1", got)
	}
	f.DropAll()
	f.WaitClosed(t)
	// The dead one is dropped and replaced.
	mustDeliver(t, u, message("q2", "a@example.com", []string{"b@example.com"}, body1))
	if got := u.Connections(); got != 1 {
		t.Errorf("after the smarthost dropped it: %d connections, want 1", got)
	}
	if _, err := u.Probe(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := u.Connections(); got != 1 {
		t.Errorf("after a probe: %d connections, want 1", got)
	}
	u.Close()
	if got := u.Connections(); got != 0 {
		t.Errorf("after Close: %d connections, want 0", got)
	}
}
