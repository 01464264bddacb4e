#!/usr/bin/env bash
# THE test command: bash scripts/test.sh [pytest arguments...]
# Needs only python3 (3.10+) with its venv module, and network access to PyPI.
# Creates .venv at the repo root if missing, installs the package with its dev extra into it,
# then runs scripts/check.sh (mypy, pylint, blinter, pytest) with that venv's python first on PATH.
# Arguments go to pytest, e.g.  bash scripts/test.sh -x -q
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo_root="$PWD"
venv="$repo_root/.venv"

if [[ ! -x "$venv/bin/python" ]]; then
    echo "==> creating $venv"
    python3 -m venv "$venv"
fi

# A no-op `pip install -e` still costs ~10 s (isolated build of the editable wheel), so it is
# skipped while pyproject.toml is byte-for-byte what was last installed into this venv. The
# install is editable, so edits under conduit_flat_file_db/ never need it. Delete the stamp
# (or .venv) to force a reinstall.
stamp="$venv/.dev-install-stamp"
want_stamp="$("$venv/bin/python" -c '
import hashlib, sys
with open("pyproject.toml", "rb") as f:
    print(hashlib.sha256(f.read()).hexdigest(), sys.version.split()[0])
')"
if [[ ! -f "$stamp" || "$(<"$stamp")" != "$want_stamp" ]]; then
    echo "==> pip install -e '.[dev]' into $venv"
    rm -f "$stamp"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[dev]'
    printf '%s\n' "$want_stamp" >"$stamp"
else
    echo "==> $venv is up to date with pyproject.toml (delete $stamp to force a reinstall)"
fi

# tests/format/test_seekable_interop.py runs the zstd CLI and fails without it: install it when we can.
if ! command -v zstd >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing the zstd CLI (apt-get install -y zstd)"
    apt-get install -y -qq zstd >/dev/null || { apt-get update -qq && apt-get install -y -qq zstd >/dev/null; }
fi

export VIRTUAL_ENV="$venv"
export PATH="$venv/bin:$PATH"
unset PYTHONHOME
exec bash "$repo_root/scripts/check.sh" "$@"
