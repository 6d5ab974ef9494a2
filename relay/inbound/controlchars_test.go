package inbound

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/learn"
	"github.com/siterelay/siterelay/relay/relaytest"
	"github.com/siterelay/siterelay/relay/trace"
)

// rawControl quotes s when it holds a control character that should have
// been escaped, "" when it holds none.
func rawControl(s string) string {
	for _, r := range s {
		if r < 0x20 || r >= 0x7f && r <= 0x9f || r >= 0x202a && r <= 0x202e || r >= 0x2066 && r <= 0x2069 ||
			r == 0x200e || r == 0x200f || r == 0x061c || r == utf8.RuneError {
			return fmt.Sprintf("%q", s)
		}
	}
	return ""
}

// Issue 19, the inbound half of item 6: a device that sends escape
// sequences, C1 controls and bidi overrides in its HELO, MAIL FROM, RCPT,
// Subject, Message-ID and AUTH user name never gets them raw into a log
// line, the trace or what learning mode keeps; the spool keeps its bytes as
// sent (the relay's own Received: header cleans the HELO name itself). The JSON log handler escapes C0 itself, so the log is checked field
// by field after decoding, where an unescaped ESC would be back.
func TestControlCharactersNeverReachLogsOrTrace(t *testing.T) {
	const (
		esc    = "\x1b]0;owned\x07\x1b[2J"
		c1     = "\u009b31m"
		bidi   = "\u202etxt.exe"
		helo   = "mfp" + esc
		from   = "scan" + esc + c1 + "@plant.example"
		rcpt   = "ops" + bidi + "@example.com"
		user   = "admin" + esc + bidi
		subj   = "Scan " + esc + " " + c1 + " " + bidi
		msgID  = "<id" + esc + "@plant.example>"
		header = "Subject: " + subj + "\r\nMessage-ID: " + msgID + "\r\n\r\nbody\r\n."
	)
	var logs relaytest.Buffer
	var mu sync.Mutex
	var events []trace.Event
	var seen []learn.Sighting
	pol := newSitePolicy(t, []string{"127.0.0.0/8"}, func(c *config.Config) {
		c.Senders.AllowedDomains = []string{"plant.example"}
		c.Accounts = []config.Account{{Username: "printer", PasswordHash: mustHash(t, "s3cret")}}
	})
	f, _ := startServer(t, func(o *Options) {
		o.Policy, o.AllowPlaintextAuth = pol, true
		o.Logger = slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
		o.Record = func(e trace.Event) { mu.Lock(); events = append(events, e); mu.Unlock() }
		o.Observe = func(s learn.Sighting) { mu.Lock(); seen = append(seen, s); mu.Unlock() }
	})
	r := dialRaw(t, f.addr)
	r.cmd("EHLO "+helo, "250")
	r.cmd("AUTH PLAIN "+base64.StdEncoding.EncodeToString([]byte("\x00"+user+"\x00guess")), "535")
	r.cmd("MAIL FROM:<x@evil"+bidi+".example>", "553") // refused: the reply quotes the domain
	r.cmd("MAIL FROM:<"+from+">", "250")
	r.cmd("RCPT TO:<"+rcpt+">", "250")
	r.cmd("DATA", "354")
	r.cmd(header, "250")
	r.cmd("QUIT", "221")
	waitIdle(t, f.srv)

	// The log: every field of every line.
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	if len(lines) < 3 {
		t.Fatalf("only %d log lines: %s", len(lines), logs.String())
	}
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch v := v.(type) {
		case string:
			if raw := rawControl(v); raw != "" {
				t.Errorf("log field %s carries raw control characters: %s", path, raw)
			}
		case map[string]any:
			for k, x := range v {
				walk(path+"."+k, x)
			}
		case []any:
			for i, x := range v {
				walk(fmt.Sprintf("%s[%d]", path, i), x)
			}
		}
	}
	sawUser, sawReply := false, false
	for _, l := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		walk("", m)
		sawUser = sawUser || m["msg"] == "login refused" && strings.Contains(fmt.Sprint(m["user"]), `admin\x1b]0;owned\x07`)
		sawReply = sawReply || m["msg"] == "refused" && strings.Contains(fmt.Sprint(m["reply"]), `evil\u202etxt.exe.example`)
	}
	if !sawUser || !sawReply {
		t.Errorf("the log does not show the refused login (%v) or the refused sender (%v) escaped:\n%s", sawUser, sawReply, logs.String())
	}

	// The trace and learning mode.
	mu.Lock()
	defer mu.Unlock()
	if len(events) != 1 {
		t.Fatalf("%d trace events, want 1", len(events))
	}
	ev := events[0]
	for name, v := range map[string]string{"from": ev.From, "to": strings.Join(ev.To, ","), "subject": ev.Subject,
		"message_id": ev.MessageID, "account": ev.Account, "from_received": ev.FromReceived} {
		if raw := rawControl(v); raw != "" {
			t.Errorf("trace field %s carries raw control characters: %s", name, raw)
		}
	}
	if want := `Scan \x1b]0;owned\x07\x1b[2J \u009b31m \u202etxt.exe`; ev.Subject != want {
		t.Errorf("trace subject %q, want %q", ev.Subject, want)
	}
	for i, s := range seen {
		for name, v := range map[string]string{"helo": s.Helo, "login": s.Login, "from": s.From, "header_from": s.HeaderFrom, "auth": s.AuthTried} {
			if raw := rawControl(v); raw != "" {
				t.Errorf("sighting %d field %s carries raw control characters: %s", i, name, raw)
			}
		}
	}

	// The spool keeps the bytes.
	infos := f.sp.List()
	if len(infos) != 1 {
		t.Fatalf("%d messages spooled, want 1", len(infos))
	}
	if got := infos[0].Envelope.From; got != from {
		t.Errorf("spooled sender %q, want %q as sent", got, from)
	}
	content := f.content(t, infos[0].ID)
	for _, want := range []string{"Subject: " + subj + "\r\n", "Message-ID: " + msgID + "\r\n"} {
		if !strings.Contains(content, want) {
			t.Errorf("spooled message lacks %q as sent:\n%q", want, content)
		}
	}
}
