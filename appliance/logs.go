package appliance

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"

	"github.com/siterelay/siterelay/appliance/logring"
	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/relay/layout"
	"github.com/siterelay/siterelay/relay/safetext"
)

// keepLog gives relayd's log ring its files in the state directory (the
// previous runs' lines come back), points the Go runtime's crash report
// there, and says how the previous run ended, in the log and on the
// console: a box that restarts over and over says why on its screen and
// in relayctl logs.
func keepLog(o Options, log *slog.Logger) {
	if o.Log == nil {
		return
	}
	d := layout.Dir(o.StateDir)
	prev, err := o.Log.Keep(logring.Files{Current: d.Log(), Older: d.LogOlder(), Crash: d.CrashLog()}, func(err error) {
		log.Error("relayd's log file cannot be written; the log in memory goes on (relayctl logs)", "err", err)
	})
	if err != nil {
		log.Error("relayd's log cannot be kept in the state directory; it is kept in memory only, and lost at a restart", "err", err)
		return
	}
	if f, err := os.OpenFile(d.CrashLog(), os.O_WRONLY|os.O_APPEND, 0o600); err == nil {
		debug.SetCrashOutput(f, debug.CrashOptions{}) // a panic's report survives into the next run's log
		f.Close()
	}
	if prev.Ended != "" {
		log.Info("the previous run of relayd ended", "how", prev.Ended, "clean", prev.Clean, "lines_kept", prev.Lines)
		Say(o.Console, "previous run ended: %s", prev.Ended)
	}
}

// Say writes one line to the console (Options.Console; nil writes
// nothing), every control character escaped.
func Say(console io.Writer, format string, a ...any) {
	if console == nil {
		return
	}
	fmt.Fprintf(console, "relayd: %s\n", safetext.Escape(fmt.Sprintf(format, a...)))
}

// Logs reads relayd's log ring for the admin API and page.
func (a *admin) Logs(ctx context.Context, q api.LogQuery, fn func(line []byte) error) error {
	ring := a.o.Log
	if ring == nil {
		return &api.Error{Status: 501, Code: api.CodeUnavailable, Message: "this relayd was started without a log ring"}
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(q.Level)); err != nil && q.Level != "" {
		return &api.Error{Status: 400, Code: api.CodeBadRequest, Field: "level", Message: err.Error()}
	}
	lq := logring.Query{Since: q.Since, Level: lvl}
	send := func(e logring.Entry) error { return fn(e.Line) }
	if !q.Follow {
		es, _ := ring.Read(lq)
		for _, e := range es {
			if err := send(e); err != nil {
				return err
			}
		}
		return nil
	}
	// A follower ends with its request or with the admin side (a stop,
	// a reboot), whichever is first.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if a.ctx != nil {
		stop := context.AfterFunc(a.ctx, cancel)
		defer stop()
	}
	return ring.Follow(ctx, lq, send)
}
