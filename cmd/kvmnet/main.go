// Command kvmnet builds declarative L2 networks of Linux namespaces for KVM
// virtual machines. See README.md.
package main

import (
	"os"
	"runtime/debug"

	"github.com/kvmnet/kvmnet/internal/cli"
)

func main() {
	// kvmnet is a short-lived command whose heap is mostly the decoded YAML
	// and two copies of the network model. It collects garbage less often
	// than Go's default (GOGC=400: a no-op up at 500 namespaces runs one
	// collection instead of four, ~4 ms less), and a soft limit bounds the
	// heap that lets grow: RSS ~50 MB at 1000 namespaces (measured in
	// docs/benchmarks.md). GOGC and GOMEMLIMIT in the environment override.
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(40 << 20)
	}
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr))
}
