#!/usr/bin/env bash
# Installs what GGnet's tests and demo need on a fresh Debian machine, doing
# nothing that is already done: Debian packages (as root), controller-gen, and
# kube-apiserver, etcd and kubectl built from the Go module proxy.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

# Debian packages: tgt (iSCSI target daemon), libiscsi-bin (iscsi-ls,
# iscsi-inq, iscsi-readcapacity16 to check targets from outside), xfsprogs
# (reflink data directories on a loop device), qemu-utils (image conversion),
# qemu-system-x86 + ipxe-qemu (end-to-end netboot), ipxe (boot files served by
# TFTP), iproute2 (network namespaces), kea-admin (perfdhcp, benchmarks),
# mount and procps (the lab mounts a loop device and stops its processes),
# qemu-block-extra (qemu-io's iSCSI driver: the storage fault test reads a
# disk back through its target); mtools, dosfstools, gdisk, e2fsprogs,
# syslinux, syslinux-common, cpio, kmod, xz-utils, zstd (hack/osdisk.sh builds the
# real-OS demo disk with them).
packages=(tgt libiscsi-bin xfsprogs qemu-utils qemu-block-extra qemu-system-x86 ipxe-qemu ipxe ovmf iproute2 kea-admin util-linux mount procps
  mtools dosfstools gdisk e2fsprogs syslinux syslinux-common cpio kmod xz-utils zstd)
# docs/examples, run by test/e2e/examples_test.go: isc-dhcp-server (the ISC
# dhcpd example), tftpd-hpa (the static boot.ipxe on an existing TFTP
# server), nftables (nft -c checks the firewall example).
packages+=(isc-dhcp-server tftpd-hpa nftables)
# The Kea and dnsmasq examples (test/e2e/examples_test.go) and the DHCP
# benchmark's peers (test/benchmark/dhcp.sh).
packages+=(kea-dhcp4-server dnsmasq-base)
# kubectl ggnet's room -w test (internal/ggctl) draws into a tmux pane.
packages+=(tmux)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "missing Debian packages: ${missing[*]}; run as root (or: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
  echo "Installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d keeps package scripts from starting daemons (tgtd) on the host.
  # One the machine already has is left as it is (it says what its owner
  # wants), even a dangling link: ours is written to a file of its own and
  # hard-linked into place, which fails when anything is at the name and
  # never follows a link (noclobber would write through a link to a
  # non-regular file, /dev/null say). It is removed again at exit only while
  # it is still ours, word for word.
  policy=/usr/sbin/policy-rc.d
  ours=$'#!/bin/sh\n# Made by GGnet hack/deps.sh for its apt-get install; removed when it ends.\nexit 101'
  if [[ ! -e $policy && ! -L $policy ]]; then
    tmp=$(mktemp /usr/sbin/.ggnet-policy-rc.d.XXXXXX)
    printf '%s\n' "$ours" >"$tmp" && chmod 755 "$tmp"
    if ln "$tmp" "$policy" 2>/dev/null; then
      trap 'if [[ ! -L $policy && "$(cat "$policy" 2>/dev/null)" == "$ours" ]]; then rm -f "$policy"; fi' EXIT
    fi
    rm -f "$tmp"
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The peers the tests run by hand (tftpd-hpa on port 69 of every
  # interface, the DHCP servers) must not start at the next boot either.
  if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
    for unit in tftpd-hpa isc-dhcp-server kea-dhcp4-server; do
      case " ${missing[*]} " in *" $unit "*) systemctl disable --now "$unit" >/dev/null 2>&1 || true ;; esac
    done
  fi
fi

make -s -C "$root" controller-gen >/dev/null
"$root/hack/envtest-bins.sh" >/dev/null
"$root/hack/helm.sh" >/dev/null
"$root/hack/osdisk.sh" >/dev/null
