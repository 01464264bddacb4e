"""Disk blocks under the small shared writable maps (the state page, the lock file's flag page).

A store through a shared map into a part of a file that has no disk block yet (a hole,
or bytes a ``ftruncate`` added) makes the kernel allocate one at that moment; on a full
disk it cannot, and the process is killed with SIGBUS. So every page such a map writes
to gets its blocks allocated with ``posix_fallocate`` before it is mapped, where a full
disk is an ``OSError(ENOSPC)`` like any write's. (The mutable segment's room is handled
the same way by writer.py; this module stays below the state page and the lock.)
"""

from __future__ import annotations

import errno
import os

_ZERO_PAGE = bytes(4096)
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
        for at in range(current, size, len(_ZERO_PAGE)):
            os.pwrite(fd, _ZERO_PAGE[: min(len(_ZERO_PAGE), size - at)], at)
    except OSError as exc:
        code = exc.errno or errno.EIO
        raise OSError(code, f"{os.strerror(code)}: cannot allocate the {size} bytes of {name} "
                      "that are mapped shared; free some space and try again") from None


def _posix_fallocate(fd: int, offset: int, length: int) -> None:
    if not hasattr(os, "posix_fallocate"):  # pragma: no cover - platforms without it (macOS)
        raise OSError(errno.EOPNOTSUPP, "no posix_fallocate here")
    os.posix_fallocate(fd, offset, length)
