#!/usr/bin/env bash
# Build Paddock's tiny test guest: a Debian kernel plus a busybox initramfs
# whose /init is scripts/guest/init. Everything comes from Debian packages via
# apt; nothing prebuilt is fetched from anywhere else.
#
# Usage: scripts/build-test-guest.sh [OUT_DIR]
#   OUT_DIR: first argument, else $PADDOCK_GUEST_DIR,
#            else $HOME/.cache/paddock/test-guest
#
# OUT_DIR ends up holding vmlinuz, initramfs.cpio.gz and a stamp recording
# the inputs. It is a cache: when the stamp matches, nothing is rebuilt.
# On success the two image paths are printed on stdout (logs go to stderr).
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
script_path=$script_dir/$(basename "${BASH_SOURCE[0]}")
init_src=$script_dir/guest/init
out=${1:-${PADDOCK_GUEST_DIR:-$HOME/.cache/paddock/test-guest}}

# Kernel modules the guest loads (Debian builds these as modules). Their
# dependencies are added from modules.dep. Names use '_' (kernel normalises
# '-' and '_'). Required ones fail the build if the kernel has them neither
# as a module nor built in; optional ones are skipped with a note.
# button + evdev give acpid the power button's /dev/input/event* node.
required_modules=(
    button evdev
    virtio virtio_ring virtio_pci virtio_blk virtio_net virtio_rng
    fat vfat nls_cp437 nls_ascii nls_iso8859_1 isofs
)
optional_modules=(
    virtio_console nls_utf8
    pvpanic pvpanic_pci pvpanic_mmio
    vmw_vsock_virtio_transport
)

log() { printf 'build-test-guest: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

print_paths() {
    printf '%s\n' "$out/vmlinuz" "$out/initramfs.cpio.gz"
}

# Run as root, or via sudo when available (only apt-get install/update need it).
as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        die "need root to run: $*"
    fi
}

apt_updated=0
apt_update_once() {
    if [[ $apt_updated -eq 0 ]]; then
        log "apt-get update"
        as_root apt-get update -qq >&2
        apt_updated=1
    fi
}

# Install host packages that provide missing commands ("cmd:package" pairs).
ensure_tools() {
    local pair missing=()
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    log "installing ${missing[*]}"
    # Only refresh the package lists when a package is unknown to apt.
    if ! apt-cache show "${missing[@]}" >/dev/null 2>&1; then
        apt_update_once
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
}

# Candidate version apt would install for a package ("" if unknown).
candidate_version() {
    apt-cache policy "$1" 2>/dev/null | awk '$1 == "Candidate:" && $2 != "(none)" { print $2 }'
}

# Make sure apt knows a package, refreshing the lists once if it does not.
ensure_known() {
    if [[ -z $(candidate_version "$1") ]]; then
        apt_update_once
        [[ -n $(candidate_version "$1") ]] || die "apt knows no package $1"
    fi
}

# The real kernel package behind the linux-image-amd64 metapackage, e.g.
# linux-image-6.1.0-56-amd64 (newest if apt lists several).
resolve_kernel_package() {
    ensure_known linux-image-amd64
    apt-cache depends linux-image-amd64 |
        awk '$1 ~ /Depends:$/ && $2 ~ /^linux-image-[0-9]/ { print $2 }' |
        sort -V | tail -n 1
}

ensure_tools apt-cache:apt dpkg-deb:dpkg sha256sum:coreutils flock:util-linux \
    cpio:cpio gzip:gzip depmod:kmod

kernel_pkg=$(resolve_kernel_package)
[[ -n $kernel_pkg ]] || die "cannot resolve the package behind linux-image-amd64"
kernel_ver=$(candidate_version "$kernel_pkg")
[[ -n $kernel_ver ]] || die "no installable version of $kernel_pkg"
ensure_known busybox-static
busybox_ver=$(candidate_version busybox-static)

# Everything the output depends on; a different stamp means rebuild.
want_stamp="kernel: $kernel_pkg $kernel_ver
busybox: busybox-static $busybox_ver
init-sha256: $(sha256sum <"$init_src" | cut -d' ' -f1)
script-sha256: $(sha256sum <"$script_path" | cut -d' ' -f1)"

mkdir -p "$out"
# Serialise concurrent builds into the same cache dir.
exec 9>"$out/.lock"
flock 9

cache_hit() {
    [[ -f $out/vmlinuz && -f $out/initramfs.cpio.gz && -f $out/stamp ]] &&
        [[ $(<"$out/stamp") == "$want_stamp" ]]
}
if cache_hit; then
    print_paths
    exit 0
fi

# Scratch space (downloads, extracted kernel) in TMPDIR; the new images are
# assembled inside $out so the final renames stay on one filesystem.
work=$(mktemp -d "${TMPDIR:-/tmp}/paddock-guest.XXXXXX")
build=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$work" "$build"' EXIT

# apt-get download runs its fetcher as user _apt, which cannot write into a
# root-only mktemp dir; as root, keep it as root instead of warning.
apt_download_opts=()
[[ $EUID -eq 0 ]] && apt_download_opts=(-o APT::Sandbox::User=root)

download_and_extract() { # package version destdir
    local pkg=$1 ver=$2 dest=$3 deb
    (cd "$work" && apt-get download -qq "${apt_download_opts[@]}" "$pkg=$ver" >&2)
    deb=$(find "$work" -maxdepth 1 -name "${pkg}_*.deb" -print -quit)
    [[ -n $deb ]] || die "apt-get download $pkg=$ver produced no .deb"
    dpkg-deb -x "$deb" "$dest"
    rm -f "$deb"
}

log "fetching $kernel_pkg $kernel_ver and busybox-static $busybox_ver"
download_and_extract "$kernel_pkg" "$kernel_ver" "$work/kernel"
download_and_extract busybox-static "$busybox_ver" "$work/busybox"

# --- kernel -------------------------------------------------------------
vmlinuz=$(find "$work/kernel/boot" -maxdepth 1 -name 'vmlinuz-*' -print -quit)
[[ -n $vmlinuz ]] || die "$kernel_pkg has no /boot/vmlinuz-*"
kver=${vmlinuz##*/vmlinuz-}
cp "$vmlinuz" "$build/vmlinuz"

# Debian ships modules under /lib/modules (or /usr/lib/modules on merged-/usr
# layouts); depmod -b expects BASE/lib/modules.
if [[ ! -d $work/kernel/lib/modules/$kver && -d $work/kernel/usr/lib/modules/$kver ]]; then
    ln -s usr/lib "$work/kernel/lib"
fi
moddir=$work/kernel/lib/modules/$kver
[[ -d $moddir ]] || die "$kernel_pkg has no modules for $kver"
# The package does not ship modules.dep (its postinst runs depmod), so
# generate it from the package's own modules.
[[ -f $moddir/modules.dep ]] || depmod -b "$work/kernel" "$kver"

# name (with '_') -> path relative to $moddir, and path -> its dependencies.
declare -A mod_path=() mod_deps=() builtin=()
while IFS= read -r line; do
    path=${line%%:*}
    base=${path##*/}
    base=${base%%.ko*}
    mod_path[${base//-/_}]=$path
    mod_deps[$path]=${line#*:}
done <"$moddir/modules.dep"
if [[ -f $moddir/modules.builtin ]]; then
    while IFS= read -r path; do
        base=${path##*/}
        base=${base%%.ko*}
        builtin[${base//-/_}]=1
    done <"$moddir/modules.builtin"
fi

# Depth-first walk: every module comes after its dependencies.
declare -A visited=()
load_order=()
visit() {
    local path=$1 dep deps
    [[ -n ${visited[$path]:-} ]] && return 0
    visited[$path]=1
    read -r -a deps <<<"${mod_deps[$path]:-}"
    for dep in "${deps[@]}"; do
        visit "$dep"
    done
    load_order+=("$path")
}
want_module() { # name required(0/1)
    local name=${1//-/_}
    if [[ -n ${mod_path[$name]:-} ]]; then
        visit "${mod_path[$name]}"
    elif [[ -n ${builtin[$name]:-} ]]; then
        log "module $name is built into the kernel"
    elif [[ $2 -eq 1 ]]; then
        die "kernel $kver has no module $name"
    else
        log "kernel $kver has no module $name, skipping"
    fi
}
for m in "${required_modules[@]}"; do want_module "$m" 1; done
for m in "${optional_modules[@]}"; do want_module "$m" 0; done

# --- initramfs ----------------------------------------------------------
root=$work/root
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,root,etc,lib/modules}

# Copy only the wanted modules, flat, decompressed: busybox insmod loads
# plain .ko files only. load-order lines are "<file> <module name>".
for path in "${load_order[@]}"; do
    base=${path##*/}
    base=${base%%.ko*}
    dest=$root/lib/modules/$base.ko
    case $path in
        *.ko) cp "$moddir/$path" "$dest" ;;
        *.ko.xz) ensure_tools xz:xz-utils && xz -dc "$moddir/$path" >"$dest" ;;
        *.ko.zst) ensure_tools zstd:zstd && zstd -qdc "$moddir/$path" >"$dest" ;;
        *.ko.gz) gzip -dc "$moddir/$path" >"$dest" ;;
        *) die "unexpected module file $path" ;;
    esac
    printf '%s %s\n' "$base.ko" "${base//-/_}" >>"$root/lib/modules/load-order"
done
log "modules: $(cut -d' ' -f2 "$root/lib/modules/load-order" | tr '\n' ' ')"

busybox=$(find "$work/busybox" -path '*bin/busybox' -type f -print -quit)
[[ -n $busybox ]] || die "busybox-static has no busybox binary"
cp "$busybox" "$root/bin/busybox"
chmod 0755 "$root/bin/busybox"
# Applet symlinks at build time (saves a --install at every boot). The
# binary is static, so it can list its own applets on the build host.
while IFS= read -r applet; do
    [[ $applet == bin/busybox ]] && continue
    [[ -e $root/$applet || -L $root/$applet ]] || ln -s /bin/busybox "$root/$applet"
done < <("$root/bin/busybox" --list-full)

install -m 0755 "$init_src" "$root/init"

# newc is the only cpio format the kernel unpacks; files owned by root.
# /dev/console is not needed here: the kernel's built-in initramfs has it.
(cd "$root" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
    cpio --null --create --format=newc --owner=0:0 --quiet) |
    gzip -9n >"$build/initramfs.cpio.gz"

printf '%s\n' "$want_stamp" >"$build/stamp"

# Publish: drop the old stamp first and write the new one last, so a build
# killed half-way leaves no stamp and the next run rebuilds.
rm -f "$out/stamp"
mv -f "$build/vmlinuz" "$out/vmlinuz"
mv -f "$build/initramfs.cpio.gz" "$out/initramfs.cpio.gz"
mv -f "$build/stamp" "$out/stamp"

log "built $kernel_pkg $kernel_ver guest ($(du -h "$out/initramfs.cpio.gz" | cut -f1) initramfs)"
print_paths
