@echo off
rem Step 2: pytest inside the conduit_flat_file_db image (build it first with step 0),
rem on the current source tree mounted at /app: the same command as scripts/check.sh on Linux.
rem Arguments go to pytest, e.g.  scripts\2_win_run_tests.bat -x -q -k "segment and not crash"
rem They travel in PYTEST_ADDOPTS (pytest splits it like a shell), not on the docker command line.
setlocal
set "REPO_ROOT=%~dp0.."
rem Resolve the "scripts\.." to a plain absolute path, which is what docker --volume wants.
for %%I in ("%REPO_ROOT%") do set "REPO_ROOT=%%~fI"
set "PYTEST_ADDOPTS=%*"
docker run --rm --volume "%REPO_ROOT%:/app" --workdir /app --env "CHECK_STEPS=pytest" ^
    --env PYTEST_ADDOPTS conduit_flat_file_db bash scripts/check.sh
exit /b %ERRORLEVEL%
