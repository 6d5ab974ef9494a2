package main

import (
	"fmt"
	"io"
	"os"

	"github.com/siterelay/siterelay/relay/config"
)

// checkConfig judges a configuration file as relayd would start it and
// lists every problem at once, each with its full key:
//
//	relayd check-config FILE
//
// checkers add findings beyond the document (a state directory's secrets
// and files) to the same list.
func checkConfig(args []string, stdout, stderr io.Writer, checkers ...config.Checker) int {
	if len(args) != 1 || len(args[0]) > 0 && args[0][0] == '-' {
		fmt.Fprintln(stderr, "usage: relayd check-config FILE")
		return 2
	}
	b, err := os.ReadFile(args[0])
	if err != nil {
		fmt.Fprintf(stderr, "relayd check-config: %v\n", err)
		return 1
	}
	cfg, probs := config.Check(b, checkers...)
	if len(probs) > 0 {
		config.WriteProblems(stderr, args[0], probs)
		return 1
	}
	fmt.Fprintln(stdout, "configuration is valid; routes, first match wins:")
	fmt.Fprint(stdout, cfg.RouteTable())
	return 0
}
