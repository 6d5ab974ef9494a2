package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestSecretExpiryMetric(t *testing.T) {
	now := time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)
	m := New(Gauges{Clock: func() time.Time { return now }, Secrets: func() []SecretExpiry {
		return []SecretExpiry{{Credential: "m365-secret", Kind: "client-secret", NotAfter: now.Add(20 * 24 * time.Hour)},
			{Credential: "hve-password", Kind: "password", NotAfter: now.Add(-time.Hour)}}
	}})
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, want := range []string{
		"# TYPE " + SecretExpiresMetric + " gauge",
		SecretExpiresMetric + `{credential="m365-secret",kind="client-secret"} 1.728e+06`,
		SecretExpiresMetric + `{credential="hve-password",kind="password"} -3600`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("no %s in\n%s", want, body)
		}
	}
}
