#!/usr/bin/env bash
# The guest-kernel test lane: runs the kernel integration tests (the kernel
# feature probes, the whole lab suite with its VLAN tests, netns and cli)
# inside a QEMU guest booted with Debian's cloud kernel, which has what this
# host's kernel lacks (802.1Q VLANs, bridge vlan_filtering, netem). See
# docs/guest-lane.md.
#
#   scripts/guest-lane.sh [lane flags]      e.g. -v, -run VLAN, -timeout 10m
#
# Exits non-zero if a test failed in the guest or the guest did not report.
# The guest kernel and the KVM probe result are cached in
# ${KVMNET_GUEST_CACHE:-/var/cache/kvmnet/guest}.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x /usr/local/go/bin/go ] && ! command -v go >/dev/null 2>&1 && export PATH="/usr/local/go/bin:$PATH"
exec go run ./internal/guest/lane -short -timeout 12m "$@" ./internal/kernelfeat/... ./lab/... ./internal/netns/... ./internal/cli/... ./internal/qos/...
