#!/usr/bin/env bash
# Builds the Blueprint example's in-guest service (examples/guest-service)
# as a static binary: the test guest has no libc, and a Debian guest runs it
# as well. Prints the binary's path. A cache: rebuilt only when its sources
# change (OUT_DIR, default $PADDOCK_GUEST_SERVICE_DIR or
# ~/.cache/paddock/guest-service).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
src=$root/examples/guest-service
out=${1:-${PADDOCK_GUEST_SERVICE_DIR:-$HOME/.cache/paddock/guest-service}}
mkdir -p "$out"
out=$(cd "$out" && pwd)
bin=$out/paddock-guest-service

stamp=$(cat "$src/Cargo.toml" "$src/Cargo.lock" "$src/src/main.rs" | sha256sum | cut -d' ' -f1)
exec 9>"$out/.lock"
flock 9
if [[ -x $bin && -f $out/stamp && $(<"$out/stamp") == "$stamp" ]]; then
    echo "$bin"
    exit 0
fi
rm -f "$out/stamp"
echo "build-guest-service: building $src (static)" >&2
# crt-static links glibc statically (static-pie): the binary runs on any
# x86_64 Linux guest, whatever its userland.
RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR=$out/target \
    cargo build --release --locked --quiet --target x86_64-unknown-linux-gnu --manifest-path "$src/Cargo.toml" >&2
cp -f "$out/target/x86_64-unknown-linux-gnu/release/paddock-guest-service" "$bin.tmp"
mv -f "$bin.tmp" "$bin"
printf '%s\n' "$stamp" >"$out/stamp"
echo "$bin"
