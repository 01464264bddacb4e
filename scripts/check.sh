#!/usr/bin/env bash
# Every check of the project, in order, stopping at the first failure:
#   mypy, pylint, blinter (Windows batch linter over scripts/*.bat), pytest.
# Extra arguments are passed to pytest:  bash scripts/check.sh -x -q -k segment
#
# Uses whatever `python` is first on PATH: scripts/test.sh puts the project's .venv there,
# the Docker image (see Dockerfile) has the dev dependencies installed system-wide.
#
# CHECK_STEPS (default "mypy pylint blinter pytest") selects a subset, still in the order
# above; the Windows scripts use it to run only the static checks or only the tests.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

steps=" ${CHECK_STEPS:-mypy pylint blinter pytest} "
for step in $steps; do
    case "$step" in
        mypy | pylint | blinter | pytest) ;;
        *)
            echo "check.sh: unknown step '$step' in CHECK_STEPS (known: mypy pylint blinter pytest)" >&2
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
    heading "blinter --no-config --fail-on security on ${#bat_files[@]} scripts/*.bat files"
    if ((${#bat_files[@]} == 0)); then
        # blinter with no path prints its help and exits 0; do not let that pass for a check.
        echo "check.sh: no scripts/*.bat files to lint" >&2
        exit 1
    fi
    # blinter takes one path per run, so lint each file separately (a directory would also take
    # scripts/*.cmd and subdirectories).
    #   --no-config: ignore any blinter.ini in the current directory, so the result is the same
    #       on every machine.
    #   --fail-on security: blinter's own default, spelled out. It exits 1 on Error (E*) and
    #       Security (SEC*) findings -- a script that will not run, or runs something unsafe --
    #       and still prints Warning/Performance/Style findings without failing on them. Those are
    #       advice whose fixes would make the scripts worse (e.g. it suggests checking %ERRORLEVEL%
    #       after every command, or flags the un-quoted `exit /b %ERRORLEVEL%` idiom); the scripts
    #       are nonetheless kept clean of them today, so any new finding shows up in the output.
    for bat in "${bat_files[@]}"; do
        python -m blinter "$bat" --no-config --fail-on security
    done
fi

if wants pytest; then
    heading "pytest $*"
    status=0
    python -m pytest "$@" || status=$?
    if ((status == 5)); then
        echo "check.sh: pytest collected no tests (exit code 5); that is a failure here" >&2
    fi
    if ((status != 0)); then
        exit "$status"
    fi
fi

heading "all checks passed"
