#!/usr/bin/env bash
# make demo: installs what is missing, builds, and runs the local lab (as
# root): a QEMU VM netboots from an iSCSI overlay through GGnet, inside a
# network namespace the demo makes. KEEP=1 leaves the lab running.
# FIRMWARE=bios (default: SeaBIOS, the boot-sector disk) or FIRMWARE=uefi
# (OVMF's own PXE and TFTP, then iPXE, then the real OS of hack/osdisk.sh).
# IMAGE=os boots the real OS on BIOS too.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if [[ $(id -u) -ne 0 ]]; then
  echo "make demo runs as root: it makes a network namespace, a loop device and a tap for the VM" >&2
  exit 1
fi
./hack/deps.sh
make -s build
go build -o bin/demo ./hack/demo
export KUBEBUILDER_ASSETS=$(./hack/envtest-bins.sh)
args=()
[[ "${KEEP:-}" == 1 ]] && args+=(-keep)
args+=(-firmware "${FIRMWARE:-bios}")
[[ -n "${IMAGE:-}" ]] && args+=(-image "$IMAGE")
exec bin/demo -bin bin "${args[@]}"
