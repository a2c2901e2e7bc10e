#!/usr/bin/env bash
# Installs rust-vmm's vhost-device-vsock: the vhost-user vsock device that
# gives QEMU VMs vsock on hosts without /dev/vhost-vsock (see README,
# "vsock"). Skipped when one is already on PATH.
set -euo pipefail

if command -v vhost-device-vsock >/dev/null 2>&1; then
    exit 0
fi
echo "install-vsock-device: cargo install vhost-device-vsock (a few minutes, once)" >&2
cargo install vhost-device-vsock --version 0.3.0 --locked --quiet >&2
command -v vhost-device-vsock >/dev/null || {
    echo "install-vsock-device: installed, but ~/.cargo/bin is not on PATH" >&2
    exit 1
}
