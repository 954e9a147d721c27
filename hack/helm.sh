#!/usr/bin/env bash
# Builds helm from the Go module proxy into bin/ (once) and prints its path.
# Its version is the Makefile's HELM_VERSION (from the environment under make).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
version=${HELM_VERSION:-$(make -s --no-print-directory -C "$root" print-HELM_VERSION)}
[[ -n $version ]] || { echo "hack/helm.sh: no HELM_VERSION (the Makefile pins it)" >&2; exit 1; }
out="$root/bin/helm-$version"
if [[ ! -x "$out/helm" ]]; then
  echo "Building helm $version (once)" >&2
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && go mod init ggnet.local/helm >/dev/null 2>&1 && GOBIN="$out" go install "helm.sh/helm/v4/cmd/helm@$version")
fi
echo "$out/helm"
