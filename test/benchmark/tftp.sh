#!/usr/bin/env bash
# TFTP benchmark (root): first one client at a time fetches Debian's
# snponly.efi and ipxe.efi from the GGnet boot agent with blksize 1468 (what
# EDK2 asks for on Ethernet) and windowsize 1 (no option), 4 (what EDK2/OVMF
# asks for), 8 and 16 (RFC 7440; test/benchmark/peers/tftpget, 7 downloads
# each, median); then 200 concurrent curl clients fetch a 1 MiB file from
# the agent and from tftpd-hpa. Servers pinned to CPU0 in pb-srv; clients on
# CPU1 in pb-cli (shared/bench-peers).  usage: tftp.sh [N] [BLKSIZE]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
N=${1:-200}; B=${2:-1468}
out=/tmp/ggnet-bench/tftp; rm -rf "$out"; mkdir -p "$out/root"
head -c 1048576 /dev/urandom > "$out/root/boot-1MiB.bin"
cp -L /usr/lib/ipxe/snponly.efi /usr/lib/ipxe/ipxe.efi "$out/root/"
export KUBEBUILDER_ASSETS=$(./hack/envtest-bins.sh)
make -s build
go build -o bin/loadlab ./test/benchmark/loadlab
go build -o bin/tftpget ./test/benchmark/peers/tftpget
bench=test/benchmark
$bench/netns.sh up
lab=; t=
trap '[ -n "$lab" ] && kill $lab 2>/dev/null; [ -n "$t" ] && kill $t 2>/dev/null; $bench/netns.sh down' EXIT
clients() { ip netns exec pb-cli taskset -c 1 bash $bench/peers/tftp-clients.sh conc "$N" "$B"; }

echo "== GGnet boot agent TFTP, $N clients, blksize $B"
ip netns exec pb-srv bin/loadlab -n 0 -agent bin/bootagent -cpu 0 -probe http://127.0.0.1:8881/readyz -- \
  --dhcp-interfaces=pb-s --server-ip=198.51.100.1 --http-listen=198.51.100.1:8880 --tftp-listen=198.51.100.1:69 --metrics-listen=127.0.0.1:8881 \
  --ipxe-root="$out/root" > "$out/loadlab.txt" 2>&1 &
lab=$!
for _ in $(seq 600); do grep -q READY "$out/loadlab.txt" && break; kill -0 $lab 2>/dev/null || { cat "$out/loadlab.txt"; exit 1; }; sleep 0.5; done
echo "== GGnet boot agent TFTP, one client, blksize 1468, windowsize 1/4/8/16 (median of 7)"
for f in snponly.efi ipxe.efi; do for w in "" 4 8 16; do
  ip netns exec pb-cli taskset -c 1 bin/tftpget -server 198.51.100.1:69 -file $f -blksize 1468 -windowsize "$w" -n 7 | tail -1
done; done
for _ in 1 2 3; do clients; done
kill -TERM $lab || true; wait $lab || true

if ! command -v in.tftpd >/dev/null; then
  echo "== tftpd-hpa: not installed (Debian package tftpd-hpa), comparison left out"; exit 0
fi
echo "== tftpd-hpa, $N clients, blksize $B"
ip netns exec pb-srv taskset -c 0 in.tftpd -L -s -a 198.51.100.1:69 "$out/root" &
t=$!; sleep 1
for _ in 1 2 3; do clients; done
kill $t || true; wait $t 2>/dev/null || true
