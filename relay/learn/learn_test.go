package learn

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/relaytest"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func TestObserveSaveReopen(t *testing.T) {
	path := filepath.Join(relaytest.StateDir(t), "learned-clients.json")
	clk := &clock{t: time.Date(2026, 11, 3, 8, 0, 0, 0, time.UTC)}
	s, err := Open(path, Options{Clock: clk.now})
	if err != nil {
		t.Fatal(err)
	}
	s.Observe(Sighting{Address: "10.20.5.7", Helo: "PRN-HALL-2", From: "Printer@Plant.example", AuthTried: "LOGIN", TLS: "TLS 1.0 TLS_RSA_WITH_AES_128_CBC_SHA"})
	clk.t = clk.t.Add(time.Minute)
	s.Observe(Sighting{Address: "10.20.5.7", Helo: "PRN-HALL-2", From: "printer@plant.example", HeaderFrom: "scan@printer.local", Message: true})
	if err := s.Save(); err != nil {
		t.Fatal(err)
	}
	got, err := Read(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 {
		t.Fatalf("got %d clients, want 1", len(got))
	}
	c := got[0]
	want := Client{Address: "10.20.5.7", Helo: []string{"PRN-HALL-2"}, AuthTried: []string{"LOGIN"}, Senders: []string{"printer@plant.example"},
		HeaderFroms: []string{"scan@printer.local"}, TLS: []string{"TLS 1.0 TLS_RSA_WITH_AES_128_CBC_SHA"}, Mails: 1, Messages: 1,
		FirstSeen: time.Date(2026, 11, 3, 8, 0, 0, 0, time.UTC), LastSeen: time.Date(2026, 11, 3, 8, 1, 0, 0, time.UTC),
		LastMessage: time.Date(2026, 11, 3, 8, 1, 0, 0, time.UTC)}
	if fmt.Sprintf("%+v", c) != fmt.Sprintf("%+v", want) {
		t.Errorf("got %+v\nwant %+v", c, want)
	}
	// A reopened store goes on from what was saved.
	s2, err := Open(path, Options{Clock: clk.now})
	if err != nil {
		t.Fatal(err)
	}
	s2.Observe(Sighting{Address: "10.20.5.7", Message: true})
	if got := s2.Clients()[0].Messages; got != 2 {
		t.Errorf("messages after reopen = %d, want 2", got)
	}
}

// The store and each of its lists stay bounded, the least recently seen
// client going first.
func TestBounded(t *testing.T) {
	clk := &clock{t: time.Unix(1700000000, 0)}
	s, err := Open(filepath.Join(relaytest.StateDir(t), "l.json"), Options{MaxClients: 50, Clock: clk.now})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 500 {
		clk.t = clk.t.Add(time.Second)
		s.Observe(Sighting{Address: fmt.Sprintf("10.0.%d.%d", i/250, i%250), From: fmt.Sprintf("s%d@x.example", i)})
	}
	for i := range 100 {
		s.Observe(Sighting{Address: "10.0.1.249", Helo: fmt.Sprint("h", i), From: fmt.Sprintf("f%d@x.example", i)})
	}
	cs := s.Clients()
	if len(cs) != 50 {
		t.Errorf("clients = %d, want 50", len(cs))
	}
	if cs[len(cs)-1].Address != "10.0.1.200" {
		t.Errorf("oldest kept = %s, want 10.0.1.200", cs[len(cs)-1].Address)
	}
	if c := cs[0]; len(c.Helo) != maxList || len(c.Senders) != maxList || c.Helo[maxList-1] != "h99" {
		t.Errorf("lists not bounded: %d helo, %d senders, last %q", len(c.Helo), len(c.Senders), c.Helo[len(c.Helo)-1])
	}
}

// A damaged file is set aside, not fatal: the survey is lost, no mail.
func TestDamagedFileSetAside(t *testing.T) {
	path := filepath.Join(relaytest.StateDir(t), "l.json")
	os.WriteFile(path, []byte("{not json"), 0o644)
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Clients()) != 0 {
		t.Error("clients from a damaged file")
	}
	if _, err := os.Stat(path + ".damaged"); err != nil {
		t.Errorf("damaged file not kept aside: %v", err)
	}
}

// Run saves at most once a SaveEvery and once more at its end.
func TestRunSavesAtStop(t *testing.T) {
	path := filepath.Join(relaytest.StateDir(t), "l.json")
	s, _ := Open(path, Options{SaveEvery: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	s.Observe(Sighting{Address: "10.1.1.1", Message: true})
	if _, err := os.Stat(path); err == nil {
		t.Error("saved on a message")
	}
	cancel()
	<-done
	if cs, err := Read(path); err != nil || len(cs) != 1 {
		t.Errorf("after stop: %v, %v", cs, err)
	}
}

func TestAdopt(t *testing.T) {
	cfg := &config.Config{
		Accounts: []config.Account{{Username: "erp"}, {Username: "scanner"}},
		Devices:  []config.Device{{Name: "prn-hall-2", Addresses: []string{"10.20.5.0/24"}}, {Name: "scan", Logins: []string{"scanner"}}},
	}
	seen := time.Date(2026, 11, 3, 8, 0, 0, 0, time.UTC)
	clients := []Client{
		{Address: "10.20.5.7", Helo: []string{"prn-hall-2"}, Messages: 3}, // known by network
		{Address: "10.20.6.1", Logins: []string{"scanner"}, Messages: 3},  // known by login
		{Address: "10.20.7.1", Helo: []string{"[10.20.7.1]", "PRN Hall 2"}, Senders: []string{"p@plant.example"}, // named after HELO, taken
			Messages: 5, FirstSeen: seen, LastSeen: seen, TLS: []string{"TLS 1.0 X"}},
		{Address: "10.20.7.2", Helo: []string{"localhost"}, Logins: []string{"erp", "nobody"}, Messages: 1, FirstSeen: seen, LastSeen: seen},
		{Address: "10.20.7.3", Mails: 4}, // never sent a message (refused): not a device yet
	}
	got := Adopt(clients, cfg)
	var b strings.Builder
	for _, d := range got {
		fmt.Fprintf(&b, "%s %v %v %v | %s\n", d.Name, d.Addresses, d.Logins, d.AllowedSenders, d.Owner)
	}
	want := "prn-hall-2-2 [10.20.7.1] [] [p@plant.example] | adopted: 5 messages from 10.20.7.1, 2026-11-03 to 2026-11-03; TLS 1.0 X\n" +
		"client-10-20-7-2 [10.20.7.2] [erp] [] | adopted: 1 messages from 10.20.7.2, 2026-11-03 to 2026-11-03\n"
	if b.String() != want {
		t.Errorf("got\n%swant\n%s", b.String(), want)
	}
	// What Adopt makes validates with the rest.
	full := &config.Config{Listeners: []config.Listener{{Address: ":25", Mode: "smtp", AllowedNetworks: []string{"10.0.0.0/8"}}},
		Accounts: []config.Account{{Username: "erp", PasswordHash: "$2a$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy"}, {Username: "scanner", PasswordHash: "$2a$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy"}},
		Upstream: config.Upstream{Kind: "capture"}, Devices: append(cfg.Devices, got...), DevicesOnly: true}
	full.SetDefaults()
	if errs := full.Validate(); len(errs) > 0 {
		t.Errorf("adopted devices do not validate: %v", errs)
	}
}

// Whatever the file holds, opening the store neither panics nor fails.
func FuzzOpen(f *testing.F) {
	f.Add([]byte(`{"version":1,"clients":[{"address":"10.1.1.1","helo":["a"],"messages":3,"last_seen":"2026-11-03T08:00:00Z"}]}`))
	f.Add([]byte(`{"clients":[{"address":""},{"address":"x"}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		path := filepath.Join(t.TempDir(), "l.json")
		os.WriteFile(path, b, 0o644)
		s, err := Open(path, Options{MaxClients: 5})
		if err != nil {
			t.Fatal(err)
		}
		if n := len(s.Clients()); n > 5 {
			t.Fatalf("%d clients, bound 5", n)
		}
		s.Observe(Sighting{Address: "10.9.9.9", Message: true})
		Adopt(s.Clients(), &config.Config{})
	})
}

// MakePlan turns what was learned into the devices and devices_only of a
// configuration document, keeping every other key as it was, and names
// each wrong address it was asked to adopt.
func TestMakePlan(t *testing.T) {
	doc := []byte(`{"hostname":"relay-a","listeners":[{"name":"local","address":"127.0.0.1:0","mode":"smtp","allowed_networks":["127.0.0.0/8"]}],
	  "upstream":{"kind":"capture","capture":{"directory":"outbox"}},
	  "devices":[{"name":"old-printer","addresses":["10.9.0.0/24"],"class":"bulk"}]}`)
	seen := time.Date(2026, 11, 3, 8, 0, 0, 0, time.UTC)
	clients := []Client{
		{Address: "10.20.7.1", Helo: []string{"boiler-scada"}, Senders: []string{"boiler@plant.example"}, Messages: 2, FirstSeen: seen, LastSeen: seen},
		{Address: "10.20.7.2", Helo: []string{"mfp"}, Messages: 1, FirstSeen: seen, LastSeen: seen},
		{Address: "10.9.0.5", Messages: 4, FirstSeen: seen, LastSeen: seen}, // old-printer
		{Address: "10.20.7.3", Mails: 2}, // refused only
	}
	p, err := MakePlan(doc, clients, AdoptOptions{DevicesOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, d := range p.Adopted {
		names = append(names, d.Name)
	}
	if got, want := strings.Join(names, ","), "boiler-scada,mfp"; got != want {
		t.Errorf("adopted %s, want %s", got, want)
	}
	cfg, err := config.Parse(p.Doc)
	if err != nil {
		t.Fatalf("the new document: %v\n%s", err, p.Doc)
	}
	if !cfg.DevicesOnly || len(cfg.Devices) != 3 || cfg.Devices[0].Name != "old-printer" || cfg.Devices[0].Class != "bulk" || cfg.Devices[1].Name != "boiler-scada" {
		t.Errorf("new configuration: devices_only %v, devices %+v", cfg.DevicesOnly, cfg.Devices)
	}
	// The other keys stay, in their order; devices_only is added at the end.
	if got := string(p.Doc); !strings.HasPrefix(got, `{"hostname":"relay-a","listeners":`) || !strings.HasSuffix(got, `"devices_only":true}`) {
		t.Errorf("document:\n%s", got)
	}
	if len(p.Devices) != 3 || string(p.Devices[0]) != `{"name":"old-printer","addresses":["10.9.0.0/24"],"class":"bulk"}` {
		t.Errorf("devices[0] as it was? %s", p.Devices)
	}

	// Only the chosen address; the relay not locked.
	p, err = MakePlan(doc, clients, AdoptOptions{Addresses: []string{"10.20.7.2"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Adopted) != 1 || p.Adopted[0].Name != "mfp" || p.DevicesOnly || !strings.Contains(string(p.Doc), `"devices_only":false`) {
		t.Errorf("adopting one: %+v\n%s", p.Adopted, p.Doc)
	}

	for _, tc := range []struct {
		addrs []string
		want  string
	}{
		{[]string{"printer"}, `addresses[0]: "printer" is not an IP address`},
		{[]string{"10.20.7.1", "10.1.1.1"}, "addresses[1]: nothing was learned from 10.1.1.1"},
		{[]string{"10.9.0.5"}, "addresses[0]: 10.9.0.5 is already device old-printer"},
		{[]string{"10.20.7.3"}, "addresses[0]: 10.20.7.3 has had no message accepted"},
	} {
		_, err := MakePlan(doc, clients, AdoptOptions{Addresses: tc.addrs})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: got %v, want %q", tc.addrs, err, tc.want)
		}
	}
	// Locking a relay that has no device at all is the configuration's own error.
	bare := []byte(`{"listeners":[{"name":"local","address":"127.0.0.1:0","mode":"smtp","allowed_networks":["127.0.0.0/8"]}],"upstream":{"kind":"capture","capture":{"directory":"outbox"}}}`)
	p, err = MakePlan(bare, nil, AdoptOptions{DevicesOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := config.Parse(p.Doc); err == nil || !strings.Contains(err.Error(), "devices_only") {
		t.Errorf("locking without devices: %v", err)
	}
}

func TestKnown(t *testing.T) {
	cfg := &config.Config{Devices: []config.Device{{Name: "hall", Addresses: []string{"10.20.5.0/24"}}, {Name: "prn", Addresses: []string{"10.20.5.7"}},
		{Name: "scan", Logins: []string{"scanner"}}, {Name: "byname", Helo: []string{"mfp"}}}}
	for _, tc := range []struct {
		c    Client
		want string
	}{
		{Client{Address: "10.20.5.7"}, "prn"},
		{Client{Address: "::ffff:10.20.5.8"}, "hall"},
		{Client{Address: "10.30.0.1", Logins: []string{"scanner"}}, "scan"},
		{Client{Address: "10.30.0.1", Helo: []string{"mfp"}}, ""},
	} {
		if got := Known(tc.c, cfg); got != tc.want {
			t.Errorf("Known(%+v) = %q, want %q", tc.c, got, tc.want)
		}
	}
}
