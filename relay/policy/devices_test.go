package policy

import (
	"net/netip"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/siterelay/siterelay/relay/config"
)

func deviceConfig(t *testing.T, only bool) *config.Config {
	c := testConfig(t)
	c.DevicesOnly = only
	c.Devices = []config.Device{
		{Name: "scada-boiler", Addresses: []string{"10.20.5.0/24"}, Class: "alarm", MessagesPerMinute: new(2), Burst: 1},
		{Name: "hmi-5", Addresses: []string{"10.20.5.7"}, AllowedSenders: []string{"@plant.contoso.com"}, AllowedRecipients: []string{"ops@contoso.com"}},
		{Name: "scanner-hall", Logins: []string{"scanner"}, Class: "bulk"},
		{Name: "printer", Helo: []string{"PRN-HALL-2"}, RequireAuth: false},
		{Name: "erp", Logins: []string{"erp"}, Addresses: []string{"10.20.9.9"}, RequireAuth: true},
	}
	return c
}

func TestRecogniseOrder(t *testing.T) {
	p, _ := newPolicy(t, deviceConfig(t, false))
	scanner := &Account{Username: "scanner"}
	for _, tc := range []struct {
		name  string
		ip    string
		login *Account
		helo  string
		want  string
	}{
		{"login beats address", "10.20.5.7", scanner, "prn-hall-2", "scanner-hall"},
		{"most specific address", "10.20.5.7", nil, "", "hmi-5"},
		{"network", "10.20.5.8", nil, "prn-hall-2", "scada-boiler"},
		{"mapped v4", "::ffff:10.20.5.8", nil, "", "scada-boiler"},
		{"helo, any case", "10.20.1.1", nil, "prn-hall-2", "printer"},
		{"unknown", "10.20.1.1", nil, "other", ""},
		{"login without device falls back", "10.20.5.8", &Account{Username: "nobody"}, "", "scada-boiler"},
	} {
		d := p.Recognise(netip.MustParseAddr(tc.ip), tc.login, tc.helo)
		got := ""
		if d != nil {
			got = d.Name
		}
		if got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
		}
	}
	if d := p.Recognise(netip.MustParseAddr("10.20.5.8"), nil, ""); d.Class != "alarm" {
		t.Errorf("class = %q, want alarm", d.Class)
	}
	if d := p.Recognise(netip.MustParseAddr("10.20.1.1"), nil, "prn-hall-2"); d.Class != "normal" {
		t.Errorf("default class = %q, want normal", d.Class)
	}
}

func TestAdmit(t *testing.T) {
	ip := netip.MustParseAddr("10.20.1.1")
	open, _ := newPolicy(t, deviceConfig(t, false))
	check(t, open.Admit(ip, nil, nil), 0, smtp.EnhancedCode{})
	locked, _ := newPolicy(t, deviceConfig(t, true))
	check(t, locked.Admit(ip, nil, nil), 550, smtp.EnhancedCode{5, 7, 1}, "10.20.1.1", "devices_only", "relayctl devices adopt", "relayd devices adopt")
	known := locked.Recognise(netip.MustParseAddr("10.20.5.7"), nil, "")
	check(t, locked.Admit(ip, nil, known), 0, smtp.EnhancedCode{})

	erp := locked.Recognise(netip.MustParseAddr("10.20.9.9"), nil, "")
	check(t, locked.Admit(ip, nil, erp), 530, smtp.EnhancedCode{5, 7, 0}, "erp", "require_auth")
	check(t, locked.Admit(ip, &Account{Username: "scanner"}, erp), 530, smtp.EnhancedCode{5, 7, 0}, "erp")
	check(t, locked.Admit(ip, &Account{Username: "erp"}, erp), 0, smtp.EnhancedCode{})
}

func TestDeviceAllowances(t *testing.T) {
	p, clk := newPolicy(t, deviceConfig(t, false))
	hmi := p.Recognise(netip.MustParseAddr("10.20.5.7"), nil, "")
	check(t, p.DeviceSender(hmi, "hmi5@Plant.Contoso.com"), 0, smtp.EnhancedCode{})
	check(t, p.DeviceSender(hmi, "hmi5@contoso.com"), 553, smtp.EnhancedCode{5, 7, 1}, "hmi-5", "allowed_senders")
	check(t, p.DeviceRecipient(hmi, "OPS@contoso.com"), 0, smtp.EnhancedCode{})
	check(t, p.DeviceRecipient(hmi, "boss@contoso.com"), 550, smtp.EnhancedCode{5, 7, 1}, "hmi-5", "allowed_recipients")
	check(t, p.DeviceSender(nil, "x@contoso.com"), 0, smtp.EnhancedCode{})

	// The boiler has its own allowance (2 a minute, burst 1), counted by
	// device whichever address of its network sends.
	boiler := p.Recognise(netip.MustParseAddr("10.20.5.8"), nil, "")
	check(t, p.Message(netip.MustParseAddr("10.20.5.8"), nil, boiler), 0, smtp.EnhancedCode{})
	check(t, p.Message(netip.MustParseAddr("10.20.5.9"), nil, boiler), 450, smtp.EnhancedCode{4, 7, 1}, "device scada-boiler", "2 a minute")
	clk.add(30e9)
	check(t, p.Message(netip.MustParseAddr("10.20.5.9"), nil, boiler), 0, smtp.EnhancedCode{})
}

// A device without its own rate follows the upstream's pace when that is
// below limits.messages_per_minute.
func TestFollowUpstreamPace(t *testing.T) {
	for _, tc := range []struct {
		global, pace, want int
	}{{60, 10, 10}, {60, 0, 60}, {5, 10, 5}, {0, 10, 10}} {
		c := deviceConfig(t, false)
		c.Limits.MessagesPerMinute = new(tc.global)
		p, _ := newPolicy(t, c)
		p.FollowUpstreamPace(tc.pace)
		d := p.Recognise(netip.MustParseAddr("10.20.1.1"), nil, "prn-hall-2")
		if d.perMinute != tc.want {
			t.Errorf("global %d, pace %d: got %d a minute, want %d", tc.global, tc.pace, d.perMinute, tc.want)
		}
	}
}

// Known is what a full listener protects: allowed networks of any listener
// and devices' addresses, never a login or a HELO name (unknown at
// connect).
func TestKnown(t *testing.T) {
	c := deviceConfig(t, false)
	c.Devices = append(c.Devices, config.Device{Name: "remote-plc", Addresses: []string{"192.0.2.7"}})
	p, _ := newPolicy(t, c)
	tests := []struct {
		ip   string
		want bool
	}{
		{"10.20.3.4", true},        // an allowed network
		{"::ffff:10.20.3.4", true}, // the same, mapped
		{"fd12::1", true},          // the smtp listener's IPv6 network
		{"192.0.2.7", true},        // a device's own address
		{"192.0.2.8", false},       // next to it
		{"198.51.100.1", false},    // nobody
	}
	for _, tt := range tests {
		if got := p.Known(netip.MustParseAddr(tt.ip)); got != tt.want {
			t.Errorf("Known(%s) = %v, want %v", tt.ip, got, tt.want)
		}
	}
}
