package metrics

// Refused is how many commands or messages from devices were refused since
// the metrics were made (the relay's start): siterelay_refused_total summed
// over listeners, reasons and devices. The status carries it, so a
// roll-out's gates see device refusals without scraping.
func (m *Metrics) Refused() uint64 { return m.refusedTotal.Load() }
