package config

import (
	"fmt"
	"net"
	"slices"
)

// Forward is where the relay's streams go besides its own disk.
type Forward struct {
	Syslog *Syslog `json:"syslog,omitempty"`
}

// Syslog forwards the trace, the audit log and the log lines to a syslog
// collector (a SIEM): RFC 5424 over TCP, octet-counted, or over TLS
// (RFC 5425). docs/fleet.md says what is sent.
type Syslog struct {
	// Address is the collector's host:port.
	Address string `json:"address"`
	// TLS turns on RFC 5425; CAFile (below the state directory when
	// relative) is the collector's CA, else the system's roots;
	// ServerName is the name its certificate must carry, else the host of
	// Address.
	TLS        bool   `json:"tls,omitempty"`
	CAFile     string `json:"ca_file,omitempty"`
	ServerName string `json:"server_name,omitempty"`
	// Streams are which of SyslogStreams go out; default all.
	Streams []string `json:"streams,omitempty"`
	// Facility is a syslog facility by name (default "local0").
	Facility string `json:"facility,omitempty"`
	// AppName is RFC 5424's APP-NAME (default "siterelay").
	AppName string `json:"app_name,omitempty"`
	// BufferBytes bounds what waits on disk for the collector (default
	// 64 MiB); past it new messages are dropped and counted.
	BufferBytes int64 `json:"buffer_bytes,omitempty"`
}

// SyslogStreams are the streams a relay can forward.
var SyslogStreams = []string{"trace", "audit", "logs"}

// SyslogFacilities are the facility names, by RFC 5424 code.
var SyslogFacilities = map[string]int{
	"kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7,
	"uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11, "ntp": 12, "security": 13, "console": 14, "solaris-cron": 15,
	"local0": 16, "local1": 17, "local2": 18, "local3": 19, "local4": 20, "local5": 21, "local6": 22, "local7": 23,
}

func (f *Forward) setDefaults() {
	s := f.Syslog
	if s == nil {
		return
	}
	if len(s.Streams) == 0 {
		s.Streams = slices.Clone(SyslogStreams)
	}
	setDefault(&s.Facility, "local0")
	setDefault(&s.AppName, "siterelay")
	setDefault(&s.BufferBytes, 64<<20)
}

func (f *Forward) validate() Errors {
	s := f.Syslog
	if s == nil {
		return nil
	}
	var errs Errors
	bad := func(key, format string, v ...any) {
		errs = append(errs, &KeyError{Key: key, Problem: fmt.Sprintf(format, v...)})
	}
	if host, port, err := net.SplitHostPort(s.Address); err != nil || host == "" || port == "" {
		bad("forward.syslog.address", "%q: want the collector's host:port (6514 is RFC 5425's port for TLS)", s.Address)
	}
	if !s.TLS && (s.CAFile != "" || s.ServerName != "") {
		bad("forward.syslog.tls", "ca_file and server_name are for TLS: set \"tls\": true")
	}
	for i, st := range s.Streams {
		if !slices.Contains(SyslogStreams, st) {
			bad(fmt.Sprintf("forward.syslog.streams[%d]", i), "%q: want one of %v", st, SyslogStreams)
		}
	}
	if _, ok := SyslogFacilities[s.Facility]; !ok {
		bad("forward.syslog.facility", "%q: want a syslog facility name such as \"local0\" or \"mail\"", s.Facility)
	}
	if len(s.AppName) > 48 || !printableASCII(s.AppName) {
		bad("forward.syslog.app_name", "%q: at most 48 printable ASCII characters without spaces (RFC 5424)", s.AppName)
	}
	if s.BufferBytes < 1<<20 || s.BufferBytes > 4<<30 {
		bad("forward.syslog.buffer_bytes", "%d: want 1 MiB to 4 GiB", s.BufferBytes)
	}
	return errs
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= 32 || s[i] >= 127 {
			return false
		}
	}
	return s != ""
}
