package appliance

import (
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/siterelay/siterelay/provisioning/audit"
	"github.com/siterelay/siterelay/relay/upstream/m365"
)

// Every step of a renewal the box does by itself is its own audit entry,
// even at one instant (the renewal takes a second): the box has no role,
// and the audit log once took its entries for a roleless caller's refused
// calls, written once a minute (this test failed: one entry of four).
func TestRenewalAudited(t *testing.T) {
	al, err := audit.Open(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer al.Close()
	ra := &renewalAudit{l: slog.New(slog.DiscardHandler)}
	ra.log.Store(al)
	now := time.Date(2027, 9, 4, 8, 0, 0, 0, time.UTC)
	for _, s := range []m365.RenewStep{
		{Time: now, Credential: "entra", Step: "start", OK: true, Detail: "renewing, expires 2027-11-02"},
		{Time: now, Credential: "entra", Step: "addKey", OK: true, KeyID: "k2", Detail: "the new certificate is registered with the app"},
		{Time: now, Credential: "entra", Step: "removeKey", OK: false, KeyID: "k1", Detail: "HTTP 503", Hint: "Graph is unavailable"},
		{Time: now, Credential: "entra", Step: "done", OK: true, KeyID: "k2"},
	} {
		ra.step(s)
	}
	got, err := al.Read(0)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string // oldest first
	for _, e := range slices.Backward(got) {
		lines = append(lines, e.Node+" | "+e.Method+" "+e.Path+" | "+e.What+" | "+e.Result)
	}
	want := []string{
		"relayd (certificate renewal) | RENEW /v1/credentials/entra | certificate renewal entra: start: renewing, expires 2027-11-02 | ok",
		"relayd (certificate renewal) | RENEW /v1/credentials/entra | certificate renewal entra: addKey (key id k2): the new certificate is registered with the app | ok",
		"relayd (certificate renewal) | RENEW /v1/credentials/entra | certificate renewal entra: removeKey (key id k1): HTTP 503 — Graph is unavailable | failed",
		"relayd (certificate renewal) | RENEW /v1/credentials/entra | certificate renewal entra: done (key id k2) | ok",
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Errorf("audit entries:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
}
