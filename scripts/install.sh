#!/usr/bin/env bash
# The README's first command: set up, build and install kvmnet to
# /usr/local/bin, then run `kvmnet up` on the built-in reference design.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x /usr/local/go/bin/go ] && export PATH="/usr/local/go/bin:$PATH"
bash scripts/setup.sh
go build -trimpath -o /usr/local/bin/kvmnet ./cmd/kvmnet
# The built-in VM guest's /init (static), for kvmnet run outside this tree.
mkdir -p /usr/local/lib/kvmnet
CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /usr/local/lib/kvmnet/agent ./internal/vm/agent
echo "installed $(command -v kvmnet) and /usr/local/lib/kvmnet/agent"
kvmnet up
kvmnet status
