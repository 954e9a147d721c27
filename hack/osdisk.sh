#!/usr/bin/env bash
# Builds the real-OS demo disk from Debian packages and prints the absolute
# path of the raw image, bin/osdisk/<key>/os.raw. The key is a hash of this
# script, hack/osdisk/ and the versions of the packages that go into the
# disk, so a change to any of them builds a new disk; an unchanged one is
# found again in well under a second.
#
# The disk (128 MiB, GPT):
#   1  ESP, FAT32, 64 MiB, also legacy-BIOS bootable: EFI/BOOT/BOOTX64.EFI
#      (systemd-boot, one loader entry) for UEFI; SYSLINUX in its boot sector
#      and gptmbr.bin in the MBR for BIOS; the Debian kernel (vmlinuz) and a
#      small initramfs (initrd.img) that both boot loaders load.
#   2  GGDATA, ext4 without a journal: /counter and /ticks, both 0.
# The initramfs is busybox-static, open-iscsi's iscsistart with its
# libraries, the few kernel modules it needs and hack/osdisk/init, which logs
# in to the target from the iBFT, counts the boot on GGDATA and powers off
# (see that file for what it prints on the serial console).
#
# The guest's packages are fetched with apt-get download and unpacked into a
# temporary directory: nothing of the guest is installed on this machine.
# Needs root only for apt-get (downloads, and apt-get update when a package
# version is no longer served), and the host tools hack/deps.sh installs
# (mtools, dosfstools, gdisk, e2fsprogs, syslinux, cpio, kmod, zstd).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
src=$root/hack/osdisk
out=$root/bin/osdisk
cmdline="console=ttyS0,115200 quiet panic=-1"

# What goes into the guest, from Debian's packages.
guest=(linux-image-amd64 busybox-static open-iscsi libopeniscsiusr libssl3 libkmod2 libzstd1 liblzma5 libc6 systemd-boot-efi)
# Host packages whose files go into the disk as they are (SYSLINUX's boot
# code); their versions are part of the key too.
hostfiles=(syslinux syslinux-common)
# Kernel modules the init needs; their dependencies come along.
# crc32c_generic: ext4's checksums ask the crypto API for crc32c, which would
# otherwise try to load a module through a modprobe the initramfs lacks.
modules=(e1000 virtio_pci virtio_net iscsi_ibft iscsi_tcp sd_mod crc32c_generic ext4)

mkdir -p "$out"
# Everything this script is made of (try.sh is a test harness, not input).
inputs() {
  cat "$0"
  local f
  for f in "$src"/*; do
    [[ $(basename "$f") == try.sh ]] && continue
    printf '%s\n' "$f"
    cat "$f"
  done
}

# Fast path: as long as this script and apt's package lists are unchanged, so
# are the candidate versions, and the key found last time still holds.
# (apt-cache takes seconds; this takes milliseconds.)
quick=$( {
  inputs
  stat -c '%n %s %Y' /var/lib/apt/lists/*_Packages* 2>/dev/null || true
  dpkg-query -W "${hostfiles[@]}" 2>/dev/null || true
} | sha256sum | cut -c1-32)
if [[ -f $out/.quick-$quick ]]; then
  key=$(cat "$out/.quick-$quick")
  if [[ -f $out/$key/os.raw ]]; then
    echo "$out/$key/os.raw"
    exit 0
  fi
fi

log() { echo "osdisk: $*" >&2; }

versions() {
  LC_ALL=C apt-cache policy "${guest[@]}" 2>/dev/null |
    awk '/^[^ ]/ {p=$1} /Candidate:/ {print p, $2}'
}
v=$(versions)
if [[ $(grep -c -v ' (none)$' <<<"$v") -ne ${#guest[@]} ]]; then
  log "apt has no candidate for some of ${guest[*]}: apt-get update"
  apt-get update -qq >&2
  v=$(versions)
  if [[ $(grep -c -v ' (none)$' <<<"$v") -ne ${#guest[@]} ]]; then
    log "no candidate version for: $(grep ' (none)$' <<<"$v" | tr '\n' ' ')"
    exit 1
  fi
fi
hv=$(dpkg-query -W "${hostfiles[@]}")
key=$( {
  inputs
  echo "$v"
  echo "$hv"
} | sha256sum | cut -c1-16)
disk=$out/$key/os.raw

finish() {
  echo "$key" >"$out/.quick-$quick"
  echo "$disk"
}
if [[ -f $disk ]]; then
  finish
  exit 0
fi

# One build at a time; whoever waited finds the disk built.
exec 9>"$out/.lock"
flock 9
if [[ -f $disk ]]; then
  finish
  exit 0
fi

for t in mkfs.vfat mcopy mmd sgdisk mkfs.ext4 syslinux cpio depmod modprobe zstd; do
  command -v "$t" >/dev/null || { log "missing host tool $t (run hack/deps.sh)"; exit 1; }
done
for f in /usr/lib/syslinux/mbr/gptmbr.bin; do
  [[ -f $f ]] || { log "missing $f (run hack/deps.sh)"; exit 1; }
done

start=$(date +%s)
work=$(mktemp -d "$out/.build-XXXXXX")
trap '[[ -n ${OSDISK_KEEP:-} ]] || rm -rf "$work"' EXIT
log "building $disk"

# --- packages -------------------------------------------------------------
kpkg_ver=$(awk '$1 == "linux-image-amd64:" {print $2}' <<<"$v")
kabi=$(LC_ALL=C apt-cache depends "linux-image-amd64=$kpkg_ver" |
  awk '/Depends: linux-image-[0-9].*-amd64$/ {print $2; exit}')
[[ -n $kabi ]] || { log "cannot tell which kernel linux-image-amd64 $kpkg_ver depends on"; exit 1; }
want=("$kabi")
for p in "${guest[@]}"; do
  [[ $p == linux-image-amd64 ]] && continue
  want+=("$p=$(awk -v p="$p:" '$1 == p {print $2}' <<<"$v")")
done
mkdir -p "$work/debs" "$work/root"
# apt-get download fetches as the unprivileged _apt user when it can write
# the directory, which keeps apt from warning.
chmod 0777 "$work/debs"
download() { (cd "$work/debs" && apt-get download -q "${want[@]}") >"$work/apt.log" 2>&1; }
if ! download; then
  log "apt-get download failed; apt-get update and once more"
  apt-get update -qq >&2
  download || { cat "$work/apt.log" >&2; exit 1; }
fi
for d in "$work"/debs/*.deb; do
  dpkg-deb -x "$d" "$work/root"
done
x=$work/root
kver=${kabi#linux-image-}
vmlinuz=$x/boot/vmlinuz-$kver
[[ -f $vmlinuz ]] || { log "no $vmlinuz in $kabi"; exit 1; }

# --- initramfs ------------------------------------------------------------
ird=$work/initrd
mkdir -p "$ird"/{bin,sbin,dev,proc,sys,mnt,run,tmp,etc/iscsi,var/lock,lib/modules,lib64}
cp "$x/bin/busybox" "$ird/bin/busybox"
for a in $("$ird/bin/busybox" --list); do
  [[ $a == busybox ]] || ln -s busybox "$ird/bin/$a"
done
mknod -m 600 "$ird/dev/console" c 5 1
install -m 755 "$src/init" "$ird/init"

# iscsistart and the libraries it links, resolved inside the unpacked
# packages only (the host's libraries are not the guest's).
install -m 755 "$x/sbin/iscsistart" "$ird/sbin/iscsistart"
libpath=$x/lib/x86_64-linux-gnu:$x/usr/lib/x86_64-linux-gnu
mkdir -p "$ird/lib/x86_64-linux-gnu"
"$x/lib64/ld-linux-x86-64.so.2" --library-path "$libpath" --list "$x/sbin/iscsistart" >"$work/ldd" ||
  { cat "$work/ldd" >&2; exit 1; }
while read -r name _ path _; do
  case "$name" in
  linux-vdso.so.*) continue ;;
  /lib64/ld-linux-x86-64.so.2) continue ;;
  esac
  [[ $path == "$x"/* ]] || { log "iscsistart: $name resolved outside the guest packages ($path)"; exit 1; }
  cp -L "$path" "$ird/lib/x86_64-linux-gnu/$name"
done <"$work/ldd"
cp -L "$x/lib64/ld-linux-x86-64.so.2" "$ird/lib64/ld-linux-x86-64.so.2"

# Modules in load order: depmod over the unpacked tree, then modprobe's own
# dependency walk; builtins need nothing, compressed modules are unpacked.
depmod -b "$x" "$kver"
: >"$ird/etc/modules.load"
modprobe -a -d "$x" -S "$kver" --show-depends "${modules[@]}" >"$work/deps"
while read -r verb path _; do
  [[ $verb == insmod ]] || continue
  base=$(basename "$path")
  case "$base" in
  *.ko) name=$base ;;
  *.ko.xz) name=${base%.xz} ;;
  *.ko.zst) name=${base%.zst} ;;
  *) log "unknown module file $path"; exit 1 ;;
  esac
  [[ -e $ird/lib/modules/$name ]] && continue
  case "$base" in
  *.ko) cp "$path" "$ird/lib/modules/$name" ;;
  *.ko.xz) xz -dc "$path" >"$ird/lib/modules/$name" ;;
  *.ko.zst) zstd -qdc "$path" >"$ird/lib/modules/$name" ;;
  esac
  echo "$name" >>"$ird/etc/modules.load"
done <"$work/deps"
for m in "${modules[@]}"; do
  grep -q "^${m//_/[_-]}\.ko$" "$ird/etc/modules.load" || grep -q "builtin $m\$" "$work/deps" ||
    { log "module $m not found for $kver"; exit 1; }
done

(cd "$ird" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) |
  zstd -19 -q -T0 >"$work/initrd.img" # 20% smaller than gzip -9: less to load through the SAN drive

# --- ESP ------------------------------------------------------------------
esp_start=1 esp_size=64 data_start=65 disk_size=128
esp=$work/esp.img
mkfs.vfat -F 32 -n GGBOOT -h $((esp_start * 2048)) -C "$esp" $((esp_size * 1024)) >/dev/null
sed "s|@CMDLINE@|$cmdline|" "$src/syslinux.cfg" >"$work/syslinux.cfg"
sed "s|@CMDLINE@|$cmdline|" "$src/ggnet.conf" >"$work/ggnet.conf"
export MTOOLS_SKIP_CHECK=1
mmd -i "$esp" ::EFI ::EFI/BOOT ::loader ::loader/entries ::syslinux
mcopy -i "$esp" "$x/usr/lib/systemd/boot/efi/systemd-bootx64.efi" ::EFI/BOOT/BOOTX64.EFI
mcopy -i "$esp" "$src/loader.conf" ::loader/loader.conf
mcopy -i "$esp" "$work/ggnet.conf" ::loader/entries/ggnet.conf
mcopy -i "$esp" "$work/syslinux.cfg" ::syslinux/syslinux.cfg
mcopy -i "$esp" "$vmlinuz" ::vmlinuz
mcopy -i "$esp" "$work/initrd.img" ::initrd.img
# SYSLINUX's boot sector and ldlinux.sys/.c32; the hidden-sectors field set
# above (-h) is where its boot sector finds the partition on the disk.
syslinux --install --directory /syslinux "$esp"

# --- data -----------------------------------------------------------------
mkdir -p "$work/data"
echo 0 >"$work/data/counter"
echo 0 >"$work/data/ticks"
data=$work/data.img
data_size=$((disk_size - data_start - 1))
mkfs.ext4 -q -F -L GGDATA -O ^has_journal -b 1024 -d "$work/data" "$data" "${data_size}M" >/dev/null

# --- disk -----------------------------------------------------------------
raw=$work/os.raw
truncate -s "${disk_size}M" "$raw"
sgdisk \
  -n "1:$((esp_start * 2048)):+${esp_size}M" -t 1:ef00 -c 1:ESP -A 1:set:2 \
  -n "2:$((data_start * 2048)):+${data_size}M" -t 2:8300 -c 2:GGDATA \
  "$raw" >"$work/sgdisk" 2>&1 || { cat "$work/sgdisk" >&2; exit 1; }
dd if=/usr/lib/syslinux/mbr/gptmbr.bin of="$raw" bs=440 count=1 conv=notrunc status=none
dd if="$esp" of="$raw" bs=1M seek="$esp_start" conv=notrunc,sparse status=none
dd if="$data" of="$raw" bs=1M seek="$data_start" conv=notrunc,sparse status=none
sgdisk -v "$raw" >"$work/verify" || { cat "$work/verify" >&2; exit 1; }
[[ $(sgdisk -p "$raw" | grep -c -E '^ +[12] ') -eq 2 ]] || { sgdisk -p "$raw" >&2; log "partition table not written"; exit 1; }

mkdir -p "$out/$key"
{
  echo "kernel $kver ($kabi $kpkg_ver)"
  echo "cmdline $cmdline"
  echo "vmlinuz $(stat -c %s "$vmlinuz")"
  echo "initrd $(stat -c %s "$work/initrd.img")"
  echo "modules $(tr '\n' ' ' <"$ird/etc/modules.load")"
  echo "$v"
  echo "$hv"
} >"$out/$key/info"
mv "$raw" "$disk"
# Disks of other keys were made by another version of this script or of the
# packages: nothing asks for them any more.
for d in "$out"/*/; do
  [[ $d == "$out/$key/" ]] || rm -rf "$d"
done
rm -f "$out"/.quick-*
log "built in $(($(date +%s) - start)) s: kernel $kver, initrd $(($(stat -c %s "$work/initrd.img") / 1024)) KiB"
finish
