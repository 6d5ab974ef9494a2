package main

import (
	"strings"
	"testing"

	"github.com/siterelay/siterelay/relay/upstream"
)

func TestDoctorReport(t *testing.T) {
	ok := upstream.Step{Name: "MX contoso.test", OK: true, Detail: "contoso-test.mail.protection.outlook.com"}
	fail := upstream.Step{Name: "upstream", Detail: "cannot be set up: secret missing"}
	skip := upstream.Step{Name: "test message to ops@contoso.test", Skipped: true, Detail: "not sent: the upstream could not be set up"}
	tests := []struct {
		name     string
		steps    []upstream.Step
		wantCode int
		want     []string
		notWant  string
	}{
		{"all passed", []upstream.Step{ok}, 0, []string{"ok   MX contoso.test", "all 1 checks passed"}, "could not"},
		{"skipped is not passed", []upstream.Step{ok, skip}, 0, []string{"skip test message", "1 checks passed; 1 could not be checked"}, "all "},
		{"failed", []upstream.Step{ok, fail, skip}, 1, []string{"FAIL upstream", "1 of 3 checks failed", "1 could not be checked"}, "all "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b strings.Builder
			if got := report(&b, tt.steps); got != tt.wantCode {
				t.Errorf("exit status %d, want %d", got, tt.wantCode)
			}
			for _, w := range tt.want {
				if !strings.Contains(b.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, b.String())
				}
			}
			if strings.Contains(b.String(), tt.notWant) {
				t.Errorf("output has %q:\n%s", tt.notWant, b.String())
			}
		})
	}
}
