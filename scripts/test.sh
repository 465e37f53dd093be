#!/usr/bin/env bash
# The README's second command, and what CI runs: set up, then the whole suite:
#   1. go vet and gofmt;
#   2. unit tests and the kernel integration tests, as root, on this kernel
#      (each in throwaway namespaces with a unique prefix);
#   3. the guest-kernel lane: tests of kernel features this host lacks
#      (802.1Q, vlan_filtering, netem) inside a QEMU guest with Debian's kernel.
# It fails if the suite leaves a namespace behind.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x /usr/local/go/bin/go ] && export PATH="/usr/local/go/bin:$PATH"
bash scripts/setup.sh
export KVMNET_REQUIRE_PRIV_TESTS=1 # a missing privilege fails, never skips

before=$(ip netns list | sort)

echo "== vet"
go vet ./...
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then echo "gofmt needed:"; echo "$unformatted"; exit 1; fi

echo "== unit and kernel integration tests (host kernel $(uname -r))"
go test -count=1 -timeout 15m ./...

if [ -f internal/guest/lane/main.go ] && [ -z "${KVMNET_SKIP_GUEST_LANE:-}" ]; then
  echo "== guest-kernel lane"
  bash scripts/guest-lane.sh
fi

after=$(ip netns list | sort)
if [ "$before" != "$after" ]; then
  echo "the suite changed 'ip netns list':"; diff <(echo "$before") <(echo "$after") || true
  exit 1
fi
echo "== all tests passed"
