package durable

import (
	"os"
	"path/filepath"
	"testing"
)

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "secret")
	for _, content := range []string{"first", "second, longer"} {
		if err := WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		got, _ := os.ReadFile(path)
		if string(got) != content {
			t.Errorf("content %q, want %q", got, content)
		}
	}
	st, _ := os.Stat(path)
	if got, want := st.Mode().Perm(), os.FileMode(0o600); got != want {
		t.Errorf("mode %v, want %v", got, want)
	}
	left, _ := os.ReadDir(filepath.Dir(path))
	if len(left) != 1 {
		t.Errorf("temporary files left: %v", left)
	}
}

func TestWriteFileErrors(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "file"), nil, 0o600)
	for _, tc := range []struct{ name, path string }{
		{"parent is a file", filepath.Join(dir, "file", "x")},
		{"target is a directory", dir},
	} {
		if err := WriteFile(tc.path, []byte("x"), 0o600); err == nil {
			t.Errorf("%s: no error", tc.name)
		}
	}
	if err := SyncDir(filepath.Join(dir, "missing")); err == nil {
		t.Error("SyncDir of a missing directory: no error")
	}
}
