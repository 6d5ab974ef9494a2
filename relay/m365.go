package relay

import (
	"fmt"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/upstream"
)

// newM365 builds the Microsoft 365 upstream kinds.
func newM365(cfg *config.Config, d Deps) (upstream.Upstream, string, error) {
	return nil, "", fmt.Errorf("upstream.kind %q is not available in this build", cfg.Upstream.Kind)
}

// explain gives the scheduler a plain-language hint for upstream replies.
func explain(kind string) func(error) string { return nil }
