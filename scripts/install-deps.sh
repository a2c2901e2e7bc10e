#!/usr/bin/env bash
# Installs the Debian packages Paddock needs on a fresh machine (as root).
# Idempotent: packages already installed are left alone, and the package
# lists are refreshed only when something is missing.
set -euo pipefail

packages=(
    qemu-system-x86  # the hypervisor
    qemu-utils       # qemu-img: the oracle of the disk tests
    genisoimage      # isoinfo: seed ISO oracle; genisoimage: disk_prep benchmark
    dosfstools       # fsck.vfat: FAT oracle of the seed and service disk tests
    mtools           # mtype, mlabel: read FAT images in tests
    busybox-static   # the test guest's userland
    cpio             # packs the test guest's initramfs
    kmod             # depmod: orders the test guest's kernel modules
    iproute2         # network namespaces for the network tests
    nftables         # firewall rules of network leases
    debootstrap      # builds the Debian cloud guest (scripts/build-debian-guest.sh)
    e2fsprogs        # mkfs.ext4 -d: the Debian guest's root filesystem without a loop mount
    openssh-client   # ssh, ssh-keygen: the real-guest tests log in to the Debian guest
    python3-venv     # the API fuzzer's venv (scripts/install-fuzzer.sh: schemathesis)
    ovmf             # UEFI firmware of firmware = "uefi" (found through /usr/share/qemu/firmware)
    fdisk            # sfdisk: the GPT of the UEFI test disk (scripts/build-uefi-guest.sh)
)

find_missing() {
    missing=()
    for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
}

as_root=()
[[ $EUID -eq 0 ]] || as_root=(sudo)

# Confined hypervisors run unprivileged and reach /dev/kvm through the kvm
# group, as Debian's udev rule sets it up (GROUP="kvm", MODE="0660"); a
# machine without udev (a container) gets the same by hand.
if [[ -e /dev/kvm ]]; then
    getent group kvm >/dev/null || "${as_root[@]}" groupadd --system kvm
    if [[ "$(stat -c '%G %a' /dev/kvm)" != "kvm 660" ]]; then
        echo "install-deps: giving /dev/kvm to group kvm, mode 0660" >&2
        "${as_root[@]}" chgrp kvm /dev/kvm
        "${as_root[@]}" chmod 0660 /dev/kvm
    fi
fi
# They open their persistent TAP (owned by their uid) through /dev/net/tun,
# 0666 by udev's default rule.
if [[ -e /dev/net/tun && "$(stat -c '%a' /dev/net/tun)" != "666" ]]; then
    echo "install-deps: /dev/net/tun mode 0666 (udev's default)" >&2
    "${as_root[@]}" chmod 0666 /dev/net/tun
fi
updated=0
# Two passes: installing one package can remove another that was there
# before (a machine image with a backported qemu-utils loses it to Debian's
# qemu-system-x86, whose common files conflict with it). The second pass
# puts back whatever the first one took away.
for pass in 1 2; do
    find_missing
    [[ ${#missing[@]} -eq 0 ]] && exit 0
    echo "install-deps: installing ${missing[*]} (pass $pass)" >&2
    if [[ $updated -eq 0 ]]; then
        "${as_root[@]}" apt-get update -qq >&2
        updated=1
    fi
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
done
find_missing
if [[ ${#missing[@]} -ne 0 ]]; then
    echo "install-deps: still missing after install: ${missing[*]}" >&2
    exit 1
fi
