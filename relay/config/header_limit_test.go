package config

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// TestMaxHeaderBytesKey: limits.max_header_bytes has its default, and a
// value outside 16 KiB .. max_message_bytes is refused naming the key.
func TestMaxHeaderBytesKey(t *testing.T) {
	if got := Default().Limits.MaxHeaderBytes; got != 1<<20 {
		t.Errorf("default max_header_bytes %d, want %d", got, 1<<20)
	}
	for _, tc := range []struct {
		doc string
		bad bool
	}{
		{`{"limits": {"max_header_bytes": 65536}}`, false},
		{`{"limits": {"max_header_bytes": 1000}}`, true},
		{`{"limits": {"max_header_bytes": 2000000, "max_message_bytes": 1000000}}`, true},
	} {
		c := Default()
		if err := json.Unmarshal([]byte(tc.doc), c); err != nil {
			t.Fatal(err)
		}
		errs := c.Validate()
		if got := strings.Contains(fmt.Sprint(errs), "limits.max_header_bytes"); got != tc.bad {
			t.Errorf("%s: Validate() = %v, want refused %v", tc.doc, errs, tc.bad)
		}
	}
}
