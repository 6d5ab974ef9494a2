package config

import (
	"fmt"
	"testing"
)

func TestKindQuestions(t *testing.T) {
	tests := []struct {
		kind                                                           Kind
		known, microsoft, submission, mx, oauth, mbox, tokenOrPassword bool
	}{
		{KindCapture, true, false, false, false, false, false, false},
		{KindSMTP, true, false, false, false, false, false, false},
		{KindM365OAuth, true, true, true, false, true, true, false},
		{KindM365Password, true, true, true, false, false, true, false},
		{KindM365Connector, true, true, false, true, false, false, false},
		{KindM365Direct, true, true, false, true, false, false, false},
		{KindGraph, true, true, false, false, true, true, false},
		{KindHVE, true, true, false, false, false, true, true},
		{"m365-carrier-pigeon", false, false, false, false, false, false, false},
		{"", false, false, false, false, false, false, false},
	}
	for _, tt := range tests {
		t.Run(string(tt.kind), func(t *testing.T) {
			k := tt.kind
			got := fmt.Sprint(k.Known(), k.Microsoft(), k.Submission(), k.MX(), k.OAuth(), k.Mailbox(), k.TokenOrPassword())
			want := fmt.Sprint(tt.known, tt.microsoft, tt.submission, tt.mx, tt.oauth, tt.mbox, tt.tokenOrPassword)
			if got != want {
				t.Errorf("Known, Microsoft, Submission, MX, OAuth, Mailbox, TokenOrPassword = %s, want %s", got, want)
			}
		})
	}
	if len(Kinds) != 8 {
		t.Errorf("%d kinds, want 8", len(Kinds))
	}
}
