#!/usr/bin/env bash
# DHCP benchmark (root): the GGnet boot agent in reservation mode with N
# Machines, kea-dhcp4 and dnsmasq, each pinned to CPU0 in namespace pb-srv,
# measured by perfdhcp as a relay from pb-cli on CPU1 (shared/bench-peers).
# usage: test/benchmark/dhcp.sh [N] [PERIOD]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
N=${1:-10000}; P=${2:-10}
out=/tmp/ggnet-bench/dhcp; rm -rf "$out"; mkdir -p "$out"
export KUBEBUILDER_ASSETS=$(./hack/envtest-bins.sh)
make -s build
go build -o bin/loadlab ./test/benchmark/loadlab
bench=test/benchmark
$bench/netns.sh up
trap '$bench/netns.sh down; pkill -f "bin/loadlab" || true' EXIT

perf() { # name rate [extra perfdhcp flags]; $R simulated clients
  local name=$1 rate=$2; shift 2
  ip netns exec pb-cli taskset -c 1 perfdhcp -4 -l 198.51.100.2 -r "$rate" -R "$R" -b mac=00:0c:01:00:00:00 \
    -p "$P" -W 500000 -g single "$@" 198.51.100.1 > "$out/$name-$rate.txt" 2>&1 || true
  printf '%-8s rate=%-6s ' "$name" "$rate"
  python3 $bench/peers/parse_perfdhcp.py "$out/$name-$rate.txt" "$P" "-"
}

R=$N
echo "== GGnet boot agent, reservation mode, $N Machines and $N Ready sessions"
ip netns exec pb-srv bin/loadlab -n "$N" -agent bin/bootagent -cpu 0 -probe http://198.51.100.1:8880/readyz -- \
  --dhcp-interfaces=pb-s --server-ip=198.51.100.1 --http-listen=198.51.100.1:8880 --tftp-listen=198.51.100.1:69 \
  --dhcp-workers=4 > "$out/loadlab.txt" 2>&1 &
lab=$!
for _ in $(seq 600); do grep -q READY "$out/loadlab.txt" && break; sleep 0.5; done
cat "$out/loadlab.txt"
perf ggnet 1000 -x t
for r in 10000 20000 25000 30000 35000 40000; do perf ggnet $r; done
kill -TERM $lab || true; wait $lab || true
grep "RSS at the end" "$out/loadlab.txt" || true

# The peers allocate from 198.18.0.0/19 (8,000 addresses): 5,000 clients, as
# in shared/bench-peers.
R=5000
echo "== kea-dhcp4 (memfile), $R clients"
sed "s#/tmp/ggnet-bench/dhcp#$out#g" $bench/peers/kea-dhcp4.json > "$out/kea.json"
KEA_PIDFILE_DIR=$out KEA_LOCKFILE_DIR=$out ip netns exec pb-srv taskset -c 0 kea-dhcp4 -c "$out/kea.json" > "$out/kea.out" 2>&1 &
kea=$!; sleep 2
perf kea 1000 -x t
for r in 10000 15000 20000 25000; do perf kea $r; done
kill $kea || true; wait $kea 2>/dev/null || true

echo "== dnsmasq (leasefile-ro), $R clients"
sed "s#/tmp/ggnet-bench/dhcp#$out#g" $bench/peers/dnsmasq-dhcp-ro.conf > "$out/dnsmasq.conf"
ip netns exec pb-srv taskset -c 0 dnsmasq -k -C "$out/dnsmasq.conf" > "$out/dnsmasq.out" 2>&1 &
dm=$!; sleep 2
perf dnsmasq 1000 -x t
for r in 2500 5000 7500; do perf dnsmasq $r; done
kill $dm || true; wait $dm 2>/dev/null || true
