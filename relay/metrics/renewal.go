package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Renewal is one certificate the box renews itself (relay/upstream/m365
// Renewer), as the metrics see it.
type Renewal struct {
	Credential string
	NotAfter   time.Time // the certificate in force
	Due        time.Time // when renewal starts
	Failures   int       // attempts failed in a row
	Attempts   int       // attempts since start
	Renewals   int       // renewals done since start
	OldKeys    int       // old keys left on the app, their removeKey retried
}

var (
	renewFailuresDesc = prometheus.NewDesc("siterelay_credential_renewal_failures",
		"Renewal attempts of a box-made certificate that failed in a row (0 after a success or before the first attempt), by credential.", []string{"credential"}, nil)
	renewAttemptsDesc = prometheus.NewDesc("siterelay_credential_renewal_attempts_total",
		"Renewal attempts of a box-made certificate since relayd started, by credential.", []string{"credential"}, nil)
	renewDoneDesc = prometheus.NewDesc("siterelay_credential_renewal_success_total",
		"Renewals of a box-made certificate done since relayd started, by credential.", []string{"credential"}, nil)
	renewDueDesc = prometheus.NewDesc("siterelay_credential_renewal_due_in_seconds",
		"Seconds until a box-made certificate is due for renewal (upstream.m365.renew_before_days before its expiry); negative once due, by credential.", []string{"credential"}, nil)
	renewOldKeysDesc = prometheus.NewDesc("siterelay_credential_renewal_old_keys",
		"Old keys of a box-made certificate still on the app registration because removeKey failed (the box tries again), by credential.", []string{"credential"}, nil)
	renewExpiresDesc = prometheus.NewDesc("siterelay_credential_renewal_expires_in_seconds",
		"Seconds until the box-made certificate in force expires (negative once it has), by credential.", []string{"credential"}, nil)
)

// renewals exports the renewers' states at scrape time.
type renewals struct {
	fn    func() []Renewal
	clock func() time.Time
}

func (r *renewals) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{renewFailuresDesc, renewAttemptsDesc, renewDoneDesc, renewDueDesc, renewExpiresDesc, renewOldKeysDesc} {
		ch <- d
	}
}

func (r *renewals) Collect(ch chan<- prometheus.Metric) {
	now := r.clock()
	for _, x := range r.fn() {
		ch <- prometheus.MustNewConstMetric(renewFailuresDesc, prometheus.GaugeValue, float64(x.Failures), x.Credential)
		ch <- prometheus.MustNewConstMetric(renewAttemptsDesc, prometheus.CounterValue, float64(x.Attempts), x.Credential)
		ch <- prometheus.MustNewConstMetric(renewDoneDesc, prometheus.CounterValue, float64(x.Renewals), x.Credential)
		ch <- prometheus.MustNewConstMetric(renewOldKeysDesc, prometheus.GaugeValue, float64(x.OldKeys), x.Credential)
		if !x.NotAfter.IsZero() {
			ch <- prometheus.MustNewConstMetric(renewDueDesc, prometheus.GaugeValue, x.Due.Sub(now).Seconds(), x.Credential)
			ch <- prometheus.MustNewConstMetric(renewExpiresDesc, prometheus.GaugeValue, x.NotAfter.Sub(now).Seconds(), x.Credential)
		}
	}
}

// RenewalMetricNames are the metrics exported only while the box renews a
// certificate (TestRenewalMetrics checks each).
var RenewalMetricNames = []string{"siterelay_credential_renewal_failures", "siterelay_credential_renewal_attempts_total",
	"siterelay_credential_renewal_success_total", "siterelay_credential_renewal_due_in_seconds", "siterelay_credential_renewal_expires_in_seconds",
	"siterelay_credential_renewal_old_keys"}
