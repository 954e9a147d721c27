#!/usr/bin/env bash
# Builds promtool (Prometheus's rule checker and rule unit tester) from the Go
# module proxy into bin/ (once) and prints its path. Its version is the
# Makefile's PROMTOOL_VERSION (from the environment under make), a version of
# the github.com/prometheus/prometheus module. Built with -tags remove_all_sd:
# promtool then links none of Prometheus's service discovery plugins (the
# cloud SDKs), which checking and testing rules do not use; that cuts the
# modules downloaded and the build time by several times.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
version=${PROMTOOL_VERSION:-$(make -s --no-print-directory -C "$root" print-PROMTOOL_VERSION)}
[[ -n $version ]] || { echo "hack/promtool.sh: no PROMTOOL_VERSION (the Makefile pins it)" >&2; exit 1; }
out="$root/bin/promtool-$version"
if [[ ! -x "$out/promtool" ]]; then
  echo "Building promtool $version (once)" >&2
  mkdir -p "$out"
  # Into a temporary directory first: a build cut short leaves no promtool
  # that looks finished.
  tmp=$(mktemp -d "$out/.build.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && GOBIN="$tmp" go install -tags remove_all_sd "github.com/prometheus/prometheus/cmd/promtool@$version")
  mv "$tmp/promtool" "$out/promtool"
fi
echo "$out/promtool"
