package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// SecretExpiry is a client secret or password the configuration uses
// whose expiry the admin gave (relayctl creds put -expires): Entra's client
// secrets live at most 24 months and nothing renews them.
type SecretExpiry struct {
	Credential string    // the secret store's name
	Kind       string    // "client-secret" or "password"
	NotAfter   time.Time // when it stops working
}

// SecretExpiresMetric is the metric of the secrets' expiry (TestSecretExpiryMetric).
const SecretExpiresMetric = "siterelay_credential_secret_expires_in_seconds"

var secretExpiresDesc = prometheus.NewDesc(SecretExpiresMetric,
	"Seconds until a client secret or password the configuration uses expires, where its expiry is known (relayctl creds put -expires); negative once it has, by credential and kind.",
	[]string{"credential", "kind"}, nil)

// secretExpiries exports the secrets' expiries at scrape time.
type secretExpiries struct {
	fn    func() []SecretExpiry
	clock func() time.Time
}

func (s *secretExpiries) Describe(ch chan<- *prometheus.Desc) { ch <- secretExpiresDesc }

func (s *secretExpiries) Collect(ch chan<- prometheus.Metric) {
	now := s.clock()
	for _, x := range s.fn() {
		ch <- prometheus.MustNewConstMetric(secretExpiresDesc, prometheus.GaugeValue, x.NotAfter.Sub(now).Seconds(), x.Credential, x.Kind)
	}
}
