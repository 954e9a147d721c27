#!/usr/bin/env bash
# DHCP benchmark (root): the GGnet boot agent in reservation mode with N
# Machines, kea-dhcp4 and dnsmasq, each pinned to CPU0 in namespace pb-srv,
# measured from pb-cli on CPU1 (shared/bench-peers) by two load generators
# acting as a relay: ISC perfdhcp, and test/benchmark/dhcpload for the rates
# past perfdhcp's own ceiling. The agent is measured with its API server up
# and with it paused (SIGSTOP: the agent answers from its cache either way).
# For latency at 1,000/s the agent and kea run at once, kea in a second,
# identical pair of namespaces (pb-srv2/pb-cli2, the same addresses), and
# are measured in turn, run for run, so that both see the same minutes of
# the machine (the agent stopped, SIGSTOP, during kea's runs); the agent's own share of each answer (its
# ggnet_dhcp_response_seconds, from the kernel's receive timestamp to the
# reply's send) is printed beside each of its runs.
# It installs its peers (Debian packages) when missing and fails when one
# is missing or answers nothing.
# usage: test/benchmark/dhcp.sh [N] [PERIOD]
# Environment, for iterating on the agent's latency:
#   DHCP_LATENCY_ONLY=1  only the 1,000/s latency runs of the agent (API server
#                        up and paused) and of kea: no ladders, no dnsmasq.
#   AGENT_ENV=K=V,...    extra environment of the agent (GOMAXPROCS=2,GOGC=200).
#   AGENT_ARGS="..."     extra flags of the agent; AGENT_BIN another agent binary.
#   DHCP_NICE=-20        the servers under test and the generators at this nice
#                        value (the agent's threads reniced once it is ready),
#                        so that other work on a shared machine preempts them
#                        less; the API server stays at SCHED_IDLE.
#   DHCP_RUNS=3          latency runs at 1,000/s per generator, server and mode.
#   DHCP_TRACE=1         a fourth dhcpload run at 1,000/s of the agent, API
#                        server up and paused, with a Go execution trace of it
#                        ($out/ggnet*-trace.out, go tool trace); not counted.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
N=${1:-10000}; P=${2:-10}
out=/tmp/ggnet-bench/dhcp; rm -rf "$out"; mkdir -p "$out"
export KUBEBUILDER_ASSETS=$(./hack/envtest-bins.sh)
[[ -n ${AGENT_BIN:-} ]] || make -s build # AGENT_BIN: the agent is built already
go build -o bin/loadlab ./test/benchmark/loadlab
go build -o bin/dhcpload ./test/benchmark/dhcpload
bench=test/benchmark

# The peers are Debian's: installed here if missing (as root), without
# starting their services (policy-rc.d, as in hack/deps.sh).
peers=()
command -v kea-dhcp4 >/dev/null || peers+=(kea-dhcp4-server)
command -v dnsmasq >/dev/null || peers+=(dnsmasq-base)
command -v perfdhcp >/dev/null || peers+=(kea-admin)
if ((${#peers[@]})); then
  echo "Installing the peers: ${peers[*]}" >&2
  made_policy=
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${peers[@]}" >/dev/null ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${peers[@]}" >/dev/null; }
  [[ -n $made_policy ]] && rm -f /usr/sbin/policy-rc.d
fi
for c in kea-dhcp4 dnsmasq perfdhcp; do
  command -v $c >/dev/null || { echo "dhcp.sh: $c is missing and could not be installed (apt-get install, as root)" >&2; exit 1; }
done
summary=$out/summary.tsv
: > "$summary"

# perfdhcp cannot size its socket's receive buffer and loses replies in the
# default 208 KiB above ~25,000 exchanges/s (its own drops, counted as the
# server's). Raise the default for the run; restored on exit.
rmem=$(sysctl -n net.core.rmem_default)
lab= api= etcd= agent= kea= dm=
cleanup() { # what this script started, by process id; each step even if one fails
  set +e
  sysctl -qw net.core.rmem_default="$rmem" || true
  [[ -n $api$etcd$agent ]] && kill -CONT $api $etcd $agent 2>/dev/null
  for p in $lab $kea $dm; do kill -TERM "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
  $bench/netns.sh down
  $bench/netns.sh down 2
}
trap cleanup EXIT
trap "exit 143" INT TERM # so that the EXIT trap runs
sysctl -qw net.core.rmem_default=4194304
$bench/netns.sh up
$bench/netns.sh up 2

only=${DHCP_LATENCY_ONLY:-}
runs=${DHCP_RUNS:-3}
trace=${DHCP_TRACE:-}
nice_=(nice -n "${DHCP_NICE:-0}")
agent_args=(${AGENT_ARGS:-})
[[ -n $trace ]] && agent_args+=(--pprof-bind-address=127.0.0.1:8882)

field() { { grep -o "$1=[^ ]*" || true; } | head -1 | cut -d= -f2; }
ns= # the pair of namespaces the server under test is in: "" or 2 (kea's, for latency)
scrape() { ip netns exec pb-srv curl -sf http://127.0.0.1:8881/metrics > "$1" || : > "$1"; }
response() { # name file: the agent's own share of the run just ended (after scrape "$out/before")
  [[ $1 == ggnet* ]] || return 0
  scrape "$out/after"
  local line; line=$(python3 $bench/peers/response_quantiles.py "$out/before" "$out/after" || true)
  printf '%-8s   agent %s\n' "$1" "$line"
  printf '%s\t%s\n' "$2" "$line" >> "$out/agent-response.tsv"
}
perf() { # name rate [extra perfdhcp flags]; $R simulated clients
  local name=$1 rate=$2; shift 2
  [[ $name == ggnet* ]] && scrape "$out/before"
  "${nice_[@]}" ip netns exec pb-cli$ns taskset -c 1 perfdhcp -4 -l 198.51.100.2 -r "$rate" -R "$R" -b mac=00:0c:01:00:00:00 \
    -p "$P" -W 500000 -g single "$@" 198.51.100.1 > "$out/$name-perfdhcp-$rate.txt" 2>&1 || true
  local line; line=$(python3 $bench/peers/parse_perfdhcp.py "$out/$name-perfdhcp-$rate.txt" "$P" "-")
  printf '%-8s perfdhcp rate=%-6s %s\n' "$name" "$rate" "$line"
  response "$name" "$name-perfdhcp-$rate"
  printf '%s\tperfdhcp\t%s\t%s\t%s\t%s\t%s\t-\n' "$name" "$rate" "$(field drop% <<<"$line")" "$(field ack_per_s <<<"$line")" \
    "$(field DO_p50 <<<"$line")" "$(field DO_p99 <<<"$line")" >> "$summary"
}
load() { # name rate; $R simulated clients
  local name=$1 rate=$2
  [[ $name == ggnet* ]] && scrape "$out/before"
  "${nice_[@]}" ip netns exec pb-cli$ns taskset -c 1 bin/dhcpload -rate "$rate" -clients "$R" -duration "${P}s" > "$out/$name-dhcpload-$rate.txt" 2>&1 || true
  printf '%-8s dhcpload %s\n' "$name" "$(cat "$out/$name-dhcpload-$rate.txt")"
  response "$name" "$name-dhcpload-$rate"
  local f=$out/$name-dhcpload-$rate.txt
  printf '%s\tdhcpload\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$rate" "$(field loss% <"$f")" "$(field acks_per_s <"$f")" \
    "$(field DO_p50 <"$f")" "$(field DO_p99 <"$f")" "$(field generator_behind_max <"$f")" >> "$summary"
}
ladder() { # name harness rate...: stops after the first rate with more than 5% loss
  local name=$1 harness=$2 col=dhcpload; shift 2
  [[ $harness == perf ]] && col=perfdhcp
  for r in "$@"; do
    $harness "$name" "$r"
    awk -F'\t' -v n="$name" -v h="$col" -v r="$r" '$1==n && $2==h && $3==r && ($4=="" || $4+0 > 5) {bad=1} END {exit !bad}' "$summary" && break
  done
  return 0
}
warmup() { # name: a run at 1,000/s, not counted; a server that answers nothing is a broken run
  # The warm-up lets a freshly started server and, for the agent, the API
  # server that has just taken 2N creates, settle.
  "${nice_[@]}" ip netns exec pb-cli$ns taskset -c 1 bin/dhcpload -rate 1000 -clients "$R" -duration "${P}s" > "$out/$1-warmup.txt" 2>&1 || true
  if ! grep -qE 'acks=[1-9]' "$out/$1-warmup.txt"; then
    echo "dhcp.sh: $1 answered no DHCP request in its warm-up (see $out/$1-warmup.txt and $out/$1.out)" >&2
    exit 1
  fi
}
peer_run() { # harness name: a latency run of kea (pb-srv2, 5,000 clients) with the agent stopped
  # (SIGSTOP), so that nothing of the agent's (its paced timeline writes, its
  # watch events, its runtime's timers) runs on CPU0 beside kea; the agent
  # catches up after SIGCONT, before its own next run.
  kill -STOP "$agent"
  R=5000 ns=2 "$1" "$2" 1000 -x t
  kill -CONT "$agent"
}
latency() { # name [peer]: $runs runs at 1,000/s with each generator; with a peer
  # (kea, in pb-srv2 with its own $R), each run of name is followed by the
  # same run of the peer, so that both see the same minutes of the machine.
  local i
  for i in $(seq "$runs"); do
    perf "$1" 1000 -x t; mv "$out/$1-perfdhcp-1000.txt" "$out/$1-perfdhcp-1000-$i.txt"
    [[ -n ${2:-} ]] && { peer_run perf "$2"; mv "$out/$2-perfdhcp-1000.txt" "$out/$2-perfdhcp-1000-$i.txt"; }
  done
  for i in $(seq "$runs"); do
    load "$1" 1000; mv "$out/$1-dhcpload-1000.txt" "$out/$1-dhcpload-1000-$i.txt"
    [[ -n ${2:-} ]] && { peer_run load "$2"; mv "$out/$2-dhcpload-1000.txt" "$out/$2-dhcpload-1000-$i.txt"; }
  done
  echo "$1${2:+ and $2}: $(uptime)" | tee -a "$out/uptime.txt"
  if [[ -n $trace && $1 == ggnet* ]]; then # a traced run, not counted
    ip netns exec pb-srv curl -sf -o "$out/$1-trace.out" "http://127.0.0.1:8882/debug/pprof/trace?seconds=$((P > 1 ? P - 1 : 1))" &
    local c=$!
    "${nice_[@]}" ip netns exec pb-cli taskset -c 1 bin/dhcpload -rate 1000 -clients "$R" -duration "${P}s" > "$out/$1-dhcpload-traced.txt" 2>&1 || true
    wait $c || echo "dhcp.sh: no trace of $1" >&2
    printf '%-8s dhcpload traced %s\n' "$1" "$(cat "$out/$1-dhcpload-traced.txt")"
  fi
}

R=$N
echo "== GGnet boot agent, reservation mode, $N Machines and $N Ready sessions"
# kube-apiserver and etcd (children of loadlab) run on CPU1 with the load
# generator, the agent alone on CPU0: the agent is the server under test, the
# API server lives on the control plane in a real site. They run there at
# SCHED_IDLE, so that they take only what the generator leaves of CPU1 and do
# not put the generator behind its schedule (which it reports).
ip netns exec pb-srv taskset -c 1 bin/loadlab -n "$N" -agent "${AGENT_BIN:-bin/bootagent}" -agent-env "${AGENT_ENV:-}" -cpu 0 -probe http://127.0.0.1:8881/readyz -- \
  --dhcp-interfaces=pb-s --server-ip=198.51.100.1 --http-listen=198.51.100.1:8880 --tftp-listen=198.51.100.1:69 --metrics-listen=127.0.0.1:8881 \
  --dhcp-workers=4 "${agent_args[@]}" > "$out/loadlab.txt" 2>&1 &
lab=$!
for _ in $(seq 1200); do grep -q READY "$out/loadlab.txt" && break; kill -0 $lab 2>/dev/null || break; sleep 0.5; done
cat "$out/loadlab.txt"
grep -q READY "$out/loadlab.txt" || { echo "dhcp.sh: loadlab did not get ready (see $out/loadlab.txt)" >&2; exit 1; }
# loadlab's own children, by process id: kube-apiserver and etcd.
api=$(pgrep -P $lab -x kube-apiserver || true) etcd=$(pgrep -P $lab -x etcd || true)
[[ -n $api && -n $etcd ]] || { echo "dhcp.sh: kube-apiserver or etcd of loadlab not found" >&2; exit 1; }
for p in $api $etcd; do chrt -a -i -p 0 "$p"; done
agent=$(pgrep -P $lab | grep -vx -e "$api" -e "$etcd" | head -1) || { echo "dhcp.sh: the agent of loadlab not found" >&2; exit 1; }
if [[ -n ${DHCP_NICE:-} ]]; then # every thread of the agent (new ones inherit it)
  renice -n "$DHCP_NICE" -p $(ls /proc/$agent/task) >/dev/null
fi
# kea, for the latency runs, at once in the second pair of namespaces
# (pb-srv2, the same addresses and interface names), on the same CPU, idle
# while the agent is measured and the other way round. The peers allocate
# from 198.18.0.0/19 (8,000 addresses): 5,000 clients, as in
# shared/bench-peers.
sed "s#/tmp/ggnet-bench/dhcp#$out#g" $bench/peers/kea-dhcp4.json > "$out/kea.json"
KEA_PIDFILE_DIR=$out KEA_LOCKFILE_DIR=$out "${nice_[@]}" ip netns exec pb-srv2 taskset -c 0 kea-dhcp4 -c "$out/kea.json" > "$out/kea.out" 2>&1 &
kea=$!; sleep 2
warmup ggnet
R=5000 ns=2 warmup kea
echo "== latency at 1,000/s, the agent and kea in turn (kea-paused: kea's runs while the agent's API server is paused)"
latency ggnet kea
# The API server paused (SIGSTOP, kube-apiserver and etcd): the agent keeps
# answering from its cache; what changes is the watch traffic it decodes and
# the API server's share of the generator's core.
kill -STOP $api $etcd
latency ggnet-paused kea-paused
kill -CONT $api $etcd
[[ -z $only ]] && ladder ggnet perf 5000 10000 20000 25000 30000 35000 40000
[[ -z $only ]] && ladder ggnet load 10000 20000 30000 40000 50000 60000 70000 80000 90000 100000 120000
kill -TERM $lab || true; wait $lab || true
grep "RSS at the end" "$out/loadlab.txt" || true

R=5000
echo "== kea-dhcp4 (memfile), $R clients"
ns=2
[[ -z $only ]] && ladder kea perf 2500 5000 7500 10000 15000 20000 25000 30000 35000
[[ -z $only ]] && ladder kea load 2500 5000 7500 10000 15000 20000 25000 30000 35000 40000
ns=
kill $kea || true; wait $kea 2>/dev/null || true

if [[ -z $only ]]; then
echo "== dnsmasq (leasefile-ro), $R clients"
sed "s#/tmp/ggnet-bench/dhcp#$out#g" $bench/peers/dnsmasq-dhcp-ro.conf > "$out/dnsmasq.conf"
"${nice_[@]}" ip netns exec pb-srv taskset -c 0 dnsmasq -k -C "$out/dnsmasq.conf" > "$out/dnsmasq.out" 2>&1 &
dm=$!; sleep 2
warmup dnsmasq
latency dnsmasq
ladder dnsmasq perf 1000 2500 5000 7500 10000
ladder dnsmasq load 1000 2500 5000 7500 10000 15000
kill $dm || true; wait $dm 2>/dev/null || true
fi

echo "== sustained: most ACKs per second in a run with < 1% loss"
awk -F'\t' '{best[$1 FS $2] += 0} $3+0 >= 1000 && $4 != "" && $4+0 < 1 && $5+0 > best[$1 FS $2] {best[$1 FS $2]=$5+0}
  END {for (k in best) {split(k, a, FS); printf "%-8s %-9s %s\n", a[1], a[2], best[k] ? best[k] "/s" : "none (every rate tried lost more than 1%)"}}' "$summary" | sort

echo "== latency at 1,000/s: DISCOVER->OFFER p50 / p99 ms, generator's worst lag (dhcpload), per run"
for f in "$out"/*-perfdhcp-1000-[0-9]*.txt; do
  n=$(basename "$f" .txt); printf '%-28s %s\n' "$n" "$(python3 $bench/peers/parse_perfdhcp.py "$f" "$P" - | grep -o 'DO_p50=[^ ]* DO_p99=[^ ]* RA_p50=[^ ]* RA_p99=[^ ]*')"
done
for f in "$out"/*-dhcpload-1000-[0-9]*.txt; do
  n=$(basename "$f" .txt); printf '%-28s %s\n' "$n" "$(grep -o 'loss%=[^ ]* DO_p50=[^ ]* DO_p99=[^ ]* RA_p50=[^ ]* RA_p99=[^ ]*\|generator_behind_max=[^ ]*' "$f" | tr '\n' ' ')"
done
if [[ -s $out/agent-response.tsv ]]; then
  echo "== the agent's own share at 1,000/s (kernel receive timestamp to reply sent; ggnet_dhcp_response_seconds), per run"
  cat "$out/agent-response.tsv"
fi
