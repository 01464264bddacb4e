#!/usr/bin/env bash
# Every check of the project, in order, stopping at the first failure:
#   ruff (lint), format (ruff format --check), mypy, pylint, blinter (Windows batch linter over
#   scripts/*.bat), pytest (with a coverage floor when it runs the whole suite).
# Extra arguments are passed to pytest:  bash scripts/check.sh -x -q -k segment
#
# Uses whatever `python` is first on PATH: scripts/test.sh puts the project's .venv there,
# the Docker image (see Dockerfile) has the dev dependencies installed system-wide.
#
# CHECK_STEPS (default: the steps in default_steps below) selects a subset, still in the order
# above; the Windows scripts use it to run only the static checks or only the tests.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

known_steps="ruff format mypy pylint blinter pytest"
default_steps="ruff format mypy pylint blinter pytest"
steps=" ${CHECK_STEPS:-$default_steps} "
for step in $steps; do
    case " $known_steps " in
        *" $step "*) ;;
        *)
            echo "check.sh: unknown step '$step' in CHECK_STEPS (known: $known_steps)" >&2
            exit 2
            ;;
    esac
done
wants() { [[ "$steps" == *" $1 "* ]]; }
heading() { printf '\n==> %s\n' "$*"; }

# The Python trees to type-check and lint; keep in step with [tool.mypy] files in pyproject.toml.
# A tree without any .py file is skipped: mypy exits 2 on a directory with no .py files
# ("There are no .py[i] files in directory 'benchmarks'") and pylint exits non-zero on a missing
# one; git does not keep empty directories, so a fresh clone has no benchmarks/ until it has code.
py_trees=()
for tree in conduit_flat_file_db tests benchmarks; do
    if [[ -n "$(find "$tree" -name '*.py' -print -quit 2>/dev/null)" ]]; then
        py_trees+=("$tree")
    else
        echo "note: $tree/ has no .py files; mypy and pylint skip it"
    fi
done

# ruff: config in [tool.ruff] of pyproject.toml; it finds the Python files itself (respecting .gitignore).
if wants ruff; then
    heading "ruff check ($(python -m ruff --version))"
    python -m ruff check --no-fix .
fi

if wants format; then
    heading "ruff format --check ($(python -m ruff --version))"
    python -m ruff format --check .
fi

if wants mypy; then
    heading "mypy (strict; config: [tool.mypy] in pyproject.toml) on ${py_trees[*]}"
    # Targets on the command line replace the `files` key, so an empty tree is not an error;
    # every other [tool.mypy] setting (strict, overrides) still applies.
    python -m mypy "${py_trees[@]}"
fi

if wants pylint; then
    heading "pylint (config: [tool.pylint.*] in pyproject.toml) on ${py_trees[*]}"
    python -m pylint "${py_trees[@]}"
fi

if wants blinter; then
    shopt -s nullglob
    bat_files=(scripts/*.bat)
    shopt -u nullglob
    blinter_version="$(python -m blinter --version 2>&1 | head -n 1)"
    heading "blinter ${blinter_version%% (*} --no-config --fail-on error on ${#bat_files[@]} scripts/*.bat files"
    if ((${#bat_files[@]} == 0)); then
        # blinter with no path prints its help and exits 0; do not let that pass for a check.
        echo "check.sh: no scripts/*.bat files to lint" >&2
        exit 1
    fi
    # blinter takes one path per run (a directory would also pull in *.cmd and subdirectories), so
    # lint each file, then fail if any of them failed.
    #   --no-config: ignore any blinter.ini in the current directory; same result on every machine.
    #   --fail-on error: exit 1 only on Error findings (E*: the script will not parse or run as
    #       written, e.g. LF-only line endings, GOTO to a missing label, unbalanced parentheses).
    #       Warning, Performance, Style and Security findings are printed but do not fail, because
    #       the scripts cannot avoid some of them:
    #         S007 "use .cmd instead of .bat": the file names are fixed by the project;
    #         W028 "SET handles ERRORLEVEL differently in .bat": fires on any SET in a .bat, and
    #           without one P003 "unnecessary SETLOCAL" fires instead; the scripts read ERRORLEVEL
    #           only straight after `docker`, so the difference does not matter.
    #       Why not blinter's newer default, `--fail-on security` (which would also fail on SEC*,
    #       e.g. an unquoted %*)? Python 3.10 can only install blinter 1.0.x (1.1 requires
    #       Python >= 3.11); 1.0.x has no --fail-on (it silently ignores unknown options) and
    #       always fails on Error findings only. `--fail-on error` gives the same pass/fail rule
    #       on every supported Python. The scripts have no SEC findings today.
    bat_failed=0
    for bat in "${bat_files[@]}"; do
        python -m blinter "$bat" --no-config --fail-on error || bat_failed=1
    done
    if ((bat_failed)); then
        echo "check.sh: blinter found errors in scripts/*.bat (see above)" >&2
        exit 1
    fi
fi

if wants pytest; then
    # A whole run (no pytest arguments, here or in PYTEST_ADDOPTS, as in CI) measures the package's
    # coverage and fails under the floor in [tool.coverage.report] of pyproject.toml; a run of a
    # subset (any argument) does not measure it: its coverage says nothing about the floor.
    coverage=()
    if (($# == 0)) && [[ -z "${PYTEST_ADDOPTS:-}" ]]; then
        coverage=(--cov --cov-report=term)
    fi
    heading "pytest ${coverage[*]} $*"
    status=0
    python -m pytest "${coverage[@]}" "$@" || status=$?
    if ((status == 5)); then
        echo "check.sh: pytest collected no tests (exit code 5); that is a failure here" >&2
    fi
    if ((status != 0)); then
        exit "$status"
    fi
fi

heading "all checks passed"
