package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestRenewalMetrics(t *testing.T) {
	now := time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)
	m := New(Gauges{Clock: func() time.Time { return now }, Renewals: func() []Renewal {
		return []Renewal{{Credential: "entra", NotAfter: now.Add(59 * 24 * time.Hour), Due: now.Add(-24 * time.Hour), Failures: 2, Attempts: 3, Renewals: 1, OldKeys: 1}}
	}})
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, want := range []string{
		`siterelay_credential_renewal_failures{credential="entra"} 2`,
		`siterelay_credential_renewal_attempts_total{credential="entra"} 3`,
		`siterelay_credential_renewal_success_total{credential="entra"} 1`,
		`siterelay_credential_renewal_due_in_seconds{credential="entra"} -86400`,
		`siterelay_credential_renewal_expires_in_seconds{credential="entra"} 5.0976e+06`,
		`siterelay_credential_renewal_old_keys{credential="entra"} 1`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("no %s", want)
		}
	}
	for _, n := range RenewalMetricNames {
		if !strings.Contains(string(body), "# TYPE "+n+" ") {
			t.Errorf("%s not exported", n)
		}
	}
}
