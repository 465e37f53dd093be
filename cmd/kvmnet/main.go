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
	// and two copies of the network model: a soft limit keeps its RSS under
	// ~45 MB at 1000 namespaces for a few percent more GC work (measured in
	// docs/benchmarks.md). GOMEMLIMIT in the environment overrides it.
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(40 << 20)
	}
	os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr))
}
