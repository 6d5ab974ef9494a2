package audit

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/siterelay/siterelay/provisioning/api"
)

// The observer (the audit stream to syslog) is told of every entry once it
// is written, in order, as the log holds it: numbered, cut to the bound,
// refusals of callers with no role summarised as in the file; an entry the
// disk refused is not observed.
func TestObserverSeesWhatIsWritten(t *testing.T) {
	dir := t.TempDir()
	l, err := Open(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var got []api.AuditEntry
	l.SetObserver(func(e api.AuditEntry) { got = append(got, e) })
	t0 := time.Date(2026, 12, 7, 9, 0, 0, 0, time.UTC)
	l.Append(api.AuditEntry{Time: t0, Login: "ana@example.com", Node: "laptop", Role: api.Admin, What: "put credential m365-secret (client-secret)", Result: api.AuditResultStarted})
	l.Append(api.AuditEntry{Time: t0, Login: "ana@example.com", Node: "laptop", Role: api.Admin, What: strings.Repeat("w", 2*MaxField), Result: "ok"})
	for i := range 3 { // the first is written, the next two counted into a summary
		l.Append(api.AuditEntry{Time: t0.Add(time.Duration(i) * time.Second), Node: "stranger", Path: "/v1/config", Result: api.CodeForbidden, Status: 403})
	}
	l.Flush(t0.Add(2 * SummaryEvery))

	type row struct {
		Seq    uint64
		Actor  string
		Result string
		Count  int
		Cut    bool
	}
	var rows []row
	for _, e := range got {
		rows = append(rows, row{e.Seq, e.Login + e.Node, e.Result, e.Count, e.Cut})
	}
	want := []row{
		{1, "ana@example.comlaptop", "started", 0, false},
		{2, "ana@example.comlaptop", "ok", 0, true},
		{3, "stranger", api.CodeForbidden, 0, false},
		{4, "stranger", api.CodeForbidden, 2, false},
	}
	if len(rows) != len(want) {
		t.Fatalf("observed %+v, want %+v", rows, want)
	}
	for i := range want {
		if rows[i] != want[i] {
			t.Errorf("entry %d: got %+v, want %+v", i, rows[i], want[i])
		}
	}
	if n := len(got[1].What); n > MaxField {
		t.Errorf("observed a %d-byte action, the log keeps %d", n, MaxField)
	}
	written, _ := l.Read(0)
	if len(written) != len(got) {
		t.Errorf("%d entries in the log, %d observed", len(written), len(got))
	}

	// A full disk: the entry is refused to the caller and not observed.
	full := t.TempDir()
	if err := os.Symlink("/dev/full", filepath.Join(full, current)); err != nil {
		t.Fatal(err)
	}
	lf, err := Open(full, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	n := 0
	lf.SetObserver(func(api.AuditEntry) { n++ })
	if err := lf.Append(api.AuditEntry{Node: "admin", Role: api.Admin, What: "x"}); err == nil || n != 0 {
		t.Errorf("append on a full disk: err %v, observed %d; want an error and nothing observed", err, n)
	}
}
