package appliance

import (
	"net"
	"slices"
	"testing"
)

// TestPlantOnly: the sheet gives a device the box's plant addresses, never
// loopback, link-local or the tailnet's.
func TestPlantOnly(t *testing.T) {
	var in []net.Addr
	for _, s := range []string{"10.20.0.5/24", "127.0.0.1/8", "169.254.3.4/16", "fe80::1/64", "100.101.102.103/32", "fd7a:115c:a1e0::5/128", "fd00::5/64", "::1/128"} {
		ip, n, err := net.ParseCIDR(s)
		if err != nil {
			t.Fatal(err)
		}
		n.IP = ip
		in = append(in, n)
	}
	got, want := plantOnly(in), []string{"10.20.0.5", "fd00::5"}
	if !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}
