package main

import (
	"bytes"
	"errors"
	"testing"
	"time"
)

func TestDelayTable(t *testing.T) {
	got := delayTable("/dev/loop3", 2097152, 20*time.Millisecond)
	want := "0 2097152 delay /dev/loop3 0 0 /dev/loop3 0 20 /dev/loop3 0 20"
	if got != want {
		t.Errorf("delayTable = %q, want %q", got, want)
	}
}

func TestPrintLimit(t *testing.T) {
	rs := []result{
		{Name: "relayd", Round: 1, E2ERate: 400},
		{Name: "postfix", Round: 1, E2ERate: 125},
		{Name: "postfix", Round: 1, Err: errors.New("x")},
	}
	for _, tc := range []struct {
		delay time.Duration
		want  string
	}{
		{20 * time.Millisecond, "limit 10 sessions ÷ 20ms flush = 500 msg/s; share of it end to end: relayd 80%, postfix 25%\n"},
		{0, ""},
	} {
		var b bytes.Buffer
		printLimit(&b, rs, 10, tc.delay)
		if got := b.String(); got != tc.want {
			t.Errorf("delay %v: got %q, want %q", tc.delay, got, tc.want)
		}
	}
}
