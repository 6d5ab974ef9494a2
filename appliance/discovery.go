package appliance

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"

	"github.com/siterelay/siterelay/appliance/site"
	"github.com/siterelay/siterelay/netcfg/mdns"
	"github.com/siterelay/siterelay/relay"
)

// Discovery says how the box announces itself on the plant network.
type Discovery struct {
	// Hostname is the label answered as <Hostname>.local, e.g. "relay".
	Hostname string
	// Site goes into every service's TXT as site=<Site>.
	Site string
	// Instance is the service instance name devices list; empty means the host name.
	Instance string
	// Interfaces are the plant-side interfaces; empty means every one that
	// is up except loopback and the tailnet's.
	Interfaces []string
	// HTTPPort, when not 0, announces the status page as _http._tcp.
	HTTPPort int
}

// siteDiscovery returns what the box announces for site: its host name, the
// site's plant interfaces, its site name (default: the host name) and its
// instance name (default: "siterelay <site>").
func siteDiscovery(s *site.Site) *Discovery {
	d := &Discovery{Hostname: s.Hostname, Site: s.Discovery.Site, Interfaces: slices.Clone(s.Discovery.Interfaces),
		Instance: s.Discovery.Instance}
	if d.Site == "" {
		d.Site = s.Hostname
	}
	if d.Instance == "" {
		d.Instance = "siterelay " + d.Site
		if len(d.Instance) > 63 { // a long site name: cut at a character boundary
			d.Instance = strings.ToValidUTF8(d.Instance[:63], "")
		}
	}
	return d
}

// services are the DNS-SD services for what the relay really listens on:
// a listener bound to loopback is not announced, and TXT says whether TLS
// and login are offered or required, which is what a technician setting up
// a printer needs to know.
func services(st relay.Status, httpPort int, instance string) []mdns.Service {
	var out []mdns.Service
	for _, l := range st.Listeners {
		_, port, err := net.SplitHostPort(l.Address)
		p, _ := strconv.Atoi(port)
		if l.Loopback || err != nil || p == 0 {
			continue
		}
		typ := "_smtp._tcp"
		if l.Mode == "submission" {
			typ = "_submission._tcp"
		}
		out = append(out, mdns.Service{Instance: instance, Type: typ, Port: p, TXT: []string{
			"tls=" + l.TLS, "auth=" + l.Auth, "listener=" + l.Name, "maxsize=" + strconv.FormatInt(st.MaxMessageBytes, 10),
		}})
	}
	if httpPort != 0 {
		out = append(out, mdns.Service{Instance: instance, Type: "_http._tcp", Port: httpPort, TXT: []string{"path=/"}})
	}
	return out
}

// runDiscovery announces until ctx ends, then sends goodbyes; done closes
// once they are out. The responder tells the name in use after a conflict.
func runDiscovery(ctx context.Context, d Discovery, st relay.Status, log *slog.Logger) (r *mdns.Responder, done <-chan struct{}, err error) {
	host := strings.TrimSuffix(d.Hostname, ".local")
	if i := strings.IndexByte(host, '.'); i > 0 {
		host = host[:i]
	}
	r, err = mdns.New(mdns.Options{Hostname: host, Site: d.Site, Interfaces: d.Interfaces,
		Services: services(st, d.HTTPPort, d.Instance), Logger: log.With("part", "mdns")})
	if err != nil {
		return nil, nil, fmt.Errorf("discovery: %w", err)
	}
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		if err := r.Run(ctx); err != nil {
			log.Error("mDNS responder stopped", "err", err)
		}
	}()
	return r, ch, nil
}
