#!/usr/bin/env bash
# Installs schemathesis (PyPI), the API fuzzer of tests/api_fuzz.rs, into
# its own venv (~/.cache/paddock/schemathesis-venv). Idempotent: skipped
# when the pinned version is there. Needs python3-venv (install-deps.sh).
set -euo pipefail

version=4.32.5
venv=${PADDOCK_SCHEMATHESIS_VENV:-$HOME/.cache/paddock/schemathesis-venv}
if [[ -x $venv/bin/schemathesis ]] && "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "version $version"; then
    exit 0
fi
echo "install-fuzzer: schemathesis $version into $venv" >&2
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet "schemathesis==$version"
