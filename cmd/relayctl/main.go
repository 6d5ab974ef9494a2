// Command relayctl manages siterelay boxes over the tailnet: status, queue,
// trace, configuration, credentials, doctor, audit and the fleet table.
// docs/provisioning.md has every command; provisioning/ctl does the work.
package main

import (
	"context"
	"os"
	"os/signal"

	"github.com/siterelay/siterelay/provisioning/ctl"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	code := ctl.Main(ctx, os.Args[1:], ctl.IO{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr})
	stop()
	os.Exit(code)
}
