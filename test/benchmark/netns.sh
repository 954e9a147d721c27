#!/usr/bin/env bash
# The benchmark topology (shared/bench-peers): two namespaces joined by a veth
# pair, no default routes; nothing leaves the pair.
# usage: netns.sh up|down [SUFFIX]
# SUFFIX makes a second, identical pair beside the first (pb-srvSUFFIX and
# pb-cliSUFFIX, the same interface names and addresses inside), so that two
# servers can run at once and be measured in turn with the same addresses
# and configs.
set -e
s=${2:-}
case $1 in
up)
  "$0" down "$s"
  ip netns add pb-srv$s
  ip netns add pb-cli$s
  ip link add pb-s$s type veth peer name pb-c$s
  ip link set pb-s$s netns pb-srv$s
  ip link set pb-c$s netns pb-cli$s
  if [[ -n $s ]]; then
    ip -n pb-srv$s link set pb-s$s name pb-s
    ip -n pb-cli$s link set pb-c$s name pb-c
  fi
  ip -n pb-srv$s addr add 198.51.100.1/24 dev pb-s
  ip -n pb-cli$s addr add 198.51.100.2/24 dev pb-c
  for ns in pb-srv$s pb-cli$s; do ip -n $ns link set lo up; done
  ip -n pb-srv$s link set pb-s up
  ip -n pb-cli$s link set pb-c up;;
down)
  ip netns del pb-srv$s 2>/dev/null || true
  ip netns del pb-cli$s 2>/dev/null || true;;
esac
