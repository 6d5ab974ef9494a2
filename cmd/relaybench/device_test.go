package main

import (
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
