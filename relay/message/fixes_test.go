package message

import (
	"strings"
	"testing"
)

// The per-device fixes: each row fails without its option's code.
func TestPrepareDeviceFixes(t *testing.T) {
	tests := []struct {
		name, in    string
		opts        Options
		want        string // the header section
		wantSubject string
	}{
		{"add From when missing", "Subject: s\r\n\r\nb\r\n", Options{AddFrom: "boiler@plant.contoso.com"},
			"Subject: s\r\nFrom: <boiler@plant.contoso.com>\r\n\r\n", "s"},
		{"add From keeps an existing one", "From: a@b.example\r\n\r\nb\r\n", Options{AddFrom: "boiler@plant.contoso.com"},
			"From: a@b.example\r\n\r\n", ""},
		{"clean display name", "From: \"Printer <hall@2>\" <p@x.local>\r\n\r\nb\r\n", Options{CleanDisplayName: true},
			"From: \"Printer hall 2\" <p@x.local>\r\n\r\n", ""},
		{"clean display name of raw 8-bit bytes", "From: Dr\xfccker <p@x.local>\r\n\r\nb\r\n", Options{CleanDisplayName: true},
			"From: \"Dr cker\" <p@x.local>\r\n\r\n", ""},
		{"clean display name with rewrite", "From: \"p@x.local\" <p@x.local>\r\n\r\nb\r\n", Options{CleanDisplayName: true, RewriteFrom: "relay@contoso.com"},
			"From: \"p x.local\" <relay@contoso.com>\r\nReply-To: \"p@x.local\" <p@x.local>\r\n\r\n", ""},
		{"a clean name is left as it was", "From:   Scanner <p@x.local>\r\n\r\nb\r\n", Options{CleanDisplayName: true},
			"From:   Scanner <p@x.local>\r\n\r\n", ""},
		{"subject prefix", "Subject:  temperature high\r\n\r\nb\r\n", Options{SubjectPrefix: "[boiler]"},
			"Subject: [boiler] temperature high\r\n\r\n", "[boiler] temperature high"},
		{"subject prefix once", "Subject: [boiler] again\r\n\r\nb\r\n", Options{SubjectPrefix: "[boiler]"},
			"Subject: [boiler] again\r\n\r\n", "[boiler] again"},
		{"subject prefix on a message without Subject", "X: y\r\n\r\nb\r\n", Options{SubjectPrefix: "[boiler]"},
			"X: y\r\nSubject: [boiler]\r\n\r\n", "[boiler]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, info, err := prepare(t, tt.in, tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			if h := got[:info.HeaderBytes]; h != tt.want {
				t.Errorf("header got\n%q\nwant\n%q", h, tt.want)
			}
			if info.Subject != tt.wantSubject {
				t.Errorf("subject = %q, want %q", info.Subject, tt.wantSubject)
			}
			if !strings.HasSuffix(got, "b\r\n") {
				t.Errorf("body lost: %q", got)
			}
		})
	}
}
