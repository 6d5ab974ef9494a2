package metrics

import "golang.org/x/sys/unix"

// ClockSynchronised asks the kernel (adjtimex(2)) whether its clock is
// synchronised: STA_UNSYNC clear. The NTP client (gokrazy's ntp, chrony,
// systemd-timesyncd) clears it once it has set the time.
func ClockSynchronised() (synced, known bool) {
	var tx unix.Timex
	state, err := unix.Adjtimex(&tx) // modes 0: read only
	if err != nil {
		return false, false
	}
	return state != unix.TIME_ERROR && tx.Status&unix.STA_UNSYNC == 0, true
}
