#!/usr/bin/env bash
# Installs everything kvmnet and its test suite need on a Debian 12 machine, as
# root: Debian packages (iproute2 and iputils-ping as test witnesses, nftables,
# QEMU and cpio for the guest-kernel lane and the VMs, tcpdump (reads captures),
# iptables (legacy rules a host may have, for diagnose), busybox (udhcpc, wget, nc)
# and isc-dhcp-client (dhclient) as DHCP clients and witnesses nobody here
# wrote) and the Go modules. Idempotent: a second run installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_root() { [ "$(id -u)" = 0 ] || { echo "setup.sh: run as root (it installs Debian packages)" >&2; exit 1; }; }

pkgs=(iproute2 iputils-ping nftables iptables tcpdump procps qemu-system-x86 cpio busybox isc-dhcp-client ca-certificates)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  need_root
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Go: this project needs Go >= 1.21 on PATH (go.mod pins the exact toolchain,
# which Go fetches through the module proxy if the installed one is older).
if ! command -v go >/dev/null 2>&1; then
  if [ -x /usr/local/go/bin/go ]; then
    export PATH="/usr/local/go/bin:$PATH"
  else
    need_root
    echo "setup: installing golang-go"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go >/dev/null
  fi
fi
go mod download
echo "setup: ok ($(go version | awk '{print $3}'), $(ip -V 2>&1 | head -1))"
