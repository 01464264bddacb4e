@echo off
rem Step 1: ruff, mypy and pylint inside the conduit_flat_file_db image (build it first with step 0),
rem on the current source tree mounted at /app: the same commands as scripts/check.sh on Linux.
setlocal
set "REPO_ROOT=%~dp0.."
rem Resolve the "scripts\.." to a plain absolute path, which is what docker --volume wants.
for %%I in ("%REPO_ROOT%") do set "REPO_ROOT=%%~fI"
docker run --rm --volume "%REPO_ROOT%:/app" --workdir /app --env "CHECK_STEPS=ruff format mypy pylint" ^
    conduit_flat_file_db bash scripts/check.sh
exit /b %ERRORLEVEL%
