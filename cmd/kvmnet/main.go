// Command kvmnet builds declarative L2 networks of Linux namespaces for KVM
// virtual machines. See README.md.
package main

import (
	"os"

	"github.com/kvmnet/kvmnet/internal/cli"
)

func main() { os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr)) }
