#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: system packages, the test
# guests (built from Debian packages), then every test of the workspace;
# then, if a real Cloud Hypervisor binary sits next to the clone
# (../shared/bin/cloud-hypervisor), the Cloud Hypervisor control-plane
# tests again against it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-deps.sh
scripts/install-vsock-device.sh
scripts/install-fuzzer.sh
scripts/build-test-guest.sh >/dev/null
scripts/build-uefi-guest.sh >/dev/null
scripts/build-guest-service.sh >/dev/null
# The Debian 12 cloud guest of tests/real_guest.rs (cached; a few minutes
# the first time).
scripts/build-debian-guest.sh >/dev/null
cargo build --workspace --all-targets --all-features --locked
# The fake Cloud Hypervisor for this run, whatever the environment says.
env -u CLOUD_HYPERVISOR_BIN cargo test --workspace --all-features --locked --no-fail-fast -- --nocapture 2>&1

ch=../shared/bin/cloud-hypervisor
if [ -x "$ch" ]; then
    CLOUD_HYPERVISOR_BIN="$(cd "$(dirname "$ch")" && pwd)/$(basename "$ch")"
    export CLOUD_HYPERVISOR_BIN
    echo "== Cloud Hypervisor control-plane tests against $CLOUD_HYPERVISOR_BIN"
    cargo test --all-features --locked --test cloud_hypervisor -- --nocapture 2>&1
    cargo test --all-features --locked --test network a_cloud_hypervisor -- --nocapture 2>&1
else
    echo "== no $ch: the Cloud Hypervisor tests ran against the fake only"
fi
