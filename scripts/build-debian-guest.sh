#!/usr/bin/env bash
# Build a real Debian 12 (bookworm) cloud guest from Debian packages only:
# debootstrap (minbase) + systemd, cloud-init, openssh-server, sudo, ifupdown
# (+ isc-dhcp-client), socat and linux-image-amd64. Nothing prebuilt is
# downloaded; every file comes out of .debs fetched by debootstrap and apt.
#
# Usage: scripts/build-debian-guest.sh [OUT_DIR]
#   OUT_DIR: first argument, else $PADDOCK_DEBIAN_GUEST_DIR,
#            else $HOME/.cache/paddock/debian-guest
#   $PADDOCK_DEBIAN_MIRROR: the Debian mirror (default http://deb.debian.org/debian)
#
# OUT_DIR ends up holding:
#   root.qcow2   the root disk: one ext4 filesystem labelled "root", no
#                partition table and no bootloader (boot it with the kernel)
#   vmlinuz      the kernel, initrd.img its initramfs (virtio + ext4 in it)
#   root.qcow2.sha256  its sha256 (the key of `boot.image = "sha256:<hex>"`)
#   cmdline      the kernel command line to boot it with
#   stamp        the inputs; when it matches nothing is rebuilt
# On success the three boot paths (image, kernel, initrd) are printed on
# stdout; logs go to stderr. Needs root (debootstrap, chroot).
#
# Why ifupdown: cloud-init 22.4 picks its network renderer from a priority
# list that starts with "eni" (ifupdown's /etc/network/interfaces); it
# renders Paddock's network-config v2 (static address, MAC match) into ENI
# and networking.service brings it up right after cloud-init-local. It is
# also what Debian's own cloud images used for years. The renderer writes
# routes (the default route too) as `post-up route add ...`, hence
# net-tools. isc-dhcp-client serves cloud-init's fallback (DHCP on the first
# NIC) when a seed has no network-config, e.g. user-mode networking.
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
script_path=$script_dir/$(basename "${BASH_SOURCE[0]}")
out=${1:-${PADDOCK_DEBIAN_GUEST_DIR:-$HOME/.cache/paddock/debian-guest}}
mirror=${PADDOCK_DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
# Sparse size of the root filesystem; the qcow2 holds only what is used.
# cloud-init's resize_rootfs grows it when an overlay is made bigger.
image_size=3G
cmdline="console=ttyS0 root=LABEL=root rw"

packages=(
    systemd systemd-sysv udev dbus      # init; dbus lets logind act on the ACPI power button
    cloud-init                          # reads the NoCloud seed
    openssh-server sudo socat
    ifupdown isc-dhcp-client iproute2   # the network stack cloud-init drives (see above)
    net-tools                           # `route`: cloud-init's ENI renderer writes routes with it
    linux-image-amd64 initramfs-tools   # kernel + initrd for direct boot
    e2fsprogs util-linux                # resize2fs, blkid (ds-identify), mkfs for data disks
    locales ca-certificates             # cloud-init's locale module runs locale-gen
)

log() { printf 'build-debian-guest: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}
[[ $EUID -eq 0 ]] || die "needs root (debootstrap and chroot); run it with sudo"

ensure_tools() {
    local pair missing=()
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}
ensure_tools debootstrap:debootstrap mkfs.ext4:e2fsprogs qemu-img:qemu-utils flock:util-linux

print_paths() {
    printf '%s\n' "$out/root.qcow2" "$out/vmlinuz" "$out/initrd.img"
}

# The stamp: this script plus the versions apt offers for the packages that
# matter most (a point release or security update means a rebuild).
versions=$(apt-cache policy linux-image-amd64 cloud-init systemd openssh-server 2>/dev/null |
    awk '/^[^ ]/ { p = $1 } $1 == "Candidate:" { print p, $2 }')
want_stamp="suite: $suite
mirror: $mirror
$versions
script-sha256: $(sha256sum <"$script_path" | cut -d' ' -f1)"

mkdir -p "$out"
out=$(cd "$out" && pwd)
exec 9>"$out/.lock"
flock 9

if [[ -f $out/root.qcow2 && -f $out/root.qcow2.sha256 && -f $out/vmlinuz && -f $out/initrd.img && -f $out/stamp ]] &&
    [[ $(<"$out/stamp") == "$want_stamp" ]]; then
    log "up to date: $out"
    print_paths
    exit 0
fi

rm -rf "$out"/.build.*
build=$(mktemp -d "$out/.build.XXXXXX")
root=$build/root
cleanup() {
    # Never leave /proc mounted inside a tree we are about to delete.
    if mountpoint -q "$root/proc" 2>/dev/null; then umount -l "$root/proc" || true; fi
    rm -rf "$build"
}
trap cleanup EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM

log "debootstrap $suite (minbase) from $mirror"
debootstrap --variant=minbase --merged-usr "$suite" "$root" "$mirror" >&2

# --- before installing: no docs, no service starts, initrd contents ------
cat >"$root/etc/dpkg/dpkg.cfg.d/01-paddock-nodoc" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"
mkdir -p "$root/etc/initramfs-tools"
# Direct boot: the initrd must find the root disk on virtio without guessing.
cat >>"$root/etc/initramfs-tools/modules" <<'EOF'
virtio_pci
virtio_blk
virtio_net
virtio_scsi
ext4
EOF
# No fstab entries that could block boot: only the root filesystem.
printf 'LABEL=root / ext4 defaults,errors=remount-ro 0 0\n' >"$root/etc/fstab"

mount -t proc proc "$root/proc"
log "installing ${packages[*]}"
chroot "$root" env DEBIAN_FRONTEND=noninteractive LC_ALL=C apt-get update -qq >&2
chroot "$root" env DEBIAN_FRONTEND=noninteractive LC_ALL=C \
    apt-get install -y -qq --no-install-recommends "${packages[@]}" >&2
# cloud-init's locale module sets en_US.UTF-8, which must exist: Debian's
# locale-gen ignores the locale cloud-init passes it and reads locale.gen.
sed -i 's/^# *\(en_US.UTF-8 UTF-8\)/\1/' "$root/etc/locale.gen"
chroot "$root" locale-gen >&2
chroot "$root" apt-get clean
umount "$root/proc"

# --- guest configuration ----------------------------------------------------
rm -f "$root/usr/sbin/policy-rc.d"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
# Every VM gets its own identity: machine-id on first boot, host keys from
# cloud-init (its ssh module generates them before sshd starts).
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id" "$root"/etc/ssh/ssh_host_*
printf 'debian\n' >"$root/etc/hostname"
# Only the NoCloud seed Paddock attaches: no probing of cloud metadata
# services that never answer. growpart has no partition to grow.
cat >"$root/etc/cloud/cloud.cfg.d/90-paddock.cfg" <<'EOF'
datasource_list: [NoCloud, None]
growpart:
  mode: "off"
# The hostname resolves (sudo asks for it) without DNS.
manage_etc_hosts: true
EOF
# Timers that would start apt or scrubbing in the middle of a test boot.
for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service \
    fstrim.timer systemd-networkd-wait-online.service; do
    ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
# Serial console login without a password stays impossible (root locked).
chroot "$root" passwd -l root >/dev/null

kernel=$(find "$root/boot" -maxdepth 1 -name 'vmlinuz-*' -print -quit)
initrd=$(find "$root/boot" -maxdepth 1 -name 'initrd.img-*' -print -quit)
[[ -n $kernel ]] || die "linux-image-amd64 left no /boot/vmlinuz-*"
[[ -n $initrd ]] || die "initramfs-tools left no /boot/initrd.img-*"
cp "$kernel" "$build/vmlinuz"
cp "$initrd" "$build/initrd.img"

# --- the image: ext4 straight from the tree (no loop mount) ----------------
log "making the ext4 root filesystem"
truncate -s "$image_size" "$build/root.raw"
mkfs.ext4 -q -F -L root -d "$root" "$build/root.raw" >&2
qemu-img convert -f raw -O qcow2 "$build/root.raw" "$build/root.qcow2"
rm -f "$build/root.raw"
sha256sum <"$build/root.qcow2" | cut -d' ' -f1 >"$build/root.qcow2.sha256"
printf '%s\n' "$cmdline" >"$build/cmdline"
printf '%s\n' "$want_stamp" >"$build/stamp"

rm -f "$out/stamp"
for f in root.qcow2 root.qcow2.sha256 vmlinuz initrd.img cmdline stamp; do
    mv -f "$build/$f" "$out/$f"
done
log "built $(du -h "$out/root.qcow2" | cut -f1) image in $out"
print_paths
