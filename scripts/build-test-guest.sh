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
    efivarfs
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

# Candidate versions apt would install for the given packages, one line
# each, in argument order; an empty line for a package apt cannot install.
candidate_versions() {
    apt-cache policy "$@" 2>/dev/null | awk -v want="$*" '
        /^[^ ]/ { pkg = substr($0, 1, length($0) - 1) }
        $1 == "Candidate:" && $2 != "(none)" { cand[pkg] = $2 }
        END { n = split(want, w, " "); for (i = 1; i <= n; i++) print cand[w[i]] }'
}

# Resolve the inputs and the stamp describing everything the output depends
# on (a different stamp means rebuild). apt is asked as few times as possible
# since each query re-reads the package lists. The lists are refreshed (once)
# only if apt does not know a package yet.
resolve_inputs() {
    local deps
    # The real kernel package behind the linux-image-amd64 metapackage, e.g.
    # linux-image-6.1.0-56-amd64 (the newest, should apt list several).
    if ! deps=$(apt-cache depends linux-image-amd64 2>/dev/null); then
        apt_update_once
        deps=$(apt-cache depends linux-image-amd64) || die "apt knows no linux-image-amd64"
    fi
    kernel_pkg=$(awk '$1 ~ /Depends:$/ && $2 ~ /^linux-image-[0-9]/ { print $2 }' <<<"$deps" |
        sort -V | tail -n 1)
    [[ -n $kernel_pkg ]] || die "cannot resolve the package behind linux-image-amd64"

    { read -r kernel_ver; read -r busybox_ver; } < <(candidate_versions "$kernel_pkg" busybox-static)
    if [[ -z $kernel_ver || -z $busybox_ver ]] && [[ $apt_updated -eq 0 ]]; then
        apt_update_once
        { read -r kernel_ver; read -r busybox_ver; } < <(candidate_versions "$kernel_pkg" busybox-static)
    fi
    [[ -n $kernel_ver ]] || die "no installable version of $kernel_pkg"
    [[ -n $busybox_ver ]] || die "no installable version of busybox-static"

    want_stamp="kernel: $kernel_pkg $kernel_ver
busybox: busybox-static $busybox_ver
init-sha256: $(sha256sum <"$init_src" | cut -d' ' -f1)
script-sha256: $(sha256sum <"$script_path" | cut -d' ' -f1)"
}

[[ -f $init_src ]] || die "missing $init_src"
ensure_tools apt-cache:apt sha256sum:coreutils flock:util-linux
resolve_inputs

mkdir -p "$out"
out=$(cd "$out" && pwd) # print absolute paths even for a relative OUT_DIR
# Serialise concurrent builds into the same cache dir.
exec 9>"$out/.lock"
flock 9

cache_hit() {
    [[ -f $out/vmlinuz && -f $out/initramfs.cpio.gz && -f $out/stamp ]] &&
        [[ $(<"$out/stamp") == "$want_stamp" ]]
}
if cache_hit; then
    log "up to date: $out"
    print_paths
    exit 0
fi

# All scratch space (downloads, the extracted kernel, the new images) lives
# in one dir inside $out: the final renames stay on one filesystem, and
# leftovers of a build killed with SIGKILL are swept up by the next run
# (safe: we hold the lock, so no other build is using them).
rm -rf "$out"/.build.*
build=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$build"' EXIT
# With these traps bash lets the running step (e.g. dpkg-deb) finish before
# exiting, so the EXIT cleanup does not race a child still writing files.
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM
work=$build/work
mkdir "$work"

ensure_tools apt-get:apt dpkg-deb:dpkg depmod:kmod cpio:cpio gzip:gzip

# apt-get download runs its fetcher as user _apt, which cannot write into a
# root-only mktemp dir; as root, keep it as root instead of warning.
apt_download_opts=()
[[ $EUID -eq 0 ]] && apt_download_opts=(-o APT::Sandbox::User=root)

download() { # package version -> the .deb's path on stdout
    (cd "$work" && apt-get download -qq "${apt_download_opts[@]}" "$1=$2" >&2) &&
        find "$work" -maxdepth 1 -name "${1}_*.deb" -print -quit
}

fetch_packages() {
    log "fetching $kernel_pkg $kernel_ver and busybox-static $busybox_ver"
    kernel_deb=$(download "$kernel_pkg" "$kernel_ver") && [[ -n $kernel_deb ]] &&
        busybox_deb=$(download busybox-static "$busybox_ver") && [[ -n $busybox_deb ]]
}
# Stale package lists can name versions the mirror has dropped (common for
# security updates): refresh once, re-resolve and try again.
if ! fetch_packages; then
    [[ $apt_updated -eq 0 ]] || die "cannot download the packages"
    rm -f "$work"/*.deb
    apt_update_once
    resolve_inputs
    fetch_packages || die "cannot download the packages"
fi
dpkg-deb -x "$kernel_deb" "$work/kernel"
dpkg-deb -x "$busybox_deb" "$work/busybox"
rm -f "$kernel_deb" "$busybox_deb"

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
