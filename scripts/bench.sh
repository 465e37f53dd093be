#!/usr/bin/env bash
# Benchmark: build N endpoint namespaces on one bridge (scripts: internal/bench/gen)
# with `kvmnet up`, and in the same run the same network from `kvmnet plan -o sh`
# (iproute2, one `ip -n NS -batch -` per namespace run); then a no-op `up` and `down`
# timed until the kernel has really released the devices.
#
#   scripts/bench.sh [N ...]      (default: 10 100 500 1000), as root
#
# Prints a Markdown table (docs/benchmarks.md records the results).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x /usr/local/go/bin/go ] && export PATH="/usr/local/go/bin:$PATH"
[ "$(id -u)" = 0 ] || { echo "bench.sh: run as root" >&2; exit 1; }
command -v /usr/bin/time >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null

sizes=("$@"); [ ${#sizes[@]} -gt 0 ] || sizes=(10 100 500 1000)
dir=$(mktemp -d /tmp/kvmnet-bench.XXXXXX)
bin=$dir/kvmnet
go build -o "$bin" ./cmd/kvmnet
prefix="kvb$$-"
sentinel="kvbs$$"
yaml=""

kv() { "$bin" -f "$yaml" --prefix "$prefix" --state-dir "$dir/state" "$@"; }
now() { date +%s%N; }
ms() { echo $(( ($2 - $1) / 1000000 )); }
cleanup() {
  [ -n "$yaml" ] && kv down --force >/dev/null 2>&1 || true
  ip link del "$sentinel" >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT

# down_released: delete the network and wait until the kernel has destroyed the
# bridge namespace's devices. A sentinel veth with one end in the root namespace
# and one in the bridge namespace disappears exactly then.
down_released() {
  ip link add "$sentinel" type veth peer name sentinel netns "${prefix}bridge"
  local t0; t0=$(now)
  kv down --force >/dev/null
  while ip link show "$sentinel" >/dev/null 2>&1; do sleep 0.005; done
  ms "$t0" "$(now)"
}

echo "| N | ip -batch (plan -o sh) | kvmnet up | speed-up | kvmnet max RSS | no-op up | no-op / up | down, until devices released |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
for n in "${sizes[@]}"; do
  yaml=$dir/topo-$n.yaml
  go run ./internal/bench/gen -n "$n" > "$yaml"
  # iproute2 baseline: the plan rendered as a shell script of ip -batch runs.
  kv plan -o sh > "$dir/plan.sh"
  t0=$(now); sh "$dir/plan.sh" >/dev/null; t_ip=$(ms "$t0" "$(now)")
  kv plan | tail -1 | grep -q ': 0 changes' || { echo "bench: the iproute2 script did not build the same network" >&2; exit 1; }
  down_released >/dev/null
  # kvmnet
  t0=$(now); /usr/bin/time -f %M -o "$dir/rss" "$bin" -f "$yaml" --prefix "$prefix" --state-dir "$dir/state" up >/dev/null; t_up=$(ms "$t0" "$(now)")
  rss_mb=$(( $(cat "$dir/rss") / 1024 ))
  t0=$(now); out=$(kv up); t_noop=$(ms "$t0" "$(now)")
  echo "$out" | grep -q '0 kernel writes' || { echo "bench: no-op up wrote: $out" >&2; exit 1; }
  t_rel=$(down_released)
  speed=$(awk -v a="$t_ip" -v b="$t_up" 'BEGIN{printf "%.1fx", a/b}')
  pct=$(awk -v a="$t_noop" -v b="$t_up" 'BEGIN{printf "%.1f%%", 100*a/b}')
  echo "| $n | ${t_ip} ms | ${t_up} ms | $speed | ${rss_mb} MB | ${t_noop} ms | $pct | ${t_rel} ms |"
done
