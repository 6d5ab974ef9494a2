package ctl

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/siterelay/siterelay/provisioning/api"
)

// FleetRow is one relay in relayctl fleet.
type FleetRow struct {
	Name          string    `json:"name"`
	Address       string    `json:"address"`
	Reachable     bool      `json:"reachable"`
	Error         string    `json:"error,omitempty"`
	Site          string    `json:"site,omitempty"`
	Version       string    `json:"version,omitempty"`
	Health        string    `json:"health,omitempty"`
	Queue         int       `json:"queue"`
	OldestAge     string    `json:"oldest_age,omitempty"`
	Upstream      string    `json:"upstream,omitempty"`
	LastHint      string    `json:"last_hint,omitempty"`
	DiskFree      int64     `json:"disk_free"`
	NearestExpiry time.Time `json:"nearest_expiry,omitzero"`
	// Tags are the relay's tags on the tailnet (from the control server).
	Tags []string `json:"tags,omitempty"`
}

func (e *env) fleet(ctx context.Context, args []string) int {
	fs := sub("fleet", e)
	tag := fs.String("tag", e.relayTag, "the tag relays carry on the tailnet (as -relay-tag)")
	sd := fs.Bool("prometheus-sd", false, "print Prometheus file_sd JSON of every relay's tailnet /metrics")
	if pos, err := parse(fs, args); err != nil || len(pos) > 0 {
		return e.fail(usageErr("relayctl fleet [-tag TAG] [-prometheus-sd]"))
	}
	if err := checkTag(*tag); err != nil {
		return e.fail(usageErr("-tag: %v", err))
	}
	e.relayTag = *tag
	rows, err := e.fleetRows(ctx, *tag)
	if err != nil {
		return e.fail(err)
	}
	if *sd {
		return e.printSD(rows)
	}
	unreachable := 0
	for _, r := range rows {
		if !r.Reachable {
			unreachable++
		}
	}
	if rows == nil {
		rows = []*FleetRow{}
	}
	err = e.out(rows, func(t *tabwriter.Writer) {
		fmt.Fprintln(t, "SITE\tNAME\tVERSION\tHEALTH\tQUEUE\tOLDEST\tUPSTREAM\tLAST HINT\tDISK FREE\tEXPIRES")
		for _, r := range rows {
			if !r.Reachable {
				row(t, "-\t%s\t-\t%s\t-\t-\t-\t-\t-\t-\n", r.Name, r.Error)
				continue
			}
			row(t, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%.50s\t%s\t%s\n", r.Site, r.Name, r.Version, r.Health, r.Queue, dash(r.OldestAge), r.Upstream, dash(r.LastHint), bytesStr(r.DiskFree), day(r.NearestExpiry))
		}
	})
	if err != nil {
		return e.fail(err)
	}
	if unreachable > 0 {
		row(e.Stderr, "relayctl: %d of %d relays unreachable\n", unreachable, len(rows))
		return ExitUnreachable
	}
	return ExitOK
}

// fleetRows asks the tailnet for every relay carrying tag and each relay
// for its status, at once; a relay that does not answer is a row with its
// error. Each connection is checked by WhoIs like any other (identity.go).
func (e *env) fleetRows(ctx context.Context, tag string) ([]*FleetRow, error) {
	st, err := e.tn.peers(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: listing the tailnet: %v", api.ErrUnreachable, err)
	}
	var rows []*FleetRow
	ids := map[*FleetRow]*Relay{}
	for _, p := range st.Peer {
		if !hasTag(p, tag) || len(p.TailscaleIPs) == 0 {
			continue
		}
		r := &FleetRow{Name: strings.Split(strings.TrimSuffix(p.DNSName, "."), ".")[0], Address: p.TailscaleIPs[0].String(), Tags: p.Tags.AsSlice()}
		rows = append(rows, r)
		ids[r] = &Relay{Addr: p.TailscaleIPs[0], NodeID: p.ID}
	}
	slices.SortFunc(rows, func(a, b *FleetRow) int { return strings.Compare(a.Name, b.Name) })
	var wg sync.WaitGroup
	now := time.Now()
	for _, r := range rows {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, e.timeout)
			defer cancel()
			s, err := api.NewClient(r.Address, e.dialRelay(ids[r])).Status(cctx)
			if err != nil {
				r.Error = err.Error()
				if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, api.ErrUnreachable) {
					r.Error = "unreachable"
				}
				return
			}
			r.Reachable, r.Site, r.Version, r.Health, r.Queue = true, s.Site, s.Version, s.Health, s.Queue.Messages
			if !s.Queue.Oldest.IsZero() {
				r.OldestAge = ago(s.Queue.Oldest, now)
			}
			r.Upstream = "ok"
			if s.Upstream.Failing {
				r.Upstream = "failing"
			}
			if p := s.Upstream.LastProblem; p != nil {
				r.LastHint = p.Hint
				if r.LastHint == "" {
					r.LastHint = p.Reply
				}
			}
			r.DiskFree, r.NearestExpiry = s.Disk.FreeBytes, s.NearestExpiry
		}()
	}
	wg.Wait()
	return rows, nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
