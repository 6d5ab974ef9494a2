package ctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/relay/safetext"
)

func (e *env) config(ctx context.Context, args []string) int {
	if len(args) == 0 {
		return e.fail(usageErr("relayctl config get|versions|put FILE [-dry-run] [-base VERSION] [-force]|rollback VERSION"))
	}
	op := args[0]
	fs := sub("config "+op, e)
	dry := fs.Bool("dry-run", false, "only show what would change")
	base := fs.Int("base", 0, "put: the configuration version FILE was based on (config get prints it); default: the one in force now")
	force := fs.Bool("force", false, "put: overwrite even when another version came in force since -base")
	pos, err := parse(fs, args[1:])
	if err != nil {
		return e.fail(err)
	}
	switch {
	case op == "get" && len(pos) == 0:
		return e.call(ctx, func(ctx context.Context, c *api.Client) error {
			d, err := c.Config(ctx)
			if err != nil {
				return err
			}
			if e.json {
				return e.out(d, nil)
			}
			row(e.Stderr, "version %d\n", d.Version)
			_, err = io.WriteString(e.Stdout, safetext.EscapeText(string(d.Config))+"\n")
			return err
		})
	case op == "versions" && len(pos) == 0:
		return e.call(ctx, func(ctx context.Context, c *api.Client) error {
			l, err := c.ConfigVersions(ctx)
			if err != nil {
				return err
			}
			return e.out(l, func(t *tabwriter.Writer) {
				fmt.Fprintln(t, "VERSION\tTIME\tBY\tIN FORCE")
				for _, v := range l {
					cur := ""
					if v.Current {
						cur = "*"
					}
					row(t, "%d\t%s\t%s\t%s\n", v.Version, v.Time.UTC().Format(time.RFC3339), v.By, cur)
				}
			})
		})
	case op == "put" && len(pos) == 1:
		doc, err := readInput(pos[0], e.Stdin)
		if err != nil {
			return e.fail(err)
		}
		if !json.Valid(doc) {
			return e.fail(fmt.Errorf("%s is not JSON", pos[0]))
		}
		return e.change(ctx, func(ctx context.Context, c *api.Client) error {
			var r *api.ConfigResult
			var err error
			if *force {
				r, err = c.PutConfig(ctx, doc, *dry)
			} else {
				var v int
				if v, err = e.baseVersion(ctx, c, *base); err != nil {
					return err
				}
				r, err = c.PutConfigBased(ctx, doc, *dry, v)
			}
			var ae *api.Error
			if errors.As(err, &ae) && ae.Code == api.CodeStale {
				// What this put would change of the version in force now:
				// the other change is in there.
				if d, derr := c.PutConfig(ctx, doc, true); derr == nil {
					fmt.Fprintf(e.Stderr, "relayctl: %s\n", ae.Message)
					fmt.Fprintf(e.Stderr, "relayctl: putting %s now would change version %d so:\n", pos[0], d.Version)
					t := tabwriter.NewWriter(e.Stderr, 0, 4, 2, ' ', 0)
					e.changes(t, d)
					t.Flush()
					fmt.Fprintln(e.Stderr, "relayctl: nothing was changed; run again with -force to overwrite, or merge and put with -base of the version in force")
				}
				return err
			}
			if err != nil {
				return err
			}
			return e.out(r, func(t *tabwriter.Writer) { e.changes(t, r) })
		})
	case op == "rollback" && len(pos) == 1:
		var v int
		if _, err := fmt.Sscan(pos[0], &v); err != nil || v <= 0 {
			return e.fail(usageErr("relayctl config rollback VERSION (a number; config versions lists them)"))
		}
		return e.change(ctx, func(ctx context.Context, c *api.Client) error {
			r, err := c.Rollback(ctx, v)
			if err != nil {
				return err
			}
			return e.out(r, func(t *tabwriter.Writer) { e.changes(t, r) })
		})
	}
	return e.fail(usageErr("relayctl config get|versions|put FILE [-dry-run] [-base VERSION] [-force]|rollback VERSION"))
}

func (e *env) changes(t *tabwriter.Writer, r *api.ConfigResult) {
	if r.DryRun {
		row(t, "dry run against version %d: %d change(s), nothing applied\n", r.Version, len(r.Changes))
	} else {
		row(t, "version %d in force: %d change(s)\n", r.Version, len(r.Changes))
	}
	for _, c := range r.Changes {
		old, nw := string(c.Old), string(c.New)
		if old == "" {
			old = "(none)"
		}
		if nw == "" {
			nw = "(removed)"
		}
		row(t, "  %s\t%s\t->\t%s\n", c.Key, old, nw)
	}
}

// baseVersion is the configuration version a change says it is based on:
// the one given, else the one in force now (so two puts at once from one
// version give one 409 rather than one lost change).
func (e *env) baseVersion(ctx context.Context, c *api.Client, given int) (int, error) {
	if given > 0 {
		return given, nil
	}
	st, err := c.Status(ctx)
	if err != nil {
		return 0, err
	}
	return st.ConfigVersion, nil
}

// readInput reads a file, or stdin for "-".
func readInput(name string, stdin io.Reader) ([]byte, error) {
	if name == "-" {
		return io.ReadAll(io.LimitReader(stdin, api.MaxBody+1))
	}
	return os.ReadFile(name)
}
