package appliance

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSecretStore(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // past the umask
			t.Fatal(err)
		}
	}
	write("smarthost-password", "s3cret\r\n", 0o600)
	write("inner-space", "  two words  \n", 0o600)
	write("world-readable", "leaked", 0o644)
	write("group-readable", "leaked", 0o640)
	write(".hidden", "x", 0o600)
	read := secretStore(dir)
	for _, tc := range []struct {
		name, want, wantErr string
	}{
		{"smarthost-password", "s3cret", ""},          // the line ending an editor adds is not part of it
		{"inner-space", "  two words  ", ""},          // only line endings are trimmed
		{"world-readable", "", "readable by others"},  // a secret others can read is refused
		{"group-readable", "", "chmod 600"},           // and says how to fix it
		{"missing", "", `secret "missing"`},           // names the secret
		{"../config.json", "", "use letters, digits"}, // no way out of the store
		{"a/b", "", "use letters, digits"},            //
		{".hidden", "", "use letters, digits"},        //
		{"", "", "use letters, digits"},               //
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := read(tc.name)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("read(%q) = %q, %v; want an error containing %q", tc.name, got, err, tc.wantErr)
				}
				if strings.Contains(err.Error(), "leaked") {
					t.Errorf("the error shows the secret: %v", err)
				}
				return
			}
			if err != nil || string(got) != tc.want {
				t.Errorf("read(%q) = %q, %v; want %q", tc.name, got, err, tc.want)
			}
		})
	}
}
