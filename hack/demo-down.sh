#!/usr/bin/env bash
# Tears down a lab left by `make demo KEEP=1`.
set -u
pkill -f "bin/demo" 2>/dev/null
for p in $(ip netns pids ggnet-demo 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
ip netns del ggnet-demo 2>/dev/null
for m in $(mount | awk '/ggnet-lab-/ {print $3}'); do umount -l "$m"; done
rm -rf /tmp/ggnet-lab-*
echo "lab torn down"
