package testboot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The boot guard (cmd/bootguard) gives a test boot a bounded time. A new
// root that comes up healthy commits itself and reboots well within it
// (appliance's commitTestBoot: relaying and back on the tailnet); one
// whose relayd exits or hangs never does, and without the guard it would
// wait for a power cycle by hand. At the deadline the guard asks gokrazy
// for a reboot, and since gokrazy took the test-boot flag off the boot
// partition's command line when this boot began, that reboot is the old
// root again.
//
// The hardware watchdog cannot do this: gokrazy's init (PID 1) opens
// /dev/watchdog at every boot and feeds it every second whatever the
// services do, so it resets a hung kernel or init, not a hung relayd. The
// guard is its own program, not part of relayd, so a hung relayd cannot
// stop it; it comes with the new root, like everything in a test boot.
//
// Except in a test boot: there the old root's init opens the watchdog,
// then execs the new root's init, which loses the open device (the
// kernel says "watchdog did not stop!") and cannot open it again (its
// /dev is not mounted yet when it tries). Nobody feeds the running
// watchdog, and the hardware resets the box some 15–30 s later, healthy
// or not: a new root that takes longer than that to commit itself is
// thrown back to the old one. So in a test boot the guard takes the
// watchdog over (Watchdog) and feeds it until its deadline: a healthy
// root has its full time, and a hung kernel in the test boot is still
// reset by the hardware.

// DefaultDeadline is how long after power-on a test boot may take
// to commit itself before the guard reboots into the old root: a healthy
// one commits in well under a minute on a Pi and in the VM test.
const DefaultDeadline = 10 * time.Minute

// DefaultGrace is how long the guard waits after gokrazy took its
// reboot request before it reboots directly.
const DefaultGrace = time.Minute

// askTimeout bounds the request to gokrazy: an init too busy to answer
// in this time is as good as one that cannot.
const askTimeout = 30 * time.Second

// ErrNotTestBoot is Run's answer when this boot is not a test boot: there
// is nothing to guard (cmd/bootguard exits 125, and gokrazy stops
// supervising it until the next boot).
var ErrNotTestBoot = errors.New("not a test boot: nothing to guard")

// Clock is the guard's time: how long the box has been up, and a
// wait. The deadline counts from power-on, so a guard that gokrazy
// restarts does not start the count again.
type Clock interface {
	// SinceBoot is the time since the kernel started (BootClock reads
	// /proc/uptime: CLOCK_BOOTTIME).
	SinceBoot() (time.Duration, error)
	// After is time.After.
	After(d time.Duration) <-chan time.Time
}

// BootClock is the box's clock.
type BootClock struct{}

// SinceBoot reads /proc/uptime.
func (BootClock) SinceBoot() (time.Duration, error) {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return 0, fmt.Errorf("reading the time since boot: %w", err)
	}
	return ParseUptime(string(b))
}

// After is time.After.
func (BootClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// ParseUptime reads the first field of /proc/uptime ("1234.56 789.01"):
// seconds since boot, to the hundredth.
func ParseUptime(s string) (time.Duration, error) {
	f := strings.Fields(s)
	if len(f) == 0 {
		return 0, errors.New("/proc/uptime is empty")
	}
	sec, err := strconv.ParseFloat(f[0], 64)
	if err != nil || sec < 0 {
		return 0, fmt.Errorf("/proc/uptime: %q is not a number of seconds", f[0])
	}
	return time.Duration(sec * float64(time.Second)), nil
}

// Guard reboots a test boot that has not ended by its deadline.
type Guard struct {
	// Cmdline is the kernel command line (/proc/cmdline): only a test
	// boot (Booted) is guarded.
	Cmdline string
	// Deadline counts from power-on (default DefaultDeadline).
	Deadline time.Duration
	// Grace is how long the box may stay up after gokrazy took the
	// reboot request before the guard reboots directly (default
	// DefaultGrace).
	Grace time.Duration
	// Clock (default BootClock).
	Clock Clock
	// Ask asks gokrazy for a clean reboot: every service stopped, /perm
	// unmounted (Gokrazy.Reboot on its local socket).
	Ask func(ctx context.Context) error
	// Force reboots at once, without gokrazy (ForceReboot: sync and
	// reboot(2)); it returns only if that failed.
	Force func() error
	// Detach is called just before Ask: gokrazy's reboot sends SIGTERM
	// to every service, the guard among them, and the guard must outlive
	// it to reboot directly should the box still be up after Grace
	// (cmd/bootguard ignores SIGTERM from then on; gokrazy's SIGKILL
	// comes only 100 s later). Optional.
	Detach func()
	// Console writes a line to the serial console (the kernel log), for
	// a technician with a cable and the VM test. Optional.
	Console func(line string)
	// Watchdog opens the hardware watchdog (/dev/watchdog) for the
	// guard to feed until the deadline; an error (gokrazy's init holds
	// it, or there is none) leaves it to init. Optional.
	Watchdog func() (io.Writer, error)
	// Log (default slog.Default()).
	Log *slog.Logger
}

func (g *Guard) defaults() {
	if g.Deadline <= 0 {
		g.Deadline = DefaultDeadline
	}
	if g.Grace <= 0 {
		g.Grace = DefaultGrace
	}
	if g.Clock == nil {
		g.Clock = BootClock{}
	}
	if g.Log == nil {
		g.Log = slog.Default()
	}
	if g.Console == nil {
		g.Console = func(string) {}
	}
	if g.Detach == nil {
		g.Detach = func() {}
	}
}

// Run guards this boot. Not a test boot: ErrNotTestBoot at once. A test
// boot: it waits until the deadline (counted from power-on), and returns
// ctx's error if ctx ends first (a healthy test boot commits and reboots,
// which ends the guard with every other service). At the deadline it says
// why on the console and in its log and asks gokrazy to reboot; if that
// fails, or the box is still up Grace later, it reboots directly (Force).
// It returns only if ctx ended or everything failed.
func (g *Guard) Run(ctx context.Context) error {
	g.defaults()
	if !Booted(g.Cmdline) {
		return ErrNotTestBoot
	}
	up, err := g.Clock.SinceBoot()
	if err != nil {
		// Counting from now only makes the wait longer, never shorter.
		g.Log.Warn("cannot tell how long the box has been up; counting the deadline from now", "err", err)
		up = 0
	}
	left := max(g.Deadline-up, 0)
	g.Log.Warn("test boot of new firmware: unless it commits itself first, this guard reboots into the old firmware at the deadline",
		"deadline", g.Deadline, "up", up.Round(time.Second), "left", left.Round(time.Second))
	g.Console(fmt.Sprintf("test boot guarded: back to the old firmware %s after power-on unless committed first (%s left)", g.Deadline, left.Round(time.Second)))
	unfeed := g.feed()
	defer unfeed()
	if left > 0 {
		select {
		case <-ctx.Done():
			g.Log.Info("the guard is stopped before the deadline (the test boot committed and is rebooting, or the box is shutting down)")
			return ctx.Err()
		case <-g.Clock.After(left):
		}
	}
	why := fmt.Sprintf("test boot not committed %s after power-on (the new firmware is not relaying and on the tailnet): rebooting into the old firmware", g.Deadline)
	g.Console(why)
	g.Log.Error(why)
	g.Detach()
	actx, cancel := context.WithTimeout(ctx, askTimeout)
	err = g.Ask(actx)
	cancel()
	// From here the hardware may reset the box too: gokrazy's clean
	// reboot had its chance while the watchdog was fed.
	unfeed()
	if err != nil {
		g.Log.Error("gokrazy did not take the reboot request; rebooting directly", "err", err)
		return g.force()
	}
	g.Log.Info("gokrazy is rebooting", "grace", g.Grace)
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-g.Clock.After(g.Grace):
	}
	g.Log.Error("the box is still up after gokrazy took the reboot request; rebooting directly", "waited", g.Grace)
	return g.force()
}

func (g *Guard) force() error {
	g.Console("rebooting directly (sync, reboot)")
	if err := g.Force(); err != nil {
		return fmt.Errorf("rebooting directly: %w", err)
	}
	return errors.New("rebooting directly: reboot(2) returned")
}

// feed takes the hardware watchdog over when gokrazy's init lost it (a
// test boot, see above) and pings it every second until the returned
// stop is called; stop does not disarm it (no magic close), so a box
// that then fails to reboot is reset by the hardware.
func (g *Guard) feed() (stop func()) {
	if g.Watchdog == nil {
		return func() {}
	}
	w, err := g.Watchdog()
	if err != nil {
		g.Log.Info("the hardware watchdog is not the guard's to feed (gokrazy's init holds it, or the box has none)", "err", err)
		return func() {}
	}
	g.Log.Warn("gokrazy's init lost the hardware watchdog when it switched to the new root: the guard feeds it until the deadline")
	g.Console("feeding the hardware watchdog until the deadline (gokrazy's init lost it at the switch to the new root)")
	done, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			if _, err := w.Write([]byte{0}); err != nil { // any byte but 'V' is a ping
				g.Log.Error("feeding the hardware watchdog failed", "err", err)
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			close(done)
			<-stopped
		})
	}
}
