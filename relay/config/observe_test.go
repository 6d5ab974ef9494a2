package config

import (
	"strings"
	"testing"
)

func TestTraceMaxBytes(t *testing.T) {
	base := `{"listeners":[{"address":":25","mode":"smtp","allowed_networks":["10.0.0.0/8"]}],"upstream":{"kind":"capture"}`
	c, err := Parse([]byte(base + `}`))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := c.Trace.MaxBytes, int64(512<<20); got != want {
		t.Errorf("default trace.max_bytes = %d, want %d", got, want)
	}
	c, err = Parse([]byte(base + `,"trace":{"max_bytes":2097152}}`))
	if err != nil || c.Trace.MaxBytes != 2<<20 {
		t.Errorf("2 MiB: got %v, %v", c, err)
	}
	for _, v := range []string{"1000", "-5"} {
		_, err := Parse([]byte(base + `,"trace":{"max_bytes":` + v + `}}`))
		if err == nil || !strings.Contains(err.Error(), "trace.max_bytes:") {
			t.Errorf("max_bytes %s: got %v, want an error naming trace.max_bytes", v, err)
		}
	}
}
