package upstream

import (
	"errors"
	"fmt"
	"testing"

	"github.com/emersion/go-smtp"
)

func TestEnhanced(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"reply", FromReply(&smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 10}, Message: "not found"}), "5.1.10"},
		{"wrapped reply", fmt.Errorf("rcpt: %w", &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}}), "5.7.1"},
		{"no enhanced code", FromReply(&smtp.SMTPError{Code: 550, EnhancedCode: smtp.NoEnhancedCode}), ""},
		{"zero enhanced code", FromReply(&smtp.SMTPError{Code: 550}), ""},
		{"no reply", &Error{Permanent: true, Err: errors.New("5.1.3 invalid recipient")}, ""},
		{"nil", nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Enhanced(tt.err); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}
