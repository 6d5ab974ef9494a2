package main

import (
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/siterelay/siterelay/relay/config"
)

// checkConfig judges a configuration file as relayd would start it and
// lists every problem at once, each with its full key:
//
//	relayd check-config [-state DIR] FILE
//
// With -state the secrets and files the file names are judged there (a
// missing one is a problem: the box would hold that mail); without it they
// are listed as what must be provisioned before mail can flow. checkers add
// further findings to the same list (tests).
func checkConfig(args []string, stdout, stderr io.Writer, checkers ...config.Checker) int {
	fs := flag.NewFlagSet("check-config", flag.ContinueOnError)
	fs.SetOutput(stderr)
	state := fs.String("state", "", "state directory whose secrets and files to check (default: list what must be provisioned)")
	usage := func() int {
		fmt.Fprintln(stderr, "usage: relayd check-config [-state DIR] FILE")
		return 2
	}
	if fs.Parse(args) != nil {
		return 2
	}
	rest := fs.Args()
	if len(rest) > 1 { // FILE -state DIR
		if fs.Parse(rest[1:]) != nil {
			return 2
		}
		rest = append(rest[:1], fs.Args()...)
	}
	if len(rest) != 1 || len(rest[0]) > 0 && rest[0][0] == '-' {
		return usage()
	}
	b, err := os.ReadFile(rest[0])
	if err != nil {
		fmt.Fprintf(stderr, "relayd check-config: %v\n", err)
		return 1
	}
	if *state != "" {
		checkers = append(checkers, config.StateChecker(*state, ""))
	}
	cfg, probs := config.Check(b, checkers...)
	if len(probs) > 0 {
		config.WriteProblems(stderr, rest[0], probs)
		return 1
	}
	fmt.Fprintln(stdout, "configuration is valid; routes, first match wins:")
	fmt.Fprint(stdout, cfg.RouteTable())
	if *state == "" {
		for _, n := range config.ProvisionNotes(cfg, "") {
			fmt.Fprintln(stdout, n)
		}
	}
	return 0
}
