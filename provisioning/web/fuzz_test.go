package web

import (
	"net/url"
	"testing"
)

// FuzzTracePage: any query string on the trace page is a page or a 400
// naming the parameter, never a failure of the relay.
func FuzzTracePage(f *testing.F) {
	for _, s := range []string{"", "since=24h", "since=2026-12-01T00:00:00Z&limit=5", "limit=0", "since=-1h", "kind=pigeon", "queue_id=%00&since=%ff", "limit=99999999999999999999"} {
		f.Add(s)
	}
	h := newHarness(f)
	f.Fuzz(func(t *testing.T, q string) {
		w := h.do("GET", "/admin/trace?"+url.PathEscape(q), viewer, nil, nil)
		if w.Code != 200 && w.Code != 400 {
			t.Fatalf("trace?%s: %d %s", q, w.Code, w.Body)
		}
	})
}
