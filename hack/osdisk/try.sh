#!/usr/bin/env bash
# Boots the real-OS demo disk (hack/osdisk.sh) once, without GGnet: tgtd
# serves a copy of it with CHAP, QEMU (TCG) boots it through iPXE's sanboot,
# and the serial console is printed with the time from power-on to each
# GGNET-OS-* marker. A check of the disk and its boot loaders on their own;
# the e2e suite boots it through GGnet.
#
#   hack/osdisk/try.sh bios   SeaBIOS + the e1000's iPXE ROM (-boot n), the
#                             iPXE script from QEMU's own DHCP/TFTP
#   hack/osdisk/try.sh FW COPY  boots COPY, a copy of the disk made before
#                             (cp --sparse=always), instead of a fresh one:
#                             a second boot counts 2
#   hack/osdisk/try.sh uefi   OVMF, virtio-net without option ROM; Debian's
#                             ipxe.efi from a small FAT disk (QEMU's DHCP
#                             gives one boot file name to every client, so
#                             the firmware's PXE would load iPXE over and
#                             over), which then gets the same script over
#                             QEMU's TFTP
#
# Everything runs in a network namespace made here: tgtd listens on its
# loopback, QEMU's user-mode network is restrict=on and reaches nothing but
# the target, through guestfwd to 127.0.0.1:3260. Run as root.
set -euo pipefail
fw=${1:-bios}
root=$(cd "$(dirname "$0")/../.." && pwd)
disk=$("$root/hack/osdisk.sh")
work=$(mktemp -d /tmp/ggnet-osdisk-try.XXXXXX)
ns=ggnet-osdisk-try-$$
ctl=$((20000 + $$ % 10000)) # tgtd's control socket is a file path: keep it ours
iqn=iqn.2025-01.net.ggnet.try:os
initiator=iqn.2025-01.net.ggnet.try:pc
user=try
# A throwaway value for this local target only (it is on tgtadm's command
# line below, as tgtadm wants it).
pass=NotASecret-osdisk-try

tgtd_pid= qemu=
cleanup() {
  [[ -z $qemu ]] || kill "$qemu" 2>/dev/null || true
  # Whatever runs in the namespace is ours: tgtd (ip netns exec forks, so
  # $tgtd_pid is ip's; tgtd -f stays up on SIGTERM while it has targets).
  local p
  for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
  [[ -z $tgtd_pid ]] || wait "$tgtd_pid" 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  [[ -n ${TRY_KEEP:-} ]] || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

ip netns add "$ns"
ip -n "$ns" link set lo up
if [[ -n ${2:-} ]]; then
  [[ $(realpath "$2") != "$(realpath "$disk")" ]] || { echo "$2 is the built disk itself: boot a copy" >&2; exit 2; }
  ln -s "$(realpath "$2")" "$work/os.raw"
else
  cp --sparse=always "$disk" "$work/os.raw"
fi

ip netns exec "$ns" tgtd -f --control-port "$ctl" --iscsi portal=127.0.0.1:3260 >"$work/tgtd.log" 2>&1 &
tgtd_pid=$!
tgt() { tgtadm -C "$ctl" --lld iscsi "$@"; }
for _ in $(seq 50); do tgt --mode target --op show >/dev/null 2>&1 && break; sleep 0.1; done
# Another tgtd on the same control port (the lab's, a benchmark's) would
# answer the loop above: never configure it.
if ! kill -0 "$tgtd_pid" 2>/dev/null; then
  echo "tgtd did not start (control port $ctl taken?): $(cat "$work/tgtd.log")" >&2
  exit 1
fi
tgt --mode target --op new --tid 1 --targetname "$iqn"
tgt --mode logicalunit --op new --tid 1 --lun 1 --backing-store "$work/os.raw"
tgt --mode target --op bind --tid 1 --initiator-address ALL
tgt --mode account --op new --user "$user" --password "$pass"
tgt --mode account --op bind --tid 1 --user "$user"

mkdir -p "$work/tftp"
cat >"$work/tftp/boot.ipxe" <<EOF
#!ipxe
set initiator-iqn $initiator
set username $user
set password $pass
sanboot iscsi:10.0.2.100:::1:$iqn
EOF

# guestfwd to a chardev (tcp:127.0.0.1:3260) would be one host connection
# shared by every guest connection: iPXE's and the OS's logins would arrive
# on the same iSCSI connection. cmd: runs the command for each connection
# instead, with the guest's connection on its stdin and stdout.
cat >"$work/relay" <<'EOF2'
#!/bin/bash
exec 3<>/dev/tcp/127.0.0.1/3260
cat <&3 &
cat >&3
kill $! 2>/dev/null
EOF2
chmod +x "$work/relay"
net="user,id=n0,restrict=on,tftp=$work/tftp,bootfile=boot.ipxe,guestfwd=tcp:10.0.2.100:3260-cmd:$work/relay"
args=(-machine pc,accel=tcg -m 512 -display none -no-reboot
  -monitor "unix:$work/monitor,server,nowait"
  -serial "file:$work/serial" -netdev "$net")
case $fw in
bios)
  args+=(-device e1000,netdev=n0,mac=52:54:00:12:34:56 -boot n)
  ;;
uefi)
  cp /usr/share/OVMF/OVMF_VARS_4M.fd "$work/vars.fd"
  truncate -s 4M "$work/ipxe.img"
  mkfs.vfat -n IPXE "$work/ipxe.img" >/dev/null
  MTOOLS_SKIP_CHECK=1 mmd -i "$work/ipxe.img" ::EFI ::EFI/BOOT
  MTOOLS_SKIP_CHECK=1 mcopy -i "$work/ipxe.img" /usr/lib/ipxe/ipxe.efi ::EFI/BOOT/BOOTX64.EFI
  args+=(-drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd
    -drive "if=pflash,format=raw,unit=1,file=$work/vars.fd"
    -device virtio-net-pci,netdev=n0,romfile=,mac=52:54:00:12:34:57
    -drive "if=none,id=ipxe,format=raw,file=$work/ipxe.img"
    -device virtio-blk-pci,drive=ipxe,bootindex=0)
  ;;
*)
  echo "usage: $0 bios|uefi" >&2
  exit 2
  ;;
esac

: >"$work/serial"
t0=$(date +%s.%N)
ip netns exec "$ns" qemu-system-x86_64 "${args[@]}" &
qemu=$!
declare -A seen=()
deadline=$(($(date +%s) + ${TRY_TIMEOUT:-300}))
while kill -0 "$qemu" 2>/dev/null; do
  for m in "Booting from SAN" GGNET-OS-START GGNET-OS-BOOT GGNET-OS-TICK\ 10 GGNET-OS-DONE GGNET-OS-FAIL; do
    [[ -n ${seen[$m]-} ]] && continue
    if grep -q "$m" "$work/serial"; then
      seen[$m]=1
      awk -v m="$m" -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%-16s %6.1f s\n", m, b - a}' >&2
    fi
  done
  if (($(date +%s) > deadline)); then
    echo "timed out; the screen: ${TRY_KEEP:+$work/screen.ppm}" >&2
    if [[ -n ${TRY_KEEP:-} ]]; then
      python3 -c 'import socket, sys, time
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); time.sleep(0.5)
s.sendall(b"screendump " + sys.argv[2].encode() + b"\n"); time.sleep(1)' "$work/monitor" "$work/screen.ppm" || true
      sleep 1
    fi
    kill "$qemu"
    break
  fi
  sleep 0.1
done
wait "$qemu" || true
echo "--- serial" >&2
tr -d '\r' <"$work/serial" | grep -a -v '^$' | tail -40 >&2
echo "--- counter/ticks now:" >&2
start=$(sgdisk -i 2 "$work/os.raw" | awk '/First sector/ {print $3}')
for f in counter ticks; do
  echo "$f=$(debugfs -R "cat /$f" "$work/os.raw?offset=$((start * 512))" 2>/dev/null)" >&2
done
grep -q GGNET-OS-DONE "$work/serial"
