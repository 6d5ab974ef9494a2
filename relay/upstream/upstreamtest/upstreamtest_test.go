package upstreamtest

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/siterelay/siterelay/relay/upstream"
)

func TestRecorderScript(t *testing.T) {
	r := NewRecorder(upstream.Limits{Concurrency: 2}, nil)
	temp := replyErr(451, "4.7.500", "busy")
	r.FailRcpt("b@example.com", temp, nil)
	r.FailNext(errors.New("connection refused"))
	msg := &upstream.Message{QueueID: "q1", From: "a@example.com", To: []string{"b@example.com", "c@example.com"},
		Size: 2, Body: strings.NewReader("hi")}
	type want struct {
		err  bool
		errs []bool
	}
	for i, w := range []want{{true, nil}, {false, []bool{true, false}}, {false, []bool{false, false}}} {
		res, err := r.Deliver(context.Background(), msg)
		if (err != nil) != w.err || len(res) != len(w.errs) {
			t.Fatalf("attempt %d: got %v, %v", i+1, res, err)
		}
		for j, e := range w.errs {
			if (res[j].Err != nil) != e {
				t.Errorf("attempt %d rcpt %d: %v", i+1, j, res[j].Err)
			}
		}
	}
	d := r.WaitDeliveries(t, 3)
	if d[2].Attempt != 3 || string(d[2].Body) != "hi" {
		t.Errorf("delivery: %+v", d[2])
	}
	r.WaitAccepted(t, "b@example.com", "c@example.com")
	if got := r.Accepted("c@example.com"); got != 2 {
		t.Errorf("accepted c: got %d, want 2", got)
	}
	if got := r.Attempts("b@example.com"); got != 2 {
		t.Errorf("attempts b: got %d, want 2", got)
	}
	r.Close()
	if _, err := r.Deliver(context.Background(), msg); err == nil {
		t.Errorf("Deliver after Close succeeded")
	}
}

// replyErr is shorthand for a reply as an upstream error.
func replyErr(code int, enh, text string) error { return upstream.FromReply(Reply(code, enh, text)) }

func TestParseXOAUTH2(t *testing.T) {
	tests := []struct {
		in          string
		user, token string
		ok          bool
	}{
		{"user=a@b\x01auth=Bearer tok\x01\x01", "a@b", "tok", true},
		{"user=a@b\x01auth=tok\x01\x01", "", "", false},
		{"user=a@b\x01auth=Bearer tok", "", "", false},
		{"\x01\x01", "", "", false},
	}
	for _, tt := range tests {
		u, tok, ok := parseXOAUTH2([]byte(tt.in))
		if ok != tt.ok || (ok && (u != tt.user || tok != tt.token)) {
			t.Errorf("parseXOAUTH2(%q): got %q %q %v", tt.in, u, tok, ok)
		}
	}
}

func TestReplyEnhanced(t *testing.T) {
	r := Reply(550, "5.1.1", "no such user")
	if r.EnhancedCode[0] != 5 || r.EnhancedCode[1] != 1 || r.EnhancedCode[2] != 1 || upstream.Status(upstream.FromReply(r)) != "550 5.1.1 no such user" {
		t.Errorf("got %+v", r)
	}
}
