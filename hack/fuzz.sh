#!/usr/bin/env bash
# Runs every fuzz target for the given time each (default 5s): the DHCP
# packet path, TFTP name resolution and the iPXE parser.
set -euo pipefail
cd "$(dirname "$0")/.."
t=${1:-5s}
for target in ./bootagent/dhcp:FuzzReply ./bootagent/tftp:FuzzResolve ./internal/ipxe:FuzzParse; do
  pkg=${target%%:*}; name=${target##*:}
  echo "fuzz $name ($pkg) for $t"
  go test -run '^$' -fuzz "^${name}\$" -fuzztime "$t" "$pkg"
done
