#!/usr/bin/env bash
# Benchmark: build N endpoint namespaces on one bridge (scripts: internal/bench/gen)
# with `kvmnet up`, and in the same run the same network from `kvmnet plan -o sh`
# (iproute2, one `ip -n NS -batch -` per namespace run); then no-op `up`s and `down`
# timed until the kernel has really released the devices.
#
#   scripts/bench.sh [N ...]      (default: 10 100 500 1000), as root
#   BENCH_REPS=3 BENCH_NOOPS=5    repetitions per size, no-op runs per repetition
#
# Every build starts on a quiet kernel: after each `down` the script waits until
# the kernel has destroyed the deleted namespaces (no kworker runs the netns
# cleanup work for 100 ms), since that cleanup competes with the next build for
# the CPU and the RTNL lock. Each figure is the median over the repetitions (the
# no-op: over all its runs); RSS is the largest seen.
#
# Prints a Markdown table (docs/benchmarks.md records the results).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x /usr/local/go/bin/go ] && export PATH="/usr/local/go/bin:$PATH"
[ "$(id -u)" = 0 ] || { echo "bench.sh: run as root" >&2; exit 1; }
command -v /usr/bin/time >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null

sizes=("$@"); [ ${#sizes[@]} -gt 0 ] || sizes=(10 100 500 1000)
reps=${BENCH_REPS:-3}
noops=${BENCH_NOOPS:-5}
dir=$(mktemp -d /tmp/kvmnet-bench.XXXXXX)
bin=$dir/kvmnet
go build -o "$bin" ./cmd/kvmnet
prefix="kvb$$-"
sentinel="kvbs$$"
yaml=""

kv() { "$bin" -f "$yaml" --prefix "$prefix" --state-dir "$dir/state" "$@"; }
# Times come from bash's clock, $EPOCHREALTIME in microseconds (reading it
# forks no process, unlike date, whose ~2 ms would show in a 50 ms no-op).
ms() { echo $(( ($2 - $1) / 1000 )); }
median() { tr ' ' '\n' | grep . | sort -n | awk '{x[NR]=$1} END {print x[int((NR+1)/2)]}'; }
cleanup() {
  [ -n "$yaml" ] && kv down --force >/dev/null 2>&1 || true
  ip link del "$sentinel" >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT

# quiet: wait (up to 60 s) until no kernel worker has run the network
# namespace cleanup (a kworker named "...+netns" while it does) for 100 ms.
quiet() {
  local calm=0 deadline=$(( $(date +%s) + 60 ))
  while [ $calm -lt 5 ] && [ "$(date +%s)" -lt $deadline ]; do
    if grep -qs '+netns' /proc/[0-9]*/comm; then calm=0; else calm=$((calm + 1)); fi
    sleep 0.02
  done
}

# down_released: delete the network and wait until the kernel has destroyed the
# bridge namespace's devices (printed, in ms): a sentinel veth with one end in the
# root namespace and one in the bridge namespace disappears exactly then. Then
# wait for the rest of the cleanup (quiet).
down_released() {
  ip link add "$sentinel" type veth peer name sentinel netns "${prefix}bridge"
  local t0=${EPOCHREALTIME/./}
  kv down --force >/dev/null
  while ip link show "$sentinel" >/dev/null 2>&1; do sleep 0.005; done
  ms "$t0" "${EPOCHREALTIME/./}"
  quiet
}

echo "| N | ip -batch (plan -o sh) | kvmnet up | speed-up | kvmnet max RSS | no-op up | no-op / up | down, until devices released |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
for n in "${sizes[@]}"; do
  yaml=$dir/topo-$n.yaml
  go run ./internal/bench/gen -n "$n" > "$yaml"
  kv plan -o sh > "$dir/plan.sh"
  t_ips="" t_ups="" t_noops="" t_rels="" rss_max=0
  for _ in $(seq "$reps"); do
    # iproute2 baseline: the plan rendered as a shell script of ip -batch runs.
    quiet
    t0=${EPOCHREALTIME/./}; sh "$dir/plan.sh" >/dev/null; t1=${EPOCHREALTIME/./}; t_ips="$t_ips $(ms "$t0" "$t1")"
    kv plan | tail -1 | grep -q ': 0 changes' || { echo "bench: the iproute2 script did not build the same network" >&2; exit 1; }
    down_released >/dev/null
    # kvmnet
    t0=${EPOCHREALTIME/./}; /usr/bin/time -f %M -o "$dir/rss" "$bin" -f "$yaml" --prefix "$prefix" --state-dir "$dir/state" up >/dev/null; t1=${EPOCHREALTIME/./}
    t_ups="$t_ups $(ms "$t0" "$t1")"
    rss=$(( $(cat "$dir/rss") / 1024 )); [ "$rss" -gt "$rss_max" ] && rss_max=$rss
    for _ in $(seq "$noops"); do
      t0=${EPOCHREALTIME/./}; kv up > "$dir/noop.out"; t1=${EPOCHREALTIME/./}; t_noops="$t_noops $(ms "$t0" "$t1")"
      out=$(cat "$dir/noop.out")
      echo "$out" | grep -q '0 kernel writes' || { echo "bench: no-op up wrote: $out" >&2; exit 1; }
    done
    t_rels="$t_rels $(down_released)"
  done
  t_ip=$(echo "$t_ips" | median); t_up=$(echo "$t_ups" | median)
  t_noop=$(echo "$t_noops" | median); t_rel=$(echo "$t_rels" | median)
  speed=$(awk -v a="$t_ip" -v b="$t_up" 'BEGIN{printf "%.1fx", a/b}')
  pct=$(awk -v a="$t_noop" -v b="$t_up" 'BEGIN{printf "%.1f%%", 100*a/b}')
  echo "| $n | ${t_ip} ms | ${t_up} ms | $speed | ${rss_max} MB | ${t_noop} ms | $pct | ${t_rel} ms |"
  echo "  N=$n runs (ms): ip -batch:$t_ips; up:$t_ups; no-op:$t_noops; down:$t_rels" >&2
done
