# The project's check environment: docker build --tag conduit_flat_file_db .
# `docker run --rm conduit_flat_file_db` runs every check (scripts/check.sh) on the source copied in
# at build time; scripts/1_win_run_static_checks.bat and scripts/2_win_run_tests.bat instead mount
# the current source tree at /app, so the image only needs rebuilding when dependencies change.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app

# The zstd command-line tool: the interoperability tests decode the store's files with it; strace:
# tests/unit/test_hot_paths.py counts system calls with it. (Wine for tests/unit/test_windows_scripts.py is
# left out: 900 MB installed; those tests skip outside CI.)
RUN apt-get update && apt-get install -y --no-install-recommends zstd strace radosgw ceph-mon ceph-osd && rm -rf /var/lib/apt/lists/*

# What the install needs first, so the dependency layer is rebuilt only when these change, not on
# every edit to tests or scripts. README.md is the `readme` metadata.
COPY pyproject.toml README.md ./
COPY conduit_flat_file_db/ conduit_flat_file_db/
RUN pip install -e '.[dev]'

COPY . .

CMD ["bash", "scripts/check.sh"]
