package relay

import (
	"github.com/prometheus/client_golang/prometheus"
)

// ConfigSource says which configuration the relay runs when it is not
// config.json: the appliance starts on the newest kept version that
// builds when config.json does not (and on none when no version does),
// and says so through this everywhere (status page, /status.json, the
// admin API, relayctl status, the metrics).
type ConfigSource struct {
	// InForce is the file in force, relative to the state directory
	// ("config.d/000042.json"); "" when no configuration builds (the relay
	// has no listener then).
	InForce string `json:"in_force"`
	// Broken is the file that did not build, kept for the admin to read
	// (`relayctl config get`), and Problem why.
	Broken  string `json:"broken"`
	Problem string `json:"problem"`
}

// configSourceMetric is siterelay_config_in_force{source}: 1 on the
// series of what is in force, "config.json" normally, "kept" on a kept
// version of config.d/, "none" with no configuration.
type configSourceMetric struct{ g *prometheus.GaugeVec }

// ConfigSources are the values of siterelay_config_in_force's label.
var ConfigSources = []string{"config.json", "kept", "none"}

func newConfigSourceMetric(reg *prometheus.Registry) *configSourceMetric {
	m := &configSourceMetric{g: prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "siterelay_config_in_force",
		Help: "Which configuration the relay runs: 1 on config.json normally, on kept when config.json did not build at start and the newest kept version (config.d/) that does runs, on none when no version builds (no listener).",
	}, []string{"source"})}
	reg.MustRegister(m.g)
	m.set(nil)
	return m
}

func (m *configSourceMetric) set(src *ConfigSource) {
	in := "config.json"
	switch {
	case src == nil:
	case src.InForce == "":
		in = "none"
	default:
		in = "kept"
	}
	for _, s := range ConfigSources {
		v := 0.0
		if s == in {
			v = 1
		}
		m.g.WithLabelValues(s).Set(v)
	}
}

// SetConfigSource records what the relay runs when it is not config.json
// (nil: config.json is in force again, after a reload of it).
func (r *Relay) SetConfigSource(src *ConfigSource) {
	if src != nil {
		c := *src
		src = &c
	}
	r.source.Store(src)
	r.sourceM.set(src)
}
