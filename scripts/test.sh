#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: system packages, the test
# guest (built from Debian packages), then every test of the workspace.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-deps.sh
scripts/install-vsock-device.sh
scripts/build-test-guest.sh >/dev/null
scripts/build-guest-service.sh >/dev/null
cargo build --workspace --all-targets --all-features --locked
cargo test --workspace --all-features --locked -- --nocapture 2>&1
