package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/siterelay/siterelay/relay/relaytest"
)

// N4, N5, N6: a stray argument or contradicting flags are usage errors,
// never a started daemon; -h lists the commands; -version answers.
func TestDaemonFlags(t *testing.T) {
	for _, tc := range []struct {
		args     []string
		code     int // -1: the daemon would start
		out, err string
	}{
		{[]string{"-dev"}, -1, "", ""},
		{[]string{"-dev", "-smtp", "127.0.0.1:2526"}, -1, "", ""},
		{[]string{"-config", "x.json", "-state", "st"}, -1, "", ""},
		{[]string{"chek-config", "x.json"}, 2, "", `unknown command "chek-config"`},
		{[]string{"-dev", "stray"}, 2, "", `unknown command "stray"`},
		{[]string{"-dev", "-config", "x.json"}, 2, "", "give one of them"},
		{[]string{"-smtp", "127.0.0.1:2526"}, 2, "", "-smtp sets the address of -dev's listener"},
		{[]string{"-dev", "-smtp", "2526"}, 2, "", "want host:port"},
		{[]string{"-log-level", "loud"}, 2, "", "-log-level"},
		{[]string{"-nosuchflag"}, 2, "", "flag provided but not defined"},
		{[]string{"-h"}, 0, "", "check-config FILE"},
		{[]string{"-version"}, 0, "relayd ", ""},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var out, errs strings.Builder
			_, code := parseDaemon(tc.args, &out, &errs)
			if code != tc.code || !strings.Contains(out.String(), tc.out) || !strings.Contains(errs.String(), tc.err) {
				t.Errorf("exit %d, stdout %q, stderr %q; want %d, %q, %q", code, out.String(), errs.String(), tc.code, tc.out, tc.err)
			}
		})
	}
	var out, errs strings.Builder
	parseDaemon([]string{"-h"}, &out, &errs)
	for _, cmd := range []string{"check-config", "doctor", "trace", "devices", "hash-password", "-version", "-timeout 2m", "relayctl -relay NAME"} {
		if !strings.Contains(errs.String(), cmd) {
			t.Errorf("relayd -h does not mention %s:\n%s", cmd, errs.String())
		}
	}
}

// N19: hash-password reads the password without echoing it on a terminal.
func TestHashPasswordDoesNotEcho(t *testing.T) {
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminal here: %v", err)
	}
	defer master.Close()
	if err := unix.IoctlSetPointerInt(int(master.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(master.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	tty, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer tty.Close()
	const pw = "Plant-Scanner-Pw-42"
	var out bytes.Buffer
	errs, seen := &relaytest.Buffer{}, &relaytest.Buffer{}
	go io.Copy(seen, master) // everything the terminal shows: prompt, echo
	done := make(chan int)
	go func() { done <- hashPassword(nil, tty, &out, errs) }()
	// hashPassword turns the echo off before it prompts.
	relaytest.Eventually(t, "the prompt", func() bool { return strings.Contains(errs.String(), "password") })
	io.WriteString(master, pw+"\r")
	code := <-done
	if code != 0 || !strings.HasPrefix(out.String(), "$2a$") {
		t.Fatalf("exit %d, out %q, err %q", code, out.String(), errs.String())
	}
	tty.WriteString("END\n") // what the terminal showed before this is all in seen once it arrives
	relaytest.Eventually(t, "the end marker", func() bool { return strings.Contains(seen.String(), "END") })
	if strings.Contains(seen.String(), pw) {
		t.Errorf("the password was echoed: %q", seen.String())
	}
	if code := hashPassword([]string{"secret"}, tty, &out, errs); code != 2 {
		t.Errorf("a password as an argument: exit %d, want 2", code)
	}
}
