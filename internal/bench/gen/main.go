// Command gen writes a benchmark topology: N endpoint namespaces on one
// bridge, each with a derived MAC, an address and a default route, plus the
// host with the gateway. Used by scripts/bench.sh.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
)

func main() {
	n := flag.Int("n", 10, "number of endpoint namespaces")
	name := flag.String("name", "bench", "network name")
	flag.Parse()
	if *n < 1 || *n > 16000 {
		fmt.Fprintln(os.Stderr, "gen: -n must be 1..16000")
		os.Exit(2)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "name: %s\nnamespaces:\n  - {name: host, role: host}\n  - {name: bridge, role: bridge}\n", *name)
	for i := 1; i <= *n; i++ {
		fmt.Fprintf(&b, "  - {name: ep%d, role: endpoint, routes: [{to: default, via: 10.64.0.1}]}\n", i)
	}
	b.WriteString("bridges:\n  - {name: br0, namespace: bridge}\nlinks:\n")
	b.WriteString("  - endpoints:\n      - {namespace: host, name: eth0, addresses: [10.64.0.1/16]}\n      - {namespace: bridge, name: host, bridge: br0}\n")
	for i := 1; i <= *n; i++ {
		fmt.Fprintf(&b, "  - endpoints:\n      - {namespace: ep%d, name: eth0, addresses: [10.64.%d.%d/16]}\n      - {namespace: bridge, name: ep%d, bridge: br0}\n",
			i, (i+1)/250, (i+1)%250+2, i)
	}
	os.Stdout.WriteString(b.String())
}
