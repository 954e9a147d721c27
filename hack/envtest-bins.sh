#!/usr/bin/env bash
# Builds kube-apiserver and etcd from the Go module proxy into bin/k8s/<version>/,
# at the Makefile's ENVTEST_K8S_VERSION (the Kubernetes release matching
# k8s.io/api in go.mod; from the environment under make). Does nothing when both
# binaries are already there. Prints the directory (for KUBEBUILDER_ASSETS).
#
# Release downloads (setup-envtest) are not reachable where GGnet is developed, so
# we build from source: a throwaway helper module that requires k8s.io/kubernetes
# and replaces every staging module (k8s.io/X => k8s.io/X v0.N.M), because
# kubernetes' own go.mod points them at ./staging.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
kube_version=${ENVTEST_K8S_VERSION:-$(make -s --no-print-directory -C "$root" print-ENVTEST_K8S_VERSION)}  # v1.37.2
[[ $kube_version == v1.* ]] || { echo "hack/envtest-bins.sh: ENVTEST_K8S_VERSION '$kube_version' is not v1.N.M (the Makefile sets it)" >&2; exit 1; }
api_version="v0${kube_version#v1}"                                        # v0.37.2, the staging modules
out="$root/bin/k8s/${kube_version#v}"

# A binary without the version stamped in (older builds of this script)
# reports v0.0.0-master, which kubectl and helm reject; build it again.
stamped() { [[ -x "$1" ]] && "$1" --version 2>/dev/null | grep -q "$kube_version"; }
if stamped "$out/kube-apiserver" && [[ -x "$out/etcd" && -x "$out/kubectl" ]]; then
  echo "$out"
  exit 0
fi
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The staging modules kubernetes replaces with ./staging/src/k8s.io/X.
kgomod=$(cd "$work" && go mod download -json "k8s.io/kubernetes@${kube_version}" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
staging=$(sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$kgomod" | sort -u)
# The etcd server version kubernetes is tested with (its client/v3 requirement).
etcd_version=$(sed -n 's#^[[:space:]]*go.etcd.io/etcd/client/v3 \(v[0-9.]*\).*#\1#p' "$kgomod" | head -n1)

minor=${kube_version#v1.}; minor=${minor%%.*}
ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done
if ! stamped "$out/kube-apiserver" || [[ ! -x "$out/kubectl" ]]; then
  mkdir -p "$work/apiserver"
  (
    cd "$work/apiserver"
    go mod init ggnet.local/envtest-apiserver >/dev/null 2>&1
    args=()
    for m in $staging; do args+=("-replace=$m=$m@${api_version}"); done
    go mod edit "${args[@]}" "-require=k8s.io/kubernetes@${kube_version}"
    cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
    go mod tidy -e >/dev/null 2>&1 || true
    echo "Building kube-apiserver and kubectl ${kube_version} (a few minutes, once)" >&2
    CGO_ENABLED=0 go build -mod=mod -ldflags "$ldflags" -o "$out/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
    echo "Building kubectl ${kube_version}" >&2
    CGO_ENABLED=0 go build -mod=mod -ldflags "$ldflags" -o "$out/kubectl" k8s.io/kubernetes/cmd/kubectl
  )
fi

if [[ ! -x "$out/etcd" ]]; then
  mkdir -p "$work/etcd"
  (
    cd "$work/etcd"
    go mod init ggnet.local/envtest-etcd >/dev/null 2>&1
    go mod edit "-require=go.etcd.io/etcd/server/v3@${etcd_version}"
    cat > tools.go <<'GO'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3"
GO
    go mod tidy -e >/dev/null 2>&1 || true
    echo "Building etcd ${etcd_version} (once)" >&2
    CGO_ENABLED=0 go build -mod=mod -o "$out/etcd" go.etcd.io/etcd/server/v3
  )
fi
echo "$out"
