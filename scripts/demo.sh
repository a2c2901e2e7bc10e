#!/usr/bin/env bash
# The main job, end to end on a fresh machine: install what is missing,
# build Paddock, start the daemon, boot the test guest under supervision,
# show it and its console, stop it through ACPI, clean up. Exits 0 on success.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-deps.sh
guest_dir=${PADDOCK_GUEST_DIR:-$HOME/.cache/paddock/test-guest}
scripts/build-test-guest.sh "$guest_dir" >/dev/null
cargo build --release --locked --bin paddock
paddock=$PWD/target/release/paddock
# Shell completions and man pages, generated from the CLI's own definitions.
if [[ -w /usr/local/share ]]; then
    mkdir -p /usr/local/share/bash-completion/completions /usr/local/share/zsh/site-functions /usr/local/share/fish/vendor_completions.d
    "$paddock" completions bash >/usr/local/share/bash-completion/completions/paddock
    "$paddock" completions zsh >/usr/local/share/zsh/site-functions/_paddock
    "$paddock" completions fish >/usr/local/share/fish/vendor_completions.d/paddock.fish
    "$paddock" manpages /usr/local/share/man/man1
fi

work=$(mktemp -d /tmp/paddock-demo.XXXXXX)
export PADDOCK_SOCKET=$work/run/paddock.sock
daemon_pid=
cleanup() {
    if [[ -n $daemon_pid ]]; then
        "$paddock" rm --force demo >/dev/null 2>&1 || true
        kill "$daemon_pid" 2>/dev/null || true
        wait "$daemon_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

echo "== paddock serve (state in $work)"
"$paddock" serve --state-dir "$work/state" --run-dir "$work/run" >"$work/daemon.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 100); do
    [[ -S $PADDOCK_SOCKET ]] && break
    sleep 0.1
done

cat >"$work/demo.toml" <<SPEC
name = "demo"
vcpus = 1
memory_mib = 256
ready_pattern = "PADDOCK-GUEST-READY"

[boot]
kernel = "$guest_dir/vmlinuz"
initrd = "$guest_dir/initramfs.cpio.gz"
cmdline = "console=ttyS0 panic=-1 quiet"

[network]
mode = "user"
forwards = [{ host = 18022, guest = 22 }]
SPEC

echo "== paddock up demo.toml --wait ready"
"$paddock" up "$work/demo.toml" --wait ready
echo "== paddock ps"
"$paddock" ps
echo "== paddock logs demo (last lines)"
"$paddock" logs demo | tail -n 5
echo "== paddock stop demo"
"$paddock" stop demo
echo "== paddock ps"
"$paddock" ps
echo "== paddock rm demo"
"$paddock" rm demo
echo "== daemon log"
tail -n 12 "$work/daemon.log"
echo "demo: OK"
