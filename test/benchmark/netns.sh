#!/usr/bin/env bash
# The benchmark topology (shared/bench-peers): two namespaces joined by a veth
# pair, no default routes; nothing leaves the pair.  usage: netns.sh up|down
set -e
case $1 in
up)
  "$0" down
  ip netns add pb-srv
  ip netns add pb-cli
  ip link add pb-s type veth peer name pb-c
  ip link set pb-s netns pb-srv
  ip link set pb-c netns pb-cli
  ip -n pb-srv addr add 198.51.100.1/24 dev pb-s
  ip -n pb-cli addr add 198.51.100.2/24 dev pb-c
  for ns in pb-srv pb-cli; do ip -n $ns link set lo up; done
  ip -n pb-srv link set pb-s up
  ip -n pb-cli link set pb-c up;;
down)
  ip netns del pb-srv 2>/dev/null || true
  ip netns del pb-cli 2>/dev/null || true;;
esac
