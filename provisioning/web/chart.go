package web

import (
	"fmt"
	"html/template"
	"strings"
	"time"

	"github.com/siterelay/siterelay/provisioning/api"
)

// chartKinds are the chart's series, with their colours.
var chartKinds = []struct{ kind, colour string }{
	{"received", "#0b57d0"},
	{"delivered", "#2e7d32"},
	{"deferred", "#c77700"},
	{"bounced", "#c62828"},
}

// chartHours is the chart's span, one bucket an hour.
const chartHours = 24

// series is one line of the chart and its total, for the legend.
type series struct {
	Kind   string
	Colour string
	Total  int
	counts [chartHours]int
}

// hourly counts trace events by kind into the last chartHours hours before
// now (the last bucket is the hour now is in).
func hourly(ev []api.TraceEvent, now time.Time) []series {
	end := now.Truncate(time.Hour).Add(time.Hour)
	start := end.Add(-chartHours * time.Hour)
	out := make([]series, len(chartKinds))
	idx := map[string]int{}
	for i, k := range chartKinds {
		out[i].Kind, out[i].Colour = k.kind, k.colour
		idx[k.kind] = i
	}
	for _, e := range ev {
		i, ok := idx[e.Kind]
		if !ok || e.Time.Before(start) || !e.Time.Before(end) {
			continue
		}
		out[i].counts[int(e.Time.Sub(start)/time.Hour)]++
		out[i].Total++
	}
	return out
}

// svg draws the series as lines over the hours: numbers only, no data from
// messages, so it is safe as HTML.
func svg(ss []series, now time.Time) template.HTML {
	const w, h, left, bottom, top = 480.0, 170.0, 34.0, 22.0, 8.0
	max := 1
	for _, s := range ss {
		for _, n := range s.counts {
			if n > max {
				max = n
			}
		}
	}
	x := func(i int) float64 { return left + (w-left-6)*float64(i)/float64(chartHours-1) }
	y := func(n int) float64 { return top + (h-top-bottom)*(1-float64(n)/float64(max)) }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg id="chart" viewBox="0 0 %g %g" width="100%%" role="img" aria-label="messages per hour, last 24 hours" xmlns="http://www.w3.org/2000/svg">`, w, h)
	fmt.Fprintf(&b, `<g stroke="#d0d5db" stroke-width="1"><line x1="%g" y1="%g" x2="%g" y2="%g"/><line x1="%g" y1="%g" x2="%g" y2="%g"/></g>`,
		left, y(0), w-6, y(0), left, y(max), w-6, y(max))
	fmt.Fprintf(&b, `<g font-size="10" fill="#59636e" font-family="system-ui,sans-serif"><text x="%g" y="%g" text-anchor="end">%d</text><text x="%g" y="%g" text-anchor="end">0</text>`,
		left-4, y(max)+4, max, left-4, y(0)+4)
	end := now.Truncate(time.Hour)
	for i := 0; i < chartHours; i += 6 {
		fmt.Fprintf(&b, `<text x="%g" y="%g" text-anchor="middle">%s</text>`, x(i), h-6, end.Add(time.Duration(i-chartHours+1)*time.Hour).UTC().Format("15:04"))
	}
	fmt.Fprintf(&b, `<text x="%g" y="%g" text-anchor="end">now</text></g>`, w-6, h-6)
	for _, s := range ss {
		fmt.Fprintf(&b, `<polyline class="%s" fill="none" stroke="%s" stroke-width="2" points="`, s.Kind, s.Colour)
		for i, n := range s.counts {
			fmt.Fprintf(&b, "%.1f,%.1f ", x(i), y(n))
		}
		b.WriteString(`"/>`)
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}
