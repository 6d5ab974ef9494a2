package ctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"
)

// SDGroup is one Prometheus service discovery target group (the shape of
// file_sd and http_sd alike): a relay's /metrics on its tailnet address.
type SDGroup struct {
	Targets []string          `json:"targets"`
	Labels  map[string]string `json:"labels"`
}

// sdGroups are the groups of rows, one a relay. A relay that did not
// answer stays a target (so that `up == 0` says it), labelled with what
// the tailnet knows of it.
func sdGroups(rows []*FleetRow) []SDGroup {
	groups := []SDGroup{}
	for _, r := range rows {
		groups = append(groups, SDGroup{
			Targets: []string{net.JoinHostPort(r.Address, "80")},
			Labels:  map[string]string{"relay": r.Name, "site": r.Site, "version": r.Version, "tags": strings.Join(r.Tags, ",")},
		})
	}
	return groups
}

func (e *env) printSD(rows []*FleetRow) int {
	enc := json.NewEncoder(e.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(sdGroups(rows)); err != nil {
		return e.fail(err)
	}
	return ExitOK
}

// sd serves http_sd: each request asks the tailnet afresh.
func (e *env) sd(ctx context.Context, args []string) int {
	fs := sub("sd", e)
	tag := fs.String("tag", e.relayTag, "the tag relays carry on the tailnet (as -relay-tag)")
	listen := fs.String("listen", "127.0.0.1:9464", "address to serve Prometheus http_sd on")
	remote := fs.Bool("allow-remote", false, "allow a listen address that is not loopback (the list names every relay)")
	if pos, err := parse(fs, args); err != nil || len(pos) > 0 {
		return e.fail(usageErr("relayctl sd [-listen 127.0.0.1:PORT] [-allow-remote] [-tag TAG]"))
	}
	if err := checkTag(*tag); err != nil {
		return e.fail(usageErr("-tag: %v", err))
	}
	e.relayTag = *tag
	if err := checkLoopback(*listen, *remote); err != nil {
		return e.fail(err)
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return e.fail(fmt.Errorf("relayctl sd: %w", err))
	}
	srv := &http.Server{Handler: e.sdHandler(*tag), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	fmt.Fprintf(e.Stderr, "relayctl: serving Prometheus http_sd on http://%s/\n", l.Addr())
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return e.fail(err)
	}
	return ExitOK
}

func (e *env) sdHandler(tag string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			http.Error(w, "GET only", http.StatusMethodNotAllowed)
			return
		}
		rows, err := e.fleetRows(r.Context(), tag)
		if err != nil {
			// http_sd keeps the last good list when a refresh fails.
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(sdGroups(rows))
	})
}

// checkLoopback refuses a listen address other than loopback unless
// allowed: the list names every relay of the company.
func checkLoopback(addr string, allowRemote bool) error {
	if allowRemote {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return usageErr("-listen %q: want host:port", addr)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return usageErr("-listen %q is not a loopback address: the list names every relay; give -allow-remote to serve it there", addr)
}
