"""blocks.py: disk blocks under the shared writable maps, allocated before they are mapped."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conduit_flat_file_db.blocks import allocate_for_map


def _blocks(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def test_a_new_page_gets_its_blocks_and_reads_as_zeros(tmp_path: Path) -> None:
    """An empty file grows to the page with every block allocated (no hole a map could fault on)."""
    path = tmp_path / "page"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        allocate_for_map(fd, 4096, "page")
        assert os.fstat(fd).st_size == 4096
        assert os.pread(fd, 4096, 0) == bytes(4096)
    finally:
        os.close(fd)
    assert _blocks(path) >= 4096


def test_a_sparse_page_gets_blocks_for_its_holes_and_keeps_its_bytes(tmp_path: Path) -> None:
    """A page made by ftruncate (as openers of earlier releases made it) is one hole: it is
    allocated, and bytes already there stay as they are."""
    path = tmp_path / "page"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        os.ftruncate(fd, 8192)
        os.pwrite(fd, b"kept", 100)
        os.fsync(fd)
        allocate_for_map(fd, 8192, "page")
        assert os.fstat(fd).st_size == 8192
        assert os.pread(fd, 8, 98) == b"\0\0kept\0\0"
    finally:
        os.close(fd)
    assert _blocks(path) >= 8192


def test_a_page_with_all_its_blocks_is_left_alone(tmp_path: Path) -> None:
    """A longer file that has its blocks keeps its size and bytes (no fallocate, no zeros)."""
    path = tmp_path / "page"
    path.write_bytes(b"x" * 10_000)
    fd = os.open(path, os.O_RDWR)
    try:
        allocate_for_map(fd, 4096, "page")
        assert os.fstat(fd).st_size == 10_000
    finally:
        os.close(fd)
    assert path.read_bytes() == b"x" * 10_000


_SHORT_WRITE_CHILD = """
import errno, os, resource, signal, sys
from conduit_flat_file_db.blocks import allocate_for_map
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit a write fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
try:
    allocate_for_map(fd, 4096, "page")
except OSError as exc:
    print("refused", errno.errorcode[exc.errno], os.fstat(fd).st_size)
else:
    print("allocated", os.fstat(fd).st_size)
"""


def test_a_page_cut_short_by_a_file_size_limit_is_refused_not_mapped(tmp_path: Path) -> None:
    """Under a file size limit inside the page, posix_fallocate fails (EFBIG) and the page is
    written as zeros, where the write comes back short: that is an error, never a page shorter
    than its map (whose stores past the end would reach no file)."""
    result = subprocess.run(
        [sys.executable, "-c", _SHORT_WRITE_CHILD, str(tmp_path / "page")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert result.stdout.split() == ["refused", "EFBIG", "100"], result.stdout + result.stderr
