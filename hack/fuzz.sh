#!/usr/bin/env bash
# Runs every fuzz target for the given budget each (default 150000x): the
# DHCP packet path, TFTP name resolution, the iPXE parser and the IPv6
# router solicitation parser. Budgets are
# execution counts ("Nx"), not durations: with a duration, Go 1.26's fuzz
# coordinator can report "context deadline exceeded" as a failure when the
# time runs out mid-execution (golang/go#75804, fixed in Go 1.27) — seen in a
# fresh-clone run of make test. A count has no deadline to race.
set -euo pipefail
cd "$(dirname "$0")/.."
t=${1:-150000x}
for target in ./bootagent/dhcp:FuzzReply ./bootagent/tftp:FuzzResolve ./internal/ipxe:FuzzParse ./bootagent/ra:FuzzParse; do
  pkg=${target%%:*}; name=${target##*:}
  echo "fuzz $name ($pkg) for $t"
  go test -run '^$' -fuzz "^${name}\$" -fuzztime "$t" "$pkg"
done
