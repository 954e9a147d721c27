#!/usr/bin/env bash
# make demo-down: tears down the lab a `make demo KEEP=1` left, as its state
# file (/run/ggnet-demo/state.json, root only) records it: its processes by
# pid and start time, its mount and loop device, its network namespace and
# its directories. Nothing is found by a name pattern, so another lab, an
# end-to-end run or another user's processes are never touched. With no
# state file there is nothing to tear down; run twice, the second run says
# so.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if [[ $(id -u) -ne 0 ]]; then
  echo "make demo-down runs as root, as make demo does" >&2
  exit 1
fi
go build -o bin/demo-down ./hack/demo/down
exec bin/demo-down "$@"
