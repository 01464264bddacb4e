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

echo "==> pip install -e '.[dev]' into $venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[dev]'

export VIRTUAL_ENV="$venv"
export PATH="$venv/bin:$PATH"
unset PYTHONHOME
exec bash "$repo_root/scripts/check.sh" "$@"
