// Command bootguard runs on the box beside relayd (sitegen puts it in
// every image as /user/bootguard) and sends a test boot of new firmware
// that does not commit itself in time back to the old firmware: it wires
// the kernel command line, the box's clock, gokrazy's local socket, the
// direct reboot, the kernel log and SIGTERM to testboot.Guard, which
// holds the logic (docs/image.md, "The test-boot guard").
//
//	bootguard [-deadline 10m]
//
// Not in a test boot it exits 125 at once, and gokrazy stops supervising
// it until the next boot.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/siterelay/siterelay/provisioning/testboot"
)

// dontSupervise is the exit status that tells gokrazy not to restart a
// program.
const dontSupervise = 125

func main() {
	deadline := flag.Duration("deadline", testboot.DefaultDeadline, "how long after power-on a test boot may take to commit itself before the box reboots into the old firmware")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		log.Error("cannot read the kernel command line; not guarding this boot", "err", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	g := &testboot.Guard{
		Cmdline:  string(cmdline),
		Deadline: *deadline,
		Ask:      testboot.Gokrazy{}.Reboot,
		Force:    testboot.ForceReboot,
		// From the deadline on, gokrazy's SIGTERM must not end the
		// guard before its direct reboot.
		Detach:  func() { signal.Ignore(syscall.SIGTERM) },
		Console: console,
		// In a test boot gokrazy's init has lost the watchdog the old
		// root's init armed (testboot's doc): the guard feeds it.
		Watchdog: func() (io.Writer, error) { return os.OpenFile("/dev/watchdog", os.O_WRONLY, 0) },
		Log:      log,
	}
	err = g.Run(ctx)
	switch {
	case errors.Is(err, testboot.ErrNotTestBoot):
		log.Info("not a test boot: nothing to guard until the next boot")
		os.Exit(dontSupervise)
	case errors.Is(err, context.Canceled):
		return
	case err != nil:
		log.Error("the guard failed", "err", err)
		os.Exit(1)
	}
}

// console writes a line to the kernel log, which the box shows on its
// serial console (as appliance's console does for relayd).
func console(line string) {
	f, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "siterelay bootguard: %s\n", line)
}
