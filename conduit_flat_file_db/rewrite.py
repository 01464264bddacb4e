"""Rewriting a sealed segment in place of itself: re-framing, compressing, decompressing.

Offsets live in uncompressed space, so a sealed segment can be rewritten with other
frames or another suffix while every location into it stays valid. The new file
is written aside, fsynced, and switched in by rename under the write lock; readers
that hold the old file keep reading it (POSIX keeps an unlinked open file alive)
and readers that open afterwards get the new one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import Callable, ContextManager

from .checksums import CHECK_CHUNK_BYTES
from .errors import FlatFileDbUnsafeAccessError
from .fileio import pread_at, pread_exact, pwrite_all
from .index import HEADER_BYTES, KIND_ZSTD, REC_SEAL, RECORD_BYTES, decode_header, decode_records
from .naming import index_name, segment_name, temp_name
from .seal import sync_segment
from .seekable import Framing, SeekableReader, parse_seek_table
from .segment_files import OPEN_READ, OPEN_WRITE, fsync_dir, open_data_file, read_index
from .state import SharedState

logger = logging.getLogger("conduit_flat_file_db")


def _source(fd: int, kind: int, number: int) -> tuple[int, Callable[[int, int], bytes]]:
    """(uncompressed size, read(start, end)) of an open segment file."""
    size = os.fstat(fd).st_size
    if kind == KIND_ZSTD:
        table = parse_seek_table(pread_at(fd), size, segment_name(number, True))
        source = SeekableReader(fd, table=table)
        return source.size, source.read_span
    name = segment_name(number, False)
    return size, lambda start, end: pread_exact(fd, end - start, start, name)


def _sealed(dir_fd: int, number: int) -> bool:
    """Whether segment ``number``'s index ends in a SEAL record (or has no record at all). Its last
    record alone is decoded when it is a SEAL that ends the file: a mutable index never holds one,
    and decoding every record of a segment of small puts takes about a second."""
    raw = read_index(dir_fd, number)
    if raw is None:
        return True
    decode_header(raw, index_name(number), number)
    body = memoryview(raw)[HEADER_BYTES:]
    if body and len(body) % RECORD_BYTES == 0:
        last = decode_records(body[-RECORD_BYTES:]).records
        if last and last[0].rtype == REC_SEAL:
            return True
    records = decode_records(body).records
    return not records or records[-1].rtype == REC_SEAL


def _write_copy(
    dir_fd: int, datadir: str, tmp: str, total: int, read: Callable[[int, int], bytes], *, framing: Framing, fsync: bool
) -> None:
    if framing.compressed:
        with framing.writer(os.path.join(datadir, tmp)) as out:
            for pos in range(0, total, CHECK_CHUNK_BYTES):
                out.write(read(pos, min(total, pos + CHECK_CHUNK_BYTES)))
    else:
        out_fd = os.open(tmp, OPEN_WRITE | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=dir_fd)
        try:
            for pos in range(0, total, CHECK_CHUNK_BYTES):
                pwrite_all(out_fd, read(pos, min(total, pos + CHECK_CHUNK_BYTES)), pos)
        finally:
            os.close(out_fd)
    if fsync:
        check_fd = os.open(tmp, OPEN_READ, dir_fd=dir_fd)
        try:
            os.fsync(check_fd)
        finally:
            os.close(check_fd)


def rewrite_segment(
    dir_fd: int,
    datadir: str,
    number: int,
    framing: Framing,
    *,
    write_lock: Callable[[], ContextManager[None]],
    state: SharedState,
    fsync: bool = True,
) -> bool:
    """Rewrite sealed segment ``number`` with ``framing``; returns False when it changed or vanished meanwhile.

    Memory is bounded by CHECK_CHUNK_BYTES plus the compressor's frames in flight.
    Raises FlatFileDbUnsafeAccessError for a segment that is not sealed.
    """
    fd, kind = open_data_file(dir_fd, number)
    try:
        if not _sealed(dir_fd, number):
            raise FlatFileDbUnsafeAccessError(f"segment {number} is not sealed; only sealed segments are rewritten")
        if fsync:
            sync_segment(dir_fd, number)  # its SEAL durable before the switch: recovery never cuts a rewrite
        before = os.fstat(fd)
        total, read = _source(fd, kind, number)
        target = segment_name(number, framing.compressed)
        # The thread in the scratch name: two threads of a process may rewrite one segment at once
        # (recompress, and the seal hook of the thread that sealed it), and with the process's name
        # alone the second would truncate and rewrite the file the first is switching in.
        tmp = temp_name(f"{threading.get_native_id()}-{target}")
        try:
            _write_copy(dir_fd, datadir, tmp, total, read, framing=framing, fsync=fsync)
            with write_lock():
                try:
                    now = os.stat(segment_name(number, kind == KIND_ZSTD), dir_fd=dir_fd, follow_symlinks=False)
                except FileNotFoundError:
                    return False  # deleted while we worked
                if (now.st_ino, now.st_dev) != (before.st_ino, before.st_dev):
                    return False  # rewritten by someone else meanwhile
                os.rename(tmp, target, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                if (kind == KIND_ZSTD) != framing.compressed:
                    os.unlink(segment_name(number, kind == KIND_ZSTD), dir_fd=dir_fd)
                state.bump_epoch()
                if fsync:
                    fsync_dir(dir_fd)
            logger.debug(
                "%s: rewrote segment %d (%d bytes) as %s",
                datadir,
                number,
                total,
                "compressed" if framing.compressed else "raw",
            )
            return True
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dir_fd)
    finally:
        os.close(fd)
