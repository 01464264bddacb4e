@echo off
rem Step 0: build the Docker image "conduit_flat_file_db" from the repository's Dockerfile.
rem Only needs re-running when third-party dependencies change (pyproject.toml):
rem steps 1 and 2 mount the current source tree into the container, so code edits need no rebuild.
setlocal
set "REPO_ROOT=%~dp0.."
rem Resolve the "scripts\.." to a plain absolute path, which is what docker --volume wants.
for %%I in ("%REPO_ROOT%") do set "REPO_ROOT=%%~fI"
docker build --tag conduit_flat_file_db "%REPO_ROOT%"
exit /b %ERRORLEVEL%
