"""One segment on disk: open, append, read at an offset, recover its tail.

A raw segment ``data_{n:08d}.dat`` is the plain concatenation of its blobs; its
record index ``data_{n:08d}.idx`` says which bytes are committed. Everything here
works on file descriptors relative to the datadir's descriptor (``dir_fd``) and
opens with ``O_NOFOLLOW``, so a name can never lead outside the datadir.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from typing import NamedTuple, Sequence

import xxhash

from .errors import CorruptionError, FlatFileDbNotFoundError, FormatError, InvalidLocationError
from .index import (
    FLAG_LEGACY_EXTENT,
    HEADER_BYTES,
    KIND_RAW,
    KIND_ZSTD,
    REC_BLOB,
    REC_SEAL,
    RECORD_BYTES,
    Record,
    decode_header,
    decode_records,
    encode_header,
    encode_record,
)
from .naming import index_name, segment_name

logger = logging.getLogger("conduit_flat_file_db")

_OPEN_READ = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
_OPEN_WRITE = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
_IOV_MAX = 1024
CHECK_CHUNK_BYTES = 8 * 2**20  # read size when checksumming a blob: bounds memory


def open_data_file(dir_fd: int, number: int, flags: int = _OPEN_READ) -> tuple[int, int]:
    """Open segment ``number``'s data file, whichever suffix it has: (fd, kind).

    Raises FlatFileDbNotFoundError (a FileNotFoundError) when neither exists and
    InvalidLocationError when the name is a symlink or not a regular file.
    """
    for kind in (KIND_RAW, KIND_ZSTD):
        name = segment_name(number, kind == KIND_ZSTD)
        try:
            fd = os.open(name, flags, dir_fd=dir_fd)
        except FileNotFoundError:
            continue
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise InvalidLocationError(f"segment file {name} is a symlink; refused") from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise InvalidLocationError(f"segment file {name} is not a regular file; refused")
        return fd, kind
    raise FlatFileDbNotFoundError(
        errno.ENOENT, f"segment {number} does not exist (deleted, or never written)", segment_name(number, False)
    )


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """Write every byte of ``data`` at ``offset`` (pwrite may write less than asked)."""
    written = os.pwrite(fd, data, offset)
    if written == len(data):
        return
    view = memoryview(data).cast("B")
    while written < len(view):
        written += os.pwrite(fd, view[written:], offset + written)


def pwritev_all(fd: int, buffers: Sequence[bytes | bytearray | memoryview], offset: int, total: int) -> None:
    """Write the concatenation of ``buffers`` (``total`` bytes) at ``offset`` with few syscalls."""
    if len(buffers) == 1:
        pwrite_all(fd, buffers[0], offset)
        return
    done = 0
    index = 0
    while index < len(buffers):
        batch = buffers[index : index + _IOV_MAX]
        size = sum(len(b) for b in batch)
        written = os.pwritev(fd, batch, offset + done)
        if written != size:  # partial: finish this batch buffer by buffer
            skip = written
            for buf in batch:
                if skip >= len(buf):
                    skip -= len(buf)
                    continue
                pwrite_all(fd, memoryview(buf).cast("B")[skip:], offset + done + written)
                written += len(buf) - skip
                skip = 0
        done += size
        index += _IOV_MAX
    if done != total:
        raise ValueError(f"internal: wrote {done} bytes, expected {total}")


def fsync_dir(dir_fd: int) -> None:
    """Make created, renamed or removed directory entries durable."""
    os.fsync(dir_fd)


def checksum_range(fd: int, start: int, end: int) -> int:
    """XXH3-64 of bytes [start, end) of a raw file, read in bounded chunks."""
    if end - start <= CHECK_CHUNK_BYTES:
        return xxhash.xxh3_64_intdigest(os.pread(fd, end - start, start))
    hasher = xxhash.xxh3_64()
    pos = start
    while pos < end:
        chunk = os.pread(fd, min(CHECK_CHUNK_BYTES, end - pos), pos)
        if not chunk:
            break
        hasher.update(chunk)
        pos += len(chunk)
    return hasher.intdigest()


def read_index(dir_fd: int, number: int) -> bytes | None:
    """The whole index file of segment ``number``, or None when it does not exist."""
    try:
        fd = os.open(index_name(number), _OPEN_READ, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    try:
        size = os.fstat(fd).st_size
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


def blob_records(dir_fd: int, number: int) -> list[Record]:
    """The committed BLOB records of a sealed or mutable segment (prefix that decodes)."""
    raw = read_index(dir_fd, number)
    if raw is None:
        return []
    decode_header(raw, index_name(number))
    return [r for r in decode_records(memoryview(raw)[HEADER_BYTES:]).records if r.rtype == REC_BLOB]


class Tail(NamedTuple):
    """The committed extent of a segment after recovery."""

    kind: int
    end: int  # committed uncompressed bytes
    index_bytes: int  # committed bytes of the index file
    disk_bytes: int  # committed bytes of the data file
    blobs: int
    sealed: bool


def create_segment(dir_fd: int, number: int, kind: int) -> None:
    """Create an empty segment (index header, then data file) and make it durable."""
    header = encode_header(number, kind, time.time_ns())
    fd = os.open(index_name(number), _OPEN_WRITE | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dir_fd)
    try:
        pwrite_all(fd, header, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    fd = os.open(segment_name(number, kind == KIND_ZSTD), _OPEN_WRITE | os.O_CREAT | os.O_EXCL, 0o644,
                 dir_fd=dir_fd)
    os.close(fd)
    fsync_dir(dir_fd)


def recover_segment(dir_fd: int, number: int, default_kind: int, check_from: int | None) -> Tail:
    """Bring the newest segment to its last committed record; call under the write lock.

    Steps (FORMAT.md, "Recovery"): make sure both files exist; decode the index up to
    its first torn or bad record; walk BLOB records while each starts where the last
    ended and lies inside the data file; when ``check_from`` is not None, also check
    the XXH3 of every blob ending past ``check_from`` (after a power loss); cut the
    index and the data file after the last good record. Raw segments only.
    """
    try:
        data_fd, kind = open_data_file(dir_fd, number, _OPEN_WRITE)
    except FlatFileDbNotFoundError:
        kind = default_kind
        data_fd = os.open(segment_name(number, kind == KIND_ZSTD), _OPEN_WRITE | os.O_CREAT, 0o644,
                          dir_fd=dir_fd)
        fsync_dir(dir_fd)
    try:
        if kind != KIND_RAW:
            raise FormatError(f"segment {number}: compressed segments are not supported by this version")
        return _recover_raw(dir_fd, number, data_fd, check_from)
    finally:
        os.close(data_fd)


def _recover_raw(dir_fd: int, number: int, data_fd: int, check_from: int | None) -> Tail:
    name = segment_name(number, False)
    data_size = os.fstat(data_fd).st_size
    raw_index = read_index(dir_fd, number)
    try:
        if raw_index is None:
            raise FormatError(f"{index_name(number)} is missing")
        header = decode_header(raw_index, index_name(number))
        if header.segment != number:
            raise FormatError(f"{index_name(number)} belongs to segment {header.segment}")
    except FormatError as exc:
        return _rebuild_index(dir_fd, number, data_fd, data_size, str(exc))

    scan = decode_records(memoryview(raw_index)[HEADER_BYTES:])
    end = 0
    blobs = 0
    good = 0
    sealed = False
    problem = scan.problem
    for record in scan.records:
        if sealed:
            problem = f"record after the SEAL record at record {good}"
            break
        if record.rtype == REC_SEAL:
            if record.a != end:
                problem = f"SEAL says {record.a} bytes but the blobs end at {end}"
                break
            sealed = True
        elif record.rtype == REC_BLOB:
            blob_end = record.a + record.b
            if record.a != end or blob_end > data_size:
                problem = f"blob record at offset {record.a}..{blob_end} does not fit the data ({data_size} bytes)"
                break
            if check_from is not None and blob_end > check_from and not record.flags & FLAG_LEGACY_EXTENT:
                if checksum_range(data_fd, record.a, blob_end) != record.c:
                    problem = f"blob at offset {record.a} fails its checksum after a power loss"
                    break
            end = blob_end
            blobs += 1
        else:
            problem = f"unexpected record type {record.rtype} in a raw segment"
            break
        good += 1
    index_bytes = HEADER_BYTES + good * RECORD_BYTES
    if index_bytes < len(raw_index):
        logger.warning("%s: recovery cut the record index from %d to %d bytes (%s)",
                       index_name(number), len(raw_index), index_bytes, problem)
        _truncate(dir_fd, index_name(number), index_bytes)
    if data_size > end:
        logger.warning("%s: recovery cut %d uncommitted bytes after offset %d", name, data_size - end, end)
        os.ftruncate(data_fd, end)
        os.fsync(data_fd)
    return Tail(KIND_RAW, end, index_bytes, end, blobs, sealed)


def _truncate(dir_fd: int, name: str, size: int) -> None:
    fd = os.open(name, _OPEN_WRITE, dir_fd=dir_fd)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def _rebuild_index(dir_fd: int, number: int, data_fd: int, data_size: int, why: str) -> Tail:
    """Write a fresh index for a segment whose index is missing or unreadable.

    An empty data file gets an empty index (a crash while creating the segment). A
    non-empty one was written by an engine without an index (or lost its index): its
    bytes become one LEGACY_EXTENT record, so every old location inside still reads.
    """
    parts = [encode_header(number, KIND_RAW, time.time_ns())]
    if data_size:
        logger.warning("segment %d: %s; indexing its %d bytes as one legacy extent", number, why, data_size)
        parts.append(encode_record(REC_BLOB, FLAG_LEGACY_EXTENT, 0, data_size,
                                   checksum_range(data_fd, 0, data_size)))
    payload = b"".join(parts)
    tmp = f".tmp-{index_name(number)}"
    fd = os.open(tmp, _OPEN_WRITE | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=dir_fd)
    try:
        pwrite_all(fd, payload, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, index_name(number), src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    fsync_dir(dir_fd)
    return Tail(KIND_RAW, data_size, len(payload), data_size, 1 if data_size else 0, False)


def corruption(path: str, offset: int, message: str) -> CorruptionError:
    """A CorruptionError whose message names the file and offset."""
    return CorruptionError(f"{path} at offset {offset}: {message}", path, offset)
