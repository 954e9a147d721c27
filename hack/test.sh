#!/usr/bin/env bash
# Runs every test with the race detector and fails if any package failed or if
# no test ran at all. Extra arguments go to `go test`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
: "${KUBEBUILDER_ASSETS:?set by make test: the directory of kube-apiserver, etcd and kubectl}"
export KUBEBUILDER_ASSETS

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
go test -race -count=1 -timeout 30m "$@" ./... 2>&1 | tee "$log" || status=$?

# The TFTP fork (third_party/tftp, go.mod replaces pin/tftp with it) is a module
# of its own that ./... does not reach: its window-size option parsing. The
# window itself is tested through the agent (bootagent/tftp TestWindowSize).
(cd third_party/tftp && go test -race -count=1 -run 'TestParseWindowSize|FuzzParseWindowSize' .) 2>&1 | tee -a "$log" || status=$?

passed=$(grep -cE '^ok[[:space:]]' "$log" || true)
if ((status != 0)); then
  echo "make test: FAILED" >&2
  exit "$status"
fi
if ((passed == 0)) || grep -qE '\[no tests to run\]' "$log"; then
  echo "make test: no tests ran" >&2
  exit 1
fi
# A short run of every fuzz target (make fuzz runs them longer).
./hack/fuzz.sh "${FUZZTIME:-150000x}"
echo "make test: ${passed} packages passed, fuzz targets ran"
