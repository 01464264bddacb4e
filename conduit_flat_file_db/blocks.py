"""Disk blocks under a store's files: reserving and allocating them, and whether the
filesystem lets writers store through shared maps.

A store through a shared map into a part of a file that has no disk block yet (a hole,
or bytes a ``ftruncate`` added) makes the kernel allocate one at that moment; on a full
disk it cannot, and the process is killed with SIGBUS. So every page of the small
shared maps (the state page, the lock file's flag page) gets its blocks allocated with
``posix_fallocate`` before it is mapped (:func:`allocate_for_map`), where a full disk is
an ``OSError(ENOSPC)`` like any write's; the mutable segment's room (see segment.py) is
allocated with :func:`allocate`. This module stays below the state page and the lock.

Blocks for appends that ``pwrite`` makes are *reserved* with :func:`preallocate`: the
file's size does not change (the words padding, room and reserve: see segment.py).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import sys
from typing import Any, Callable

from .fileio import write_zeros

_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def _may_have_hole(fd: int, size: int) -> bool:
    """Whether bytes [0, size) of ``fd`` may lack disk blocks. One ``lseek``: cheaper than an
    ``fallocate``, which on ext4 writes the inode through the journal even when nothing is missing
    (ext4 also reports blocks allocated but never written as a hole, which costs only that call)."""
    try:
        return os.lseek(fd, 0, os.SEEK_HOLE) < size
    except (OSError, AttributeError):  # no SEEK_HOLE here: assume the worst
        return True


def allocate_for_map(fd: int, size: int, name: str) -> None:
    """Give bytes [0, size) of the open file ``fd`` disk blocks, growing it to ``size`` if shorter,
    so that stores through a shared map of them cannot meet a full disk.

    Existing bytes are kept. Raises ``OSError(ENOSPC)`` (or EDQUOT) naming the file when the blocks
    cannot be had; the file then has no byte past its old size that lacks a block (``fallocate``
    grows the size only over blocks it allocated), so a later opener never maps a hole that this
    call left behind. Where the filesystem cannot allocate at all, the bytes past the end are
    written as zeros instead (a full disk fails that write the same way).
    """
    current = os.fstat(fd).st_size
    if current >= size and not _may_have_hole(fd, size):
        return
    try:
        try:
            _posix_fallocate(fd, 0, size)  # glibc itself writes zeros where the filesystem cannot fallocate
            return
        except OSError as exc:
            if exc.errno in _NO_SPACE:
                raise
        write_zeros(fd, current, size)  # a short write is finished or fails: never a page cut short
    except OSError as exc:
        code = exc.errno or errno.EIO
        raise OSError(
            code,
            f"{os.strerror(code)}: cannot allocate the {size} bytes of {name} "
            "that are mapped shared; free some space and try again",
        ) from None


def _posix_fallocate(fd: int, offset: int, length: int) -> None:
    if not hasattr(os, "posix_fallocate"):  # pragma: no cover - platforms without it (macOS)
        raise OSError(errno.EOPNOTSUPP, "no posix_fallocate here")
    os.posix_fallocate(fd, offset, length)


def _libc_function(name: str, argtypes: list[Any]) -> Any:
    """A function of the C library (Linux only; None where it is missing), errno kept."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = argtypes
    function.restype = ctypes.c_int
    return function


_FALLOCATE: Callable[[int, int, int, int], int] | None = _libc_function(
    "fallocate", [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
)


_FSTATFS: Callable[[int, ctypes.Array[ctypes.c_char]], int] | None = _libc_function(
    "fstatfs", [ctypes.c_int, ctypes.c_char_p]
)


_FALLOC_FL_KEEP_SIZE = 1


def preallocate(fd: int, offset: int, length: int) -> bool:
    """Reserve disk blocks for bytes [offset, offset + length) of a file without changing its
    size (``fallocate`` with FALLOC_FL_KEEP_SIZE, Linux; RocksDB preallocates its files the
    same way). Writes there then skip block allocation, which makes large appends faster
    (the README's benchmarks measure it). Readers see nothing: the size
    is unchanged, and cutting the file (sealing does) frees what is beyond it. Returns False
    where it is not supported or failed (then writes allocate as usual; a full disk is
    still reported by the write itself)."""
    if _FALLOCATE is None:
        return False
    return _FALLOCATE(fd, _FALLOC_FL_KEEP_SIZE, offset, length) == 0


def allocate(fd: int, offset: int, length: int) -> int:
    """Allocate disk blocks for bytes [offset, offset + length) of a file, growing its size to
    cover them (``fallocate`` mode 0, Linux): the new bytes read as zeros, and writes there
    through a shared map can no longer meet a full disk (which a map reports with SIGBUS).
    Returns 0, or the errno (ENOSPC, EOPNOTSUPP where the filesystem cannot; ENOSYS where
    this platform has no ``fallocate``)."""
    if _FALLOCATE is None:
        return errno.ENOSYS
    if _FALLOCATE(fd, 0, offset, length) == 0:
        return 0
    return ctypes.get_errno() or errno.EIO


def maps_supported(dir_fd: int | None = None) -> bool:
    """True where writers may commit small puts through shared maps of files in the directory
    ``dir_fd`` (None: the filesystem is not checked). That takes Linux (for :func:`allocate`)
    on x86, whose stores become visible to other cores in program order, so a reader that
    sees the new committed end in the state page also sees the bytes stored before it; and a
    filesystem that overwrites in place, so that blocks allocated up front are all a store
    needs. On a copy-on-write filesystem (btrfs, bcachefs, ZFS) an overwrite takes new
    blocks, and a store through a map that finds the disk full kills the process. Elsewhere
    every put is written with ``pwrite``."""
    if _FALLOCATE is None or platform.machine().lower() not in _STORES_IN_ORDER:
        return False
    return dir_fd is None or filesystem_type(dir_fd) not in COPY_ON_WRITE_FILESYSTEMS


_STORES_IN_ORDER = frozenset({"x86_64", "amd64", "i386", "i686"})


# statfs magic numbers of btrfs, bcachefs, ZFS
COPY_ON_WRITE_FILESYSTEMS = frozenset({0x9123683E, 0xCA451A4E, 0x2FC12FC1})


def filesystem_type(fd: int) -> int | None:
    """The ``f_type`` magic number of the filesystem holding ``fd`` (Linux ``fstatfs``), or None."""
    if _FSTATFS is None:
        return None
    buf = ctypes.create_string_buffer(512)  # struct statfs is 120 bytes on x86-64
    if _FSTATFS(fd, buf) != 0:
        return None
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF  # f_type is the first field
