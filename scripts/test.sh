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

# Tools some tests run; under CI (CI set) those tests fail without them, so install them when we can
# (as root with apt-get; elsewhere the tests skip and say what to install):
#   zstd: tests/format/test_seekable_interop.py decodes the store's files with the zstd CLI;
#   strace: tests/unit/test_hot_paths.py counts the system calls of put() and get();
#   wine, gcc-mingw-w64-x86-64-win32: tests/unit/test_windows_scripts.py runs scripts/*.bat under
#       Wine's cmd with a stand-in docker.exe it compiles (about 200 MB download; 35 s here);
#   radosgw, ceph-mon, ceph-osd: tests/tiering runs a one-node Ceph cluster with its S3 gateway (RGW).
missing=()
for tool_package in zstd:zstd strace:strace wine:wine x86_64-w64-mingw32-gcc:gcc-mingw-w64-x86-64-win32 \
    radosgw:radosgw ceph-mon:ceph-mon ceph-osd:ceph-osd; do
    command -v "${tool_package%%:*}" >/dev/null 2>&1 || missing+=("${tool_package#*:}")
done
if ((${#missing[@]})) && [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing ${missing[*]} (apt-get install -y)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }
fi

export VIRTUAL_ENV="$venv"
export PATH="$venv/bin:$PATH"
unset PYTHONHOME
exec bash "$repo_root/scripts/check.sh" "$@"
