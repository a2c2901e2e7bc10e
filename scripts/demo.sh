#!/usr/bin/env bash
# The main job, end to end on a fresh machine: install what is missing,
# build Paddock, start the daemon, boot the test guest under supervision,
# show it and its console, stop it through ACPI, clean up. Exits 0 on success.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-deps.sh
guest_dir=${PADDOCK_GUEST_DIR:-$HOME/.cache/paddock/test-guest}
scripts/build-test-guest.sh "$guest_dir" >/dev/null
# PADDOCK_DEMO_BIN: run this binary instead of building a release one
# (tests/demo.rs runs the main job with the test build; it also skips
# installing completions and man pages).
if [[ -n ${PADDOCK_DEMO_BIN:-} ]]; then
    paddock=$PADDOCK_DEMO_BIN
else
    cargo build --release --locked --bin paddock
    paddock=$PWD/target/release/paddock
fi
# Shell completions and man pages, generated from the CLI's own definitions.
if [[ -z ${PADDOCK_DEMO_BIN:-} && -w /usr/local/share ]]; then
    mkdir -p /usr/local/share/bash-completion/completions /usr/local/share/zsh/site-functions /usr/local/share/fish/vendor_completions.d
    "$paddock" completions bash >/usr/local/share/bash-completion/completions/paddock
    "$paddock" completions zsh >/usr/local/share/zsh/site-functions/_paddock
    "$paddock" completions fish >/usr/local/share/fish/vendor_completions.d/paddock.fish
    "$paddock" manpages /usr/local/share/man/man1
fi

work=$(mktemp -d /tmp/paddock-demo.XXXXXX)
# The confined hypervisor (an unprivileged uid) passes through here to
# its own directories; mktemp's 0700 would stop it (the daemon refuses).
chmod 0711 "$work"
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
for _ in $(seq 300); do
    [[ -S $PADDOCK_SOCKET ]] && break
    if ! kill -0 "$daemon_pid" 2>/dev/null; then
        echo "demo: the daemon exited:" >&2
        cat "$work/daemon.log" >&2
        exit 1
    fi
    sleep 0.1
done
[[ -S $PADDOCK_SOCKET ]] || { echo "demo: the daemon did not listen within 30 s:" >&2; cat "$work/daemon.log" >&2; exit 1; }

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
