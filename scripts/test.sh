#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: system packages, the test
# guests (built from Debian packages), then every test of the workspace.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-deps.sh
scripts/build-test-guest.sh >/dev/null
# The Debian 12 cloud guest of tests/real_guest.rs (cached; a few minutes
# the first time).
scripts/build-debian-guest.sh >/dev/null
cargo build --workspace --all-targets --all-features --locked
cargo test --workspace --all-features --locked -- --nocapture 2>&1
