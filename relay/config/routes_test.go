package config

import (
	"strings"
	"testing"
	"time"
)

const listenersDoc = `"listeners":[{"name":"smtp","address":":25","mode":"smtp","allowed_networks":["10.0.0.0/8"]}]`

const hveDoc = `{"kind":"hve","m365":{"tenant":"contoso.com","client_id":"c","client_secret_secret":"s","mailbox":"hve@contoso.com","accepted_domains":["contoso.com"]}}`
const oauthDoc = `{"kind":"m365-oauth","m365":{"tenant":"contoso.com","client_id":"c","client_secret_secret":"s","mailbox":"scanner@contoso.com"}}`

func TestRoutesValid(t *testing.T) {
	c, err := Parse([]byte(`{` + listenersDoc + `,
	  "upstreams":{"hve":` + hveDoc + `,"oauth":` + oauthDoc + `},
	  "routes":[{"name":"internal","recipient_domains":["contoso.com"],"upstreams":["hve","oauth"]},
	            {"name":"external","upstreams":["oauth"],"failback_after":"2m"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	routes, ups := c.EffectiveRoutes()
	if len(routes) != 2 || len(ups) != 2 {
		t.Fatalf("routes %d upstreams %d", len(routes), len(ups))
	}
	if got, want := routes[1].FailbackAfter.D(), 2*time.Minute; got != want {
		t.Errorf("failback_after = %v, want %v", got, want)
	}
	if got, want := routes[0].FailbackMax.D(), time.Hour; got != want {
		t.Errorf("failback_max default = %v, want %v", got, want)
	}
	h := ups["hve"].M365
	if h.SMTPHost != HVEHost || h.SMTPPort != 587 || h.Limits.MaxRecipients != 50 || h.Scope != M365SMTPScope {
		t.Errorf("hve defaults: %+v", h)
	}
	if got := ups["oauth"].M365.SMTPHost; got != M365SMTPHost {
		t.Errorf("oauth smtp_host default %q: upstreams' defaults not filled", got)
	}
	table := c.RouteTable()
	for _, want := range []string{"internal", "recipients @contoso.com", "hve (hve) → oauth (m365-oauth)", "everything else"} {
		if !strings.Contains(table, want) {
			t.Errorf("route table lacks %q:\n%s", want, table)
		}
	}
}

func TestSingleUpstreamIsOneRoute(t *testing.T) {
	c, err := Parse([]byte(`{` + listenersDoc + `,"upstream":{"kind":"capture"}}`))
	if err != nil {
		t.Fatal(err)
	}
	routes, ups := c.EffectiveRoutes()
	if len(routes) != 1 || !routes[0].CatchAll() || routes[0].Upstreams[0] != DefaultRoute || ups[DefaultRoute].Kind != KindCapture {
		t.Errorf("routes %+v upstreams %+v", routes, ups)
	}
}

func TestRouteErrorsNameTheKey(t *testing.T) {
	tests := []struct {
		name, doc string
		want      []string
	}{
		{"unknown upstream", `"upstreams":{"oauth":` + oauthDoc + `},"routes":[{"name":"all","upstreams":["oauth","hve"]}]`,
			[]string{`routes[0].upstreams[1]: "hve" is not one of upstreams (have: oauth)`}},
		{"no catch-all", `"upstreams":{"oauth":` + oauthDoc + `},"routes":[{"name":"a","recipient_domains":["contoso.com"],"upstreams":["oauth"]}]`,
			[]string{"routes[0]: the last route must match every recipient"}},
		{"catch-all first", `"upstreams":{"oauth":` + oauthDoc + `},"routes":[{"name":"a","upstreams":["oauth"]},{"name":"b","upstreams":["oauth"]}]`,
			[]string{`routes[0]: route "a" matches every recipient`}},
		{"both forms", `"upstream":{"kind":"capture"},"upstreams":{"oauth":` + oauthDoc + `},"routes":[{"name":"a","upstreams":["oauth"]}]`,
			[]string{"upstream: give either upstream"}},
		{"bad route keys", `"upstreams":{"oauth":` + oauthDoc + `,"spare":` + oauthDoc + `},"routes":[{"name":"","recipient_domains":["not a domain"],"senders":["nobody"],"devices":["10.0.0.0"],"upstreams":[]}]`,
			[]string{"routes[0].name: missing", "routes[0].recipient_domains[0]", "routes[0].senders[0]", "routes[0].devices[0]", "routes[0].upstreams: missing", "upstreams.oauth: no route sends to it"}},
		{"bad upstream inside", `"upstreams":{"hve":{"kind":"hve","m365":{"mailbox":"hve@contoso.com"}}},"routes":[{"name":"a","upstreams":["hve"]}]`,
			[]string{"upstreams.hve.m365.tenant", "upstreams.hve.m365.accepted_domains"}},
		{"routes without upstreams", `"routes":[{"name":"a","upstreams":["x"]}]`,
			[]string{"upstreams: routes need upstreams"}},
		{"hve password and app", `"upstreams":{"hve":{"kind":"hve","m365":{"tenant":"t","client_id":"c","client_secret_secret":"s","password_secret":"p","mailbox":"hve@contoso.com","accepted_domains":["contoso.com"]}}},"routes":[{"name":"a","upstreams":["hve"]}]`,
			[]string{"upstreams.hve.m365.password_secret: kind hve logs in with the HVE account's password or"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(`{` + listenersDoc + `,` + tt.doc + `}`))
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
}

func TestHVEPasswordValid(t *testing.T) {
	c, err := Parse([]byte(`{` + listenersDoc + `,"upstream":{"kind":"hve","m365":{"mailbox":"hve@contoso.com","password_secret":"hve-pw","domain":"contoso.com"}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if m := c.Upstream.M365; m.UsesTokens(KindHVE) || m.AcceptedDomains[0] != "contoso.com" {
		t.Errorf("hve with a password: tokens %v, accepted %v", m.UsesTokens(KindHVE), m.AcceptedDomains)
	}
}

func TestFromMailboxOnlyForMailboxKinds(t *testing.T) {
	_, err := Parse([]byte(`{` + listenersDoc + `,"upstream":{"kind":"m365-direct","m365":{"domain":"contoso.com","from_mailbox":true}}}`))
	if err == nil || !strings.Contains(err.Error(), "upstream.m365.from_mailbox: only for the kinds that send as one mailbox") {
		t.Errorf("got %v", err)
	}
}

// FuzzParseRoutes is FuzzParse seeded with routes, so that the fuzzer
// starts from documents that reach the routes' validation.
func FuzzParseRoutes(f *testing.F) {
	f.Add([]byte(`{` + listenersDoc + `,"upstreams":{"hve":` + hveDoc + `,"oauth":` + oauthDoc + `},
	  "routes":[{"name":"internal","recipient_domains":["contoso.com"],"senders":["@plant.contoso.com"],"devices":["10.0.0.0/8"],"upstreams":["hve","oauth"]},{"name":"external","upstreams":["oauth"]}]}`))
	f.Add([]byte(`{` + listenersDoc + `,"upstreams":{"a":{"kind":"capture"}},"routes":[{"name":"a","upstreams":["a","a"],"failback_after":"1m","failback_max":"30s"}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Parse(b)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
		routes, ups := c.EffectiveRoutes()
		if len(routes) == 0 || !routes[len(routes)-1].CatchAll() {
			t.Fatalf("a valid document without a catch-all last route: %+v", routes)
		}
		for _, r := range routes {
			for _, n := range r.Upstreams {
				if _, ok := ups[n]; !ok {
					t.Fatalf("route %s names upstream %q that does not exist", r.Name, n)
				}
			}
		}
		_ = c.RouteTable()
	})
}
