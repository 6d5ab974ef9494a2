//go:build !race

package route_test

// raceEnabled says the race detector is on: the figures are not measured then.
const raceEnabled = false
