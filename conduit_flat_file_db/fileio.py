"""Positional reads and writes of any size: the only place that loops over short system calls.

Linux moves at most ``MAX_IO_BYTES`` (2 GiB - 4 KiB) per ``read``, ``write``, ``pread``,
``pwrite``, ``preadv`` or ``pwritev`` call, whatever was asked for, and returns that count
as if the file ended or the disk filled there; other systems cap a call too. So every
read or write that may be larger (a blob, an index, a seek table) goes through these
helpers. Each makes the one call a small read or write needs and loops only when it came
back short: small reads and writes cost what they cost before. Where a caller has
inlined that first call on a hot path, it hands a short result to :func:`finish_pread`.
Reads bounded by a small constant (headers, probes of a frame, the 8 MiB pieces of a
checksum) stay single ``os.pread`` calls: they cannot meet the cap.
"""

from __future__ import annotations

import errno
import os
from typing import Any, Callable, Sequence

from .errors import CorruptionError

MAX_IO_BYTES = 0x7FFFF000  # Linux MAX_RW_COUNT: the most one read or write call moves
IOV_MAX = 1024  # buffers per pwritev call (Linux UIO_MAXIOV)
_ZEROS = bytes(256 * 2**10)  # the block write_zeros repeats
_ZEROS_PER_CALL = 16  # up to 4 MiB of zeros per pwritev


def list_dir(dir_fd: int) -> list[str]:
    """The names in the directory ``dir_fd``, listed through an open of its own.

    ``os.listdir(fd)`` reads through a duplicate of ``fd``, which shares the directory's read
    position with ``fd`` and every other duplicate: two threads listing at once each get part
    of the names. A fresh open has a position of its own (two syscalls more; no hot path lists).
    """
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        return os.listdir(fd)
    finally:
        os.close(fd)


def pread_full(fd: int, size: int, offset: int) -> bytes:
    """Bytes [offset, offset + size) of ``fd``; fewer only where the file ends."""
    data = os.pread(fd, size, offset)
    if len(data) == size or not data:
        return data
    return finish_pread(fd, data, size, offset)


def finish_pread(fd: int, head: bytes, size: int, offset: int) -> bytes:
    """Complete a ``pread(fd, size, offset)`` that returned ``head``, fewer than ``size`` bytes:
    read on until ``size`` bytes or the end of the file. A read past MAX_IO_BYTES holds its
    size twice for a moment (the pieces and the joined bytes): ``bytes`` cannot be filled in place."""
    parts = [head]
    got = len(head)
    while got < size:
        part = os.pread(fd, size - got, offset + got)
        if not part:
            break  # the end of the file
        parts.append(part)
        got += len(part)
    return head if len(parts) == 1 else b"".join(parts)


def pread_exact(fd: int, size: int, offset: int, path: str) -> bytes:
    """Bytes [offset, offset + size) of ``fd``, or CorruptionError naming ``path`` when the file ends first."""
    data = pread_full(fd, size, offset)
    if len(data) != size:
        raise CorruptionError(
            f"{path}: file ends at offset {offset + len(data)}, {size - len(data)} bytes "
            f"short of the {size} bytes wanted at offset {offset}",
            path,
            offset + len(data),
        )
    return data


def pread_at(fd: int) -> Callable[[int, int], bytes]:
    """A ``read_at(offset, size)`` function over ``fd`` (for seek-table parsers); short only at the end."""
    return lambda offset, size: pread_full(fd, size, offset)


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """Write every byte of ``data`` at ``offset`` (pwrite may write less than asked)."""
    written = os.pwrite(fd, data, offset)
    if written == len(data):
        return
    view = memoryview(data).cast("B")
    while written < len(view):
        count = os.pwrite(fd, view[written:], offset + written)
        if count <= 0:  # never for a regular file (a full disk raises): do not spin
            raise OSError(errno.EIO, f"pwrite wrote nothing at offset {offset + written}")
        written += count


def pwritev_all(fd: int, buffers: Sequence[Any], offset: int) -> int:
    """Write the concatenation of ``buffers`` (bytes-like, one byte per item) at ``offset`` with
    few syscalls; returns bytes written."""
    done = 0
    for first in range(0, len(buffers), IOV_MAX):
        batch = buffers[first : first + IOV_MAX]
        size = sum(len(b) for b in batch)
        written = os.pwritev(fd, batch, offset + done) if len(batch) > 1 else os.pwrite(fd, batch[0], offset + done)
        if written != size:
            _finish_pwritev(fd, batch, written, offset + done)
        done += size
    return done


def _finish_pwritev(fd: int, batch: Sequence[Any], written: int, offset: int) -> None:
    """Write the rest of ``batch`` after a pwritev at ``offset`` wrote its first ``written`` bytes:
    the buffer it stopped in, then the buffers after it (never a joined copy of them all)."""
    at = 0
    for index, buffer in enumerate(batch):
        size = len(buffer)
        if at + size > written:
            pwrite_all(fd, memoryview(buffer).cast("B")[written - at :], offset + written)
            pwritev_all(fd, batch[index + 1 :], offset + at + size)
            return
        at += size


def write_zeros(fd: int, start: int, end: int) -> None:
    """Write zero bytes over [start, end) of ``fd``: one shared block of zeros, repeated in the
    buffers of each ``pwritev`` (no zero buffer the size of the range). Always ``pwritev``, never
    ``pwrite`` as pwritev_all does for one buffer: zeroing the room of mapped writes is no write of
    a put's bytes, and tests count a put's ``pwrite`` calls. A short write just moves ``at``."""
    at = start
    while at < end:
        chunk = min(end - at, len(_ZEROS) * _ZEROS_PER_CALL)
        whole, part = divmod(chunk, len(_ZEROS))
        written = os.pwritev(fd, [_ZEROS] * whole + ([memoryview(_ZEROS)[:part]] if part else []), at)
        if written <= 0:  # never for a regular file (a full disk raises): do not spin
            raise OSError(errno.EIO, f"pwritev wrote nothing at offset {at}")
        at += written
