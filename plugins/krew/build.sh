#!/bin/sh
# Builds the release archives plugins/krew/ggnet.yaml names — one
# kubectl-ggnet_<os>_<arch>.tar.gz per platform, reproducibly (-trimpath, no
# VCS stamp, tar with fixed times and owners, gzip without a name or time) —
# and writes their sha256 and the version into the manifest.
#
#   plugins/krew/build.sh v0.1.0 [outdir]   # default outdir: bin/krew
#
# PLATFORMS="linux/amd64 darwin/arm64" builds only those (the manifest's
# other lines are left as they are).
# Upload the archives to the release named in the manifest's uri lines.
set -eu
version=${1:?usage: plugins/krew/build.sh vX.Y.Z [outdir]}
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${2:-$root/bin/krew}
manifest=$root/plugins/krew/ggnet.yaml
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for p in ${PLATFORMS:-linux/amd64 linux/arm64 darwin/amd64 darwin/arm64 windows/amd64}; do
	os=${p%/*} arch=${p#*/}
	exe=kubectl-ggnet
	[ "$os" = windows ] && exe=kubectl-ggnet.exe
	rm -rf "$tmp/$p" && mkdir -p "$tmp/$p"
	(cd "$root" && CGO_ENABLED=0 GOOS=$os GOARCH=$arch go build -trimpath -buildvcs=false -ldflags='-s -w' \
		-o "$tmp/$p/$exe" ./cmd/kubectl-ggnet)
	archive=$out/kubectl-ggnet_${os}_${arch}.tar.gz
	tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$tmp/$p" -cf - "$exe" | gzip -n -9 >"$archive"
	sum=$(sha256sum "$archive" | cut -d' ' -f1)
	echo "$sum  $archive"
	# The sha256 line follows the uri line of the archive.
	sed -i "/kubectl-ggnet_${os}_${arch}.tar.gz/{n;s/sha256: .*/sha256: \"$sum\"/}" "$manifest"
done
sed -i -e "s|^  version: .*|  version: $version|" \
	-e "s|releases/download/[^/]*/|releases/download/$version/|" "$manifest"
