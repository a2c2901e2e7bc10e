#!/usr/bin/env bash
# Build Paddock's UEFI test disk: a GPT disk whose EFI system partition
# holds systemd-boot (Debian's systemd-boot-efi package) as the removable-
# media loader EFI/BOOT/BOOTX64.EFI, and an entry that starts the test
# guest's Debian kernel (an EFI stub) with its busybox initramfs. OVMF
# finds the loader by itself: no kernel is given to QEMU. Everything comes
# from Debian packages; nothing prebuilt is fetched from anywhere else.
#
# Usage: scripts/build-uefi-guest.sh [OUT_DIR]
#   OUT_DIR: first argument, else $PADDOCK_UEFI_GUEST_DIR,
#            else $HOME/.cache/paddock/uefi-guest
#
# OUT_DIR ends up holding uefi-disk.qcow2 and a stamp of the inputs; it is
# a cache, rebuilt only when the stamp changes. The test guest is built
# (or found) by scripts/build-test-guest.sh. On success the disk's path is
# printed on stdout (logs go to stderr).
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
script_path=$script_dir/$(basename "${BASH_SOURCE[0]}")
out=${1:-${PADDOCK_UEFI_GUEST_DIR:-${HOME:-/root}/.cache/paddock/uefi-guest}}

log() { printf 'build-uefi-guest: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

for tool in apt-get apt-cache dpkg-deb mkfs.vfat mcopy mmd sfdisk qemu-img flock sha256sum; do
    command -v "$tool" >/dev/null || die "missing $tool: run scripts/install-deps.sh"
done

# Run as root, or via sudo when available (only apt-get update needs it).
as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        die "need root to run: $*"
    fi
}

# The kernel and initramfs of the test guest (its own cache).
guest_paths=$("$script_dir/build-test-guest.sh") || die "scripts/build-test-guest.sh failed"
{ read -r vmlinuz; read -r initramfs; } <<<"$guest_paths"
[[ -f ${vmlinuz:-} && -f ${initramfs:-} ]] || die "the test guest build gave no kernel and initramfs"

boot_version() { apt-cache policy systemd-boot-efi 2>/dev/null | awk '$1 == "Candidate:" && $2 != "(none)" { print $2 }'; }
boot_ver=$(boot_version)
if [[ -z $boot_ver ]]; then
    log "apt-get update"
    as_root apt-get update -qq >&2
    boot_ver=$(boot_version)
fi
[[ -n $boot_ver ]] || die "apt knows no systemd-boot-efi"

want_stamp="systemd-boot-efi: $boot_ver
kernel-sha256: $(sha256sum <"$vmlinuz" | cut -d' ' -f1)
initramfs-sha256: $(sha256sum <"$initramfs" | cut -d' ' -f1)
script-sha256: $(sha256sum <"$script_path" | cut -d' ' -f1)"

mkdir -p "$out"
out=$(cd "$out" && pwd)
exec 9>"$out/.lock"
flock 9
disk=$out/uefi-disk.qcow2
if [[ -f $disk && -f $out/stamp && $(<"$out/stamp") == "$want_stamp" ]]; then
    log "up to date: $out"
    printf '%s\n' "$disk"
    exit 0
fi

rm -rf "$out"/.build.*
build=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$build"' EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM

apt_download_opts=()
[[ $EUID -eq 0 ]] && apt_download_opts=(-o APT::Sandbox::User=root)
log "fetching systemd-boot-efi $boot_ver"
(cd "$build" && apt-get download -qq "${apt_download_opts[@]}" "systemd-boot-efi=$boot_ver" >&2) ||
    die "cannot download systemd-boot-efi $boot_ver"
deb=$(find "$build" -maxdepth 1 -name 'systemd-boot-efi_*.deb' -print -quit)
[[ -n $deb ]] || die "apt-get download gave no systemd-boot-efi package"
dpkg-deb -x "$deb" "$build/boot"
loader=$(find "$build/boot" -name systemd-bootx64.efi -print -quit)
[[ -n $loader ]] || die "systemd-boot-efi has no systemd-bootx64.efi"

# The ESP as a FAT file system of its own, then placed at 1 MiB of a GPT
# disk whose single partition is typed "EFI System": no loop mount, no root.
esp_mib=60
mkfs.vfat -C -n PADDOCKESP "$build/esp.img" $((esp_mib * 1024)) >/dev/null
cat >"$build/loader.conf" <<'EOF'
timeout 0
default paddock.conf
EOF
cat >"$build/paddock.conf" <<'EOF'
title Paddock test guest
linux /vmlinuz
initrd /initramfs.cpio.gz
options console=ttyS0 panic=-1
EOF
mmd -i "$build/esp.img" ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries
mcopy -i "$build/esp.img" "$loader" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$build/esp.img" "$build/loader.conf" ::/loader/loader.conf
mcopy -i "$build/esp.img" "$build/paddock.conf" ::/loader/entries/paddock.conf
mcopy -i "$build/esp.img" "$vmlinuz" ::/vmlinuz
mcopy -i "$build/esp.img" "$initramfs" ::/initramfs.cpio.gz

raw=$build/disk.raw
truncate -s $(((esp_mib + 2) * 1024 * 1024)) "$raw"
printf 'label: gpt\nstart=2048, size=%d, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="ESP"\n' $((esp_mib * 2048)) |
    sfdisk --quiet "$raw"
dd if="$build/esp.img" of="$raw" bs=1M seek=1 conv=notrunc status=none
qemu-img convert -q -f raw -O qcow2 "$raw" "$build/uefi-disk.qcow2"
printf '%s\n' "$want_stamp" >"$build/stamp"

rm -f "$out/stamp"
mv -f "$build/uefi-disk.qcow2" "$disk"
mv -f "$build/stamp" "$out/stamp"
log "built $disk (systemd-boot $boot_ver)"
printf '%s\n' "$disk"
