package procs

import (
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

func TestCount(t *testing.T) {
	tests := []struct{ cpus, want int }{{1, 2}, {2, 3}, {4, 5}, {0, 2}}
	for _, tt := range tests {
		if got := Count(tt.cpus); got != tt.want {
			t.Errorf("Count(%d) = %d, want %d", tt.cpus, got, tt.want)
		}
	}
}

// Start is run in a child process of this test binary, so that the Ps it
// sets and the environment it reads are the child's own.
func TestStart(t *testing.T) {
	if os.Getenv("PROCS_CHILD") == "1" {
		before := runtime.GOMAXPROCS(0)
		n, set := Start()
		os.Stdout.WriteString(strconv.Itoa(before) + " " + strconv.Itoa(n) + " " + strconv.FormatBool(set) + " " + strconv.Itoa(runtime.GOMAXPROCS(0)) + "\n")
		return
	}
	tests := []struct {
		name string
		env  string // GOMAXPROCS, "" for none
		want func(before int) string
	}{
		{"one more", "", func(b int) string { return strconv.Itoa(b) + " " + strconv.Itoa(b+1) + " true " + strconv.Itoa(b+1) }},
		{"the operator's", "7", func(int) string { return "7 7 false 7" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestStart$")
			cmd.Env = append(os.Environ(), "PROCS_CHILD=1")
			if tt.env != "" {
				cmd.Env = append(cmd.Env, "GOMAXPROCS="+tt.env)
			} else {
				cmd.Env = withoutVar(cmd.Env, "GOMAXPROCS")
			}
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("child: %v", err)
			}
			line, _, _ := strings.Cut(string(out), "\n")
			f := strings.Fields(line)
			if len(f) != 4 {
				t.Fatalf("child printed %q", out)
			}
			before, _ := strconv.Atoi(f[0])
			if got, want := line, tt.want(before); got != want {
				t.Errorf("before, Start's n, set, after: got %q, want %q", got, want)
			}
		})
	}
}

func withoutVar(env []string, name string) []string {
	var out []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, name+"=") {
			out = append(out, kv)
		}
	}
	return out
}
