package main

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/siterelay/siterelay/relay/relaytest"
	"github.com/siterelay/siterelay/relay/trace"
)

func TestTraceCommand(t *testing.T) {
	state := relaytest.StateDir(t)
	now := time.Date(2026, 11, 23, 14, 0, 0, 0, time.UTC)
	s, err := trace.Open(filepath.Join(state, "trace"), trace.Options{Clock: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range []trace.Event{
		{Time: now.Add(-48 * time.Hour), Kind: trace.Received, QueueID: "Q1", From: "mfp@plant.example", To: []string{"old@example.com"}, Subject: "scan 1"},
		{Time: now.Add(-30 * time.Minute), Kind: trace.Received, QueueID: "Q2", From: "plc@plant.example", To: []string{"ops@example.com"}, Subject: "alarm 7", ClientIP: "10.20.0.31", Size: 812},
		{Time: now.Add(-29 * time.Minute), Kind: trace.Deferred, QueueID: "Q2", From: "plc@plant.example", To: []string{"ops@example.com"}, Attempt: 1,
			Reply: "451 4.7.500 Server busy", Hint: "Microsoft is throttling this relay.", Upstream: "m365-oauth"},
	} {
		s.Record(e)
	}
	// A device whose sender is rewritten, logged in on the submission port.
	s.Record(trace.Event{Time: now.Add(-20 * time.Minute), Kind: trace.Received, QueueID: "Q3", From: "relay@example.com",
		FromReceived: "mfp7@plant.local", Listener: "submission", Account: "mfp7", To: []string{"ops@example.com"}, TLSVersion: "1.0"})
	s.Record(trace.Event{Time: now.Add(-19 * time.Minute), Kind: trace.Delivered, QueueID: "Q3", From: "relay@example.com",
		Account: "mfp7", To: []string{"ops@example.com"}, Attempt: 1, Reply: "250 accepted", Upstream: "m365-oauth"})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name      string
		args      []string
		wantCode  int
		want      []string // in stdout, in this order
		notWant   []string
		wantError string // in stderr
	}{
		{"everything, newest first", nil, 0, []string{"delivered  Q3", "received   Q3", "deferred   Q2", "received   Q2", "received   Q1"}, nil, ""},
		{"by the sender as received", []string{"-from", "mfp7@plant.local", "-status", "delivered"}, 0,
			[]string{"delivered  Q3", "from relay@example.com to ops@example.com"}, []string{"Q2", "received "}, ""},
		{"by device (listener)", []string{"-device", "submission"}, 0,
			[]string{"delivered  Q3", "received   Q3", "from relay@example.com (received as mfp7@plant.local)", "login mfp7, on submission, TLS 1.0"}, []string{"Q2"}, ""},
		{"by device (login)", []string{"-device", "MFP7", "-kind", "delivered"}, 0, []string{"delivered  Q3"}, []string{"Q2", "received "}, ""},
		{"by queue id", []string{"-id", "q1"}, 0, []string{"Q1", `"scan 1"`}, []string{"Q2"}, ""},
		{"by recipient domain and kind", []string{"-to", "@example.com", "-kind", "deferred"}, 0,
			[]string{"Q2  attempt 1  via m365-oauth", "reply: 451 4.7.500 Server busy", "hint: Microsoft is throttling"}, []string{"received"}, ""},
		{"since a duration", []string{"-since", "1h"}, 0, []string{"Q2"}, []string{"Q1"}, ""},
		{"until a date", []string{"-until", "2026-11-22"}, 0, []string{"Q1"}, []string{"Q2"}, ""},
		{"nothing matches", []string{"-from", "nobody"}, 0, nil, []string{"Q"}, "no events match"},
		{"bad kind", []string{"-kind", "lost"}, 2, nil, nil, `-kind "lost": want one of`},
		{"bad since", []string{"-since", "yesterday"}, 2, nil, nil, `-since: "yesterday": want a duration`},
		{"stray argument", []string{"Q1"}, 2, nil, nil, `unexpected argument "Q1"`},
		{"bad limit", []string{"-limit", "-1"}, 1, nil, nil, "limit -1 outside"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := runTrace(append([]string{"-state", state}, tc.args...), &stdout, &stderr, now)
			if code != tc.wantCode {
				t.Errorf("exit code: got %d, want %d (stderr %q)", code, tc.wantCode, stderr.String())
			}
			out := stdout.String()
			at := 0
			for _, w := range tc.want {
				i := strings.Index(out[at:], w)
				if i < 0 {
					t.Errorf("output lacks %q (in order):\n%s", w, out)
					break
				}
				at += i + len(w)
			}
			for _, w := range tc.notWant {
				if strings.Contains(out, w) {
					t.Errorf("output has %q:\n%s", w, out)
				}
			}
			if !strings.Contains(stderr.String(), tc.wantError) {
				t.Errorf("stderr: got %q, want %q", stderr.String(), tc.wantError)
			}
		})
	}

	t.Run("json", func(t *testing.T) {
		var stdout, stderr bytes.Buffer
		if code := runTrace([]string{"-state", state, "-id", "Q2", "-json"}, &stdout, &stderr, now); code != 0 {
			t.Fatalf("exit %d: %s", code, stderr.String())
		}
		lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
		if len(lines) != 2 {
			t.Fatalf("got %d lines, want 2:\n%s", len(lines), stdout.String())
		}
		var e trace.Event
		if err := json.Unmarshal([]byte(lines[0]), &e); err != nil || e.Kind != trace.Deferred || e.Hint == "" {
			t.Errorf("first line %q: %+v, %v", lines[0], e, err)
		}
	})
}
