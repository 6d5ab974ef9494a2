package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/layout"
	"github.com/siterelay/siterelay/relay/learn"
)

// runDevices shows what learning mode saw and turns it into device
// entries:
//
//	relayd devices [-state DIR] [-config FILE] list [-json]
//	relayd devices [-state DIR] [-config FILE] adopt [-address A,B] [-lock=false]
//
// adopt prints {"devices": [...], "devices_only": true}: the configured
// devices followed by one new entry for every client that no device
// recognises (or only those at -address), to paste into config.json
// before a reload. It writes nothing. relay/learn.MakePlan makes it, as
// it makes `relayctl devices adopt`'s new configuration version.
func runDevices(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("devices", flag.ContinueOnError)
	fs.SetOutput(stderr)
	state := fs.String("state", defaultState(), "state directory")
	cfgFile := fs.String("config", "", "configuration file (default STATE/config.json)")
	asJSON := fs.Bool("json", false, "list: the learned clients as JSON")
	addrs := fs.String("address", "", "adopt: only the learned clients at these comma-separated addresses")
	lock := fs.Bool("lock", true, "adopt: devices_only in the result (false: unknown clients still relay as before)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cmd := fs.Arg(0)
	if fs.NArg() > 1 {
		// Flags may also follow the command: devices list -json.
		if err := fs.Parse(fs.Args()[1:]); err != nil {
			return 2
		}
	}
	if cmd != "list" && cmd != "adopt" || fs.NArg() > 0 && fs.Arg(0) != cmd {
		fmt.Fprintln(stderr, "usage: relayd devices [-state DIR] [-config FILE] list [-json] | adopt [-address A,B] [-lock=false]")
		return 2
	}
	dir := layout.Dir(*state)
	clients, err := learn.Read(dir.Learned())
	if errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(stderr, "relayd devices: nothing learned yet (%s does not exist); the relay writes it at most a minute after a client sends, and when it stops\n", dir.Learned())
		return 1
	}
	if err != nil {
		fmt.Fprintf(stderr, "relayd devices: %v\n", err)
		return 1
	}
	if cmd == "list" {
		if *asJSON {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			if err := enc.Encode(clients); err != nil {
				return 1
			}
			return 0
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ADDRESS\tDEVICE\tMESSAGES\tLAST SEEN\tHELO\tSENDERS\tTLS\tAUTH TRIED")
		for _, c := range clients {
			dev := c.Device
			if dev == "" {
				dev = "(unknown)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\n", c.Address, dev, c.Messages, c.LastSeen.UTC().Format("2006-01-02 15:04Z"),
				list(c.Helo), list(c.Senders), list(c.TLS), list(c.AuthTried))
		}
		tw.Flush()
		return 0
	}
	path := *cfgFile
	if path == "" {
		path = dir.Config()
	}
	doc, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintf(stderr, "relayd devices: reading configuration: %v\n", err)
		return 1
	}
	o := learn.AdoptOptions{DevicesOnly: *lock}
	if *addrs != "" {
		o.Addresses = strings.Split(*addrs, ",")
	}
	p, err := learn.MakePlan(doc, clients, o)
	if err == nil {
		_, err = config.Parse(p.Doc)
	}
	if err != nil {
		fmt.Fprintf(stderr, "relayd devices: %s: %v\n", path, err)
		return 1
	}
	out := struct {
		Devices     []json.RawMessage `json:"devices"`
		DevicesOnly bool              `json:"devices_only"`
	}{p.Devices, p.DevicesOnly}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		return 1
	}
	fmt.Fprintf(stderr, "relayd devices: %d configured, %d adopted; put \"devices\" and \"devices_only\" above into %s and reload (SIGHUP), or let relayctl devices adopt do it over the tailnet\n",
		len(p.Devices)-len(p.Adopted), len(p.Adopted), path)
	return 0
}

func list(l []string) string {
	if len(l) == 0 {
		return "-"
	}
	return strings.Join(l, ",")
}
