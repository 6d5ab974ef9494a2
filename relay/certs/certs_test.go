package certs

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestNotAfter(t *testing.T) {
	dir := t.TempDir()
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	if _, err := NotAfter(dir, ""); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("before the first start: got %v, want ErrNotExist", err)
	}
	if _, err := LoadOrCreate(dir, "", "", "relay.test", now); err != nil {
		t.Fatal(err)
	}
	got, err := NotAfter(dir, "")
	if want := now.AddDate(10, 0, 0); err != nil || !got.Equal(want) {
		t.Errorf("self-signed: got %v, %v; want %v", got, err, want)
	}
	// A configured file: the first certificate in it.
	certPEM, _, err := SelfSigned("relay.test", now.AddDate(-9, -11, 0))
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(dir, "chain.pem")
	os.WriteFile(f, append(certPEM, certPEM...), 0o644)
	if got, err := NotAfter(dir, f); err != nil || !got.Equal(now.AddDate(-9, -11, 0).AddDate(10, 0, 0)) {
		t.Errorf("configured: got %v, %v; want a month from now", got, err)
	}
	os.WriteFile(f, []byte("nothing"), 0o644)
	if _, err := NotAfter(dir, f); err == nil {
		t.Error("a file without a certificate: no error")
	}
}
