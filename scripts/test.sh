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
# The suite's thousands of test networks stay out of the host's system log
# (the tests of that log point it at sockets of their own).
export KVMNET_SYSLOG=off

before=$(ip netns list | sort)

echo "== vet"
go vet ./...
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then echo "gofmt needed:"; echo "$unformatted"; exit 1; fi

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

echo "== unit and kernel integration tests (host kernel $(uname -r))"
# -v to a log, so that the tests skipped for a missing kernel feature can be
# matched with their results in the guest below; the summary goes to stdout.
set +e
go test -count=1 -timeout 15m -v ./... > "$logs/host.log" 2>&1
host_rc=$?
set -e
grep -E '^(ok|FAIL|---|panic:|\?)|^\s+--- FAIL' "$logs/host.log" | grep -v -- '--- PASS' | grep -v -- '--- SKIP' || true
if [ "$host_rc" != 0 ]; then
  echo "host tests failed; the failing tests' output:"
  grep -B2 -A25 -- '--- FAIL' "$logs/host.log" | head -300
  exit 1
fi

if [ -f internal/guest/lane/main.go ] && [ -z "${KVMNET_SKIP_GUEST_LANE:-}" ]; then
  echo "== guest-kernel lane"
  bash scripts/guest-lane.sh 2>&1 | tee "$logs/guest.log"
  # Every test the host skipped for a missing kernel feature must have passed
  # in the guest.
  missing=0
  while IFS=$'\t' read -r name reason; do
    if grep -Eq "^\s+PASS ${name} " "$logs/guest.log"; then
      echo "  ${name}: skipped on the host (${reason}); passed in the guest"
    else
      echo "  ${name}: skipped on the host (${reason}) and did NOT pass in the guest"
      missing=1
    fi
  done < <(awk '/kernel lacks/{r=$0; sub(/^[ \t]+[^:]+:[0-9]+: /,"",r); next} /^--- SKIP: / && r!=""{print $3 "\t" r; r=""; next} {r=""}' "$logs/host.log")
  [ "$missing" = 0 ] || { echo "a kernel-feature test skipped on the host did not pass in the guest"; exit 1; }
fi

after=$(ip netns list | sort)
if [ "$before" != "$after" ]; then
  echo "the suite changed 'ip netns list':"; diff <(echo "$before") <(echo "$after") || true
  exit 1
fi
echo "== all tests passed"
