#!/usr/bin/env bash
# The README's first command: set up, build and install kvmnet to
# /usr/local/bin, then run `kvmnet up` on the built-in reference design.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x /usr/local/go/bin/go ] && export PATH="/usr/local/go/bin:$PATH"
bash scripts/setup.sh
go build -trimpath -o /usr/local/bin/kvmnet ./cmd/kvmnet
echo "installed $(command -v kvmnet)"
kvmnet up
kvmnet status
