package testboot

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// guardFake is the guard's world: a clock whose first fire waits elapse
// (the later ones never do), gokrazy's reboot request, the direct reboot
// and the console, each recorded in order.
type guardFake struct {
	up     time.Duration
	upErr  error
	fire   int
	events []string
	lines  []string
	// onWait runs at each wait (before it elapses or not): a test boot
	// that commits cancels the guard here.
	onWait func()
	// askErr is gokrazy's answer; askEnds: gokrazy's reboot ends the
	// guard (cancels it), as a real reboot does.
	askErr  error
	askEnds bool
	cancel  context.CancelFunc
	waits   int
}

func (f *guardFake) SinceBoot() (time.Duration, error) { return f.up, f.upErr }

func (f *guardFake) After(d time.Duration) <-chan time.Time {
	f.events = append(f.events, "wait "+d.String())
	f.waits++
	if f.onWait != nil {
		f.onWait()
	}
	if f.waits > f.fire {
		return nil // never
	}
	ch := make(chan time.Time, 1)
	ch <- time.Time{}
	return ch
}

// fakeWatchdog counts pings.
type fakeWatchdog struct{ pings atomic.Int64 }

func (w *fakeWatchdog) Write(b []byte) (int, error) {
	if len(b) != 1 || b[0] == 'V' {
		return 0, errors.New("not a ping")
	}
	w.pings.Add(1)
	return 1, nil
}

// afterStop: the count moved from n although the feeder was stopped
// (read twice around a yield; a live feeder pings only once a second,
// so this catches a feeder that was never stopped only when it pings in
// between; the main check is that Run joined it, which -race sees).
func (w *fakeWatchdog) afterStop(n int64) bool { runtime.Gosched(); return w.pings.Load() != n }

func TestGuard(t *testing.T) {
	const testBoot = "console=ttyS0,115200 root=PARTUUID=abc/PARTNROFF=1 gokrazy.try_boot_inactive=1 rootwait"
	for _, tc := range []struct {
		name     string
		cmdline  string
		up       time.Duration
		upErr    error
		fire     int
		commit   bool   // the test boot commits while the guard waits
		watchdog string // "": none given; "free": the guard opens it; "busy": init holds it
		askErr   error
		askEnds  bool
		wantErr  error // errors.Is; nil with wantFail means any error
		wantFail bool
		want     []string
	}{
		{name: "not a test boot", cmdline: "console=ttyS0,115200 root=PARTUUID=abc/PARTNROFF=1 rootwait",
			wantErr: ErrNotTestBoot, want: nil},
		{name: "the flag is a whole word", cmdline: "gokrazy.try_boot_inactive=10",
			wantErr: ErrNotTestBoot, want: nil},
		{name: "committed before the deadline", cmdline: testBoot, up: 20 * time.Second, commit: true,
			wantErr: context.Canceled, want: []string{"console", "wait 1m10s"}},
		{name: "deadline reached, gokrazy reboots", cmdline: testBoot, up: 20 * time.Second, fire: 1, askEnds: true,
			wantErr: context.Canceled, want: []string{"console", "wait 1m10s", "console", "detach", "ask", "wait 1m0s"}},
		{name: "deadline reached, the box still up a minute later", cmdline: testBoot, up: 20 * time.Second, fire: 2,
			wantFail: true, want: []string{"console", "wait 1m10s", "console", "detach", "ask", "wait 1m0s", "console", "force"}},
		{name: "gokrazy's socket fails: direct reboot", cmdline: testBoot, up: 20 * time.Second, fire: 1, askErr: errors.New("dial unix /run/gokrazy-http.sock: connection refused"),
			wantFail: true, want: []string{"console", "wait 1m10s", "console", "detach", "ask", "console", "force"}},
		{name: "restarted after the deadline: at once", cmdline: testBoot, up: 95 * time.Second, askEnds: true,
			wantErr: context.Canceled, want: []string{"console", "console", "detach", "ask", "wait 1m0s"}},
		{name: "watchdog lost by init: fed until gokrazy took the request", cmdline: testBoot, up: 20 * time.Second, fire: 1, askEnds: true, watchdog: "free",
			wantErr: context.Canceled, want: []string{"console", "watchdog opened", "console", "wait 1m10s", "console", "detach", "ask", "wait 1m0s", "watchdog unfed"}},
		{name: "watchdog lost by init: the commit's reboot ends the guard", cmdline: testBoot, up: 20 * time.Second, commit: true, watchdog: "free",
			wantErr: context.Canceled, want: []string{"console", "watchdog opened", "console", "wait 1m10s", "watchdog unfed"}},
		{name: "watchdog held by init: left to it", cmdline: testBoot, up: 20 * time.Second, fire: 1, askEnds: true, watchdog: "busy",
			wantErr: context.Canceled, want: []string{"console", "watchdog busy", "wait 1m10s", "console", "detach", "ask", "wait 1m0s"}},
		{name: "uptime unreadable: counted from now", cmdline: testBoot, upErr: errors.New("no /proc"), commit: true,
			wantErr: context.Canceled, want: []string{"console", "wait 1m30s"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			f := &guardFake{up: tc.up, upErr: tc.upErr, fire: tc.fire, askErr: tc.askErr, askEnds: tc.askEnds, cancel: cancel}
			if tc.commit {
				f.onWait = cancel
			}
			g := &Guard{
				Cmdline:  tc.cmdline,
				Deadline: 90 * time.Second,
				Clock:    f,
				Ask: func(actx context.Context) error {
					f.events = append(f.events, "ask")
					if _, ok := actx.Deadline(); !ok {
						t.Errorf("the reboot request has no time bound")
					}
					if f.askEnds {
						f.cancel()
					}
					return f.askErr
				},
				Force:   func() error { f.events = append(f.events, "force"); return nil },
				Detach:  func() { f.events = append(f.events, "detach") },
				Console: func(l string) { f.events = append(f.events, "console"); f.lines = append(f.lines, l) },
				Log:     slog.New(slog.NewTextHandler(io.Discard, nil)),
			}
			wd := &fakeWatchdog{}
			switch tc.watchdog {
			case "free":
				g.Watchdog = func() (io.Writer, error) { f.events = append(f.events, "watchdog opened"); return wd, nil }
			case "busy":
				g.Watchdog = func() (io.Writer, error) {
					f.events = append(f.events, "watchdog busy")
					return nil, errors.New("open /dev/watchdog: device or resource busy")
				}
			}
			// A wrong guard waits for a time that never comes: bounded, so
			// that it fails rather than hangs.
			done := make(chan error, 1)
			go func() { done <- g.Run(ctx) }()
			var err error
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				t.Fatalf("Run did not return; events so far %q", f.events)
			}
			switch {
			case tc.wantErr != nil && !errors.Is(err, tc.wantErr):
				t.Errorf("Run: got %v, want %v", err, tc.wantErr)
			case tc.wantFail && err == nil:
				t.Errorf("Run: got nil, want an error (the direct reboot returned)")
			case tc.wantErr == nil && !tc.wantFail && err != nil:
				t.Errorf("Run: got %v, want nil", err)
			}
			if tc.watchdog == "free" {
				// The guard fed it, and stopped feeding before Run
				// returned (it joins its feeder): the count no longer
				// moves.
				n := wd.pings.Load()
				f.events = append(f.events, "watchdog unfed")
				if n == 0 {
					t.Errorf("the watchdog was never fed")
				}
				if wd.afterStop(n) {
					t.Errorf("the watchdog was fed after Run returned")
				}
			}
			if !slices.Equal(f.events, tc.want) {
				t.Errorf("events:\n got %q\nwant %q", f.events, tc.want)
			}
			if slices.Contains(tc.want, "ask") {
				if !slices.ContainsFunc(f.lines[1:], func(l string) bool { return strings.Contains(l, "test boot not committed 1m30s after power-on") }) {
					t.Errorf("console lines %q: want the deadline's reason after the first", f.lines)
				}
			}
		})
	}
}

func TestGuardDefaults(t *testing.T) {
	g := &Guard{Cmdline: "x", Ask: func(context.Context) error { return nil }, Force: func() error { return nil }}
	if err := g.Run(context.Background()); !errors.Is(err, ErrNotTestBoot) {
		t.Fatalf("Run: got %v, want ErrNotTestBoot", err)
	}
	if g.Deadline != DefaultDeadline || g.Grace != DefaultGrace {
		t.Errorf("defaults: deadline %v, grace %v; want %v, %v", g.Deadline, g.Grace, DefaultDeadline, DefaultGrace)
	}
}

func TestParseUptime(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		err  bool
	}{
		{"350735.47 234388.90\n", 350735*time.Second + 470*time.Millisecond, false},
		{"12.05 20.00", 12*time.Second + 50*time.Millisecond, false},
		{"0.00 0.00", 0, false},
		{"", 0, true},
		{"abc 1.0", 0, true},
		{"-3.0 1.0", 0, true},
	} {
		got, err := ParseUptime(tc.in)
		if (err != nil) != tc.err || (err == nil && (got-tc.want).Abs() > time.Millisecond) {
			t.Errorf("ParseUptime(%q): got %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}
func TestBooted(t *testing.T) {
	for _, tc := range []struct {
		cmdline string
		want    bool
	}{
		{"console=ttyS0,115200 root=PARTUUID=60c24cc1-f3f9-427a-8199-2e18c40c0003 rootwait \n", false},
		{"console=ttyS0,115200 root=PARTUUID=60c24cc1-f3f9-427a-8199-2e18c40c0002 rootwait  gokrazy.try_boot_inactive=1\n", true},
		{"gokrazy.switch_on_boot=1", false},
		{"x.gokrazy.try_boot_inactive=1", false},
	} {
		if got := Booted(tc.cmdline); got != tc.want {
			t.Errorf("Booted(%q) = %v, want %v", tc.cmdline, got, tc.want)
		}
	}
}
