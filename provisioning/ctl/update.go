package ctl

import (
	"context"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/provisioning/firmware"
)

func (e *env) firmware(ctx context.Context, args []string) int {
	return e.call(ctx, func(ctx context.Context, c *api.Client) error {
		f, err := c.Firmware(ctx)
		if err != nil {
			return err
		}
		return e.out(f, func(t *tabwriter.Writer) {
			row(t, "version\t%s\ngo\t%s\nupdate\t%s\n", f.Version, f.GoVersion, f.Update)
		})
	})
}

// UpdateReport is what relayctl update prints with -json.
type UpdateReport struct {
	api.UpdateResult
	// Running is the version the relay answers with after the reboot
	// ("" with -no-reboot, or when it did not come back within -wait).
	Running string  `json:"running,omitempty"`
	Total   float64 `json:"total_seconds"`
}

func (e *env) update(ctx context.Context, args []string) int {
	fs := sub("update", e)
	testboot := fs.Bool("testboot", false, "boot the new root once: it commits itself once relaying and back on the tailnet (and reboots once into it); one that never gets there is not committed, and the next boot is the old root")
	noReboot := fs.Bool("no-reboot", false, "write and switch, but do not reboot now")
	wait := fs.Duration("wait", 5*time.Minute, "after the reboot, wait this long for the relay to answer again")
	pos, err := parse(fs, args)
	if err != nil || len(pos) != 1 {
		return e.fail(usageErr("relayctl update IMAGE [-testboot] [-no-reboot] [-wait D]"))
	}
	f, err := os.Open(pos[0])
	if err != nil {
		return e.fail(fmt.Errorf("opening the image: %w", err))
	}
	defer f.Close()
	off, n, err := firmware.Root(f)
	if err != nil {
		return e.fail(fmt.Errorf("%s: %w", pos[0], err))
	}
	start := time.Now()
	rep := &UpdateReport{}
	// The write itself may take minutes on a slow link: not -timeout.
	wctx, cancel := context.WithTimeout(ctx, 30*time.Minute)
	defer cancel()
	c, r, err := e.client(wctx)
	if err != nil {
		return e.fail(err)
	}
	e.identity(r)
	res, err := c.Update(wctx, io.NewSectionReader(f, off, n), n, *testboot, !*noReboot)
	if err != nil {
		return e.fail(err)
	}
	rep.UpdateResult = *res
	row(e.Stderr, "relayctl: wrote %d bytes in %.1f s (%s), was %s\n", res.RootBytes, res.Seconds, res.Mode, res.From)
	if res.Rebooting {
		row(e.Stderr, "relayctl: the relay reboots; waiting up to %v for it\n", *wait)
		rep.Running, err = e.waitVersion(ctx, c, res.From, *wait)
		if err != nil {
			rep.Total = time.Since(start).Seconds()
			e.out(rep, func(t *tabwriter.Writer) {})
			return e.fail(err)
		}
	}
	rep.Total = time.Since(start).Seconds()
	return e.fail(e.out(rep, func(t *tabwriter.Writer) {
		row(t, "from\t%s\nmode\t%s\nroot bytes\t%d\n", res.From, res.Mode, res.RootBytes)
		if rep.Running != "" {
			row(t, "running\t%s\n", rep.Running)
		}
		row(t, "took\t%.1f s\n", rep.Total)
	}))
}

// waitVersion polls the relay's status until it answers after the reboot
// with a version other than from. The same version back means the new root
// did not boot (or was the same build): that is an error to report.
func (e *env) waitVersion(ctx context.Context, c *api.Client, from string, wait time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	// The old relayd answers until gokrazy stops it: wait for it to go.
	down := false
	var last string
	for {
		cctx, c2 := context.WithTimeout(ctx, 10*time.Second)
		st, err := c.Status(cctx)
		c2()
		switch {
		case err != nil:
			down = true
		case st.Version != from:
			return st.Version, nil
		case down:
			return st.Version, fmt.Errorf("the relay came back with the old version %s: the new root did not boot (gokrazy fell back)", st.Version)
		}
		if err != nil {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("the relay did not answer with a new version within %v (last: %s)", wait, last)
		case <-time.After(2 * time.Second): // polling a box that is rebooting
		}
	}
}
