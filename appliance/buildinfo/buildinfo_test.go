package buildinfo

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		v    string
		want bool
	}{
		{"v1.2.3", true}, {"1a2b3c4d5e6f+dirty", true}, {"site_a-2026.12.01", true},
		{"", false}, {"v1 2", false}, {`v1"`, false}, {"<b>", false}, {strings.Repeat("x", MaxLen+1), false},
	} {
		if got := Check(tc.v) == nil; got != tc.want {
			t.Errorf("Check(%q) ok = %v, want %v", tc.v, got, tc.want)
		}
	}
}

func TestFromBuildInfo(t *testing.T) {
	for _, tc := range []struct {
		name string
		bi   *debug.BuildInfo
		want string
	}{
		{"release", &debug.BuildInfo{Main: debug.Module{Version: "v1.4.0"}}, "v1.4.0"},
		{"commit", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "0123456789abcdef"}, {Key: "vcs.modified", Value: "true"}}}, "0123456789ab+dirty"},
		{"nothing", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, ""},
	} {
		if got := fromBuildInfo(tc.bi, true); got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
		}
	}
}

// TestStamp builds a program with -ldflags=-X Symbol=... as sitegen
// does and checks Version reports it.
func TestStamp(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a program")
	}
	dir := t.TempDir()
	main := filepath.Join(dir, "main.go")
	os.WriteFile(main, []byte("package main\n\nimport (\"fmt\"; \"github.com/siterelay/siterelay/appliance/buildinfo\")\n\nfunc main() { fmt.Print(buildinfo.Version()) }\n"), 0o644)
	bin := filepath.Join(dir, "v")
	cmd := exec.Command("go", "build", "-ldflags=-X "+Symbol+"=v9.9.9-test", "-o", bin, main)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(out), "v9.9.9-test"; got != want {
		t.Errorf("stamped build reports %q, want %q", got, want)
	}
}
