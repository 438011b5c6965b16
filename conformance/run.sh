#!/usr/bin/env bash
# Runs the boto3 conformance suite against a kvs-local binary.
#
#   conformance/run.sh [pytest args...]
#
# The server binary comes from $KVS_LOCAL_BIN, else target/debug/kvs-local (this script does not build it).
# Python packages go into the project-local venv .venv at the repository root, created on first use.
# The exit code is pytest's.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
venv="$root/.venv"

bin="${KVS_LOCAL_BIN:-$root/target/debug/kvs-local}"
if [[ ! -x "$bin" ]]; then
    echo "conformance: kvs-local binary not found at $bin" >&2
    echo "conformance: build it first (cargo build -p kvs-local) or set KVS_LOCAL_BIN" >&2
    exit 2
fi
export KVS_LOCAL_BIN="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"

as_root() {
    if [[ "$(id -u)" == 0 ]]; then "$@"; else sudo "$@"; fi
}

make_venv() {
    python3 -m venv "$venv"
}

if [[ ! -x "$venv/bin/python" ]]; then
    echo "conformance: creating $venv" >&2
    if ! make_venv 2>/dev/null; then
        # Debian splits venv (and ensurepip) into python3-venv.
        rm -rf "$venv"
        echo "conformance: python3 -m venv failed; installing python3-venv" >&2
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        make_venv
    fi
fi

py="$venv/bin/python"
stamp="$venv/.conformance-requirements"
wanted="$(cat "$here/requirements.txt" "$here/requirements-cli.txt" | sha256sum | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$wanted" ]]; then
    echo "conformance: installing pinned requirements" >&2
    "$py" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
    if ! "$py" -m pip install --quiet --disable-pip-version-check -r "$here/requirements-cli.txt"; then
        echo "conformance: the AWS CLI did not install; its smoke test will be skipped" >&2
    fi
    echo "$wanted" >"$stamp"
fi

cd "$here"
set +e
"$py" -m pytest -c "$here/pytest.ini" --rootdir "$here" "$@"
status=$?
set -e
exit "$status"
