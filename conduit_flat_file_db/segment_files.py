"""Finding and opening a segment's files in the datadir, and making them durable.

Every segment file is opened relative to the datadir's descriptor with ``O_NOFOLLOW``
and must be a regular file, so a name never leads outside the datadir and a
directory, FIFO or device in a segment's place is refused with a typed error
instead of failing later. Also here: reading a segment's record index (whole, or of a large
one only its valid records and what follows them), and the fsyncs of a segment's files and
of the directory.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Any

from .errors import FlatFileDbNotFoundError, FormatError, InvalidLocationError
from .fileio import pread_full
from .index import (
    HEADER_BYTES,
    KIND_RAW,
    KIND_ZSTD,
    REC_BLOB,
    REC_SEAL,
    RECORD_BYTES,
    Record,
    decode_header,
    decode_records,
    valid_record_bytes,
)
from .naming import index_name, segment_name

OPEN_READ = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK  # NONBLOCK: a FIFO never hangs us


OPEN_WRITE = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK


def open_regular(dir_fd: int, name: str, flags: int = OPEN_READ) -> int:
    """Open ``name`` in the datadir, refusing anything but a regular file of that name.

    Raises FileNotFoundError when it is missing and InvalidLocationError (a ValueError)
    for a symlink, directory, FIFO, socket or device: none of these is a file the store
    wrote, and reading one would fail later with an untyped error (EISDIR, ESPIPE).
    """
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InvalidLocationError(f"{name} is a symlink; refused") from None
        if exc.errno in (errno.EISDIR, errno.ENXIO):  # a directory, or a FIFO without a reader, opened to write
            raise InvalidLocationError(
                f"{name} is not a regular file (a directory or FIFO?); refused: move it out of the datadir"
            ) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InvalidLocationError(f"{name} is not a regular file; refused: move it out of the datadir")
    return fd


def open_data_file(dir_fd: int, number: int, flags: int = OPEN_READ) -> tuple[int, int]:
    """Open segment ``number``'s data file, whichever suffix it has: (fd, kind).

    Raises FlatFileDbNotFoundError (a FileNotFoundError) when neither exists and
    InvalidLocationError when the name is a symlink or not a regular file.
    """
    # A rewrite that changes the kind renames the new file in, then unlinks the old one: a
    # look-up that missed the new name before the rename and the old one after the unlink
    # finds the new name on a second pass.
    for kind in (KIND_RAW, KIND_ZSTD, KIND_RAW, KIND_ZSTD):
        try:
            return open_regular(dir_fd, segment_name(number, kind == KIND_ZSTD), flags), kind
        except FileNotFoundError:
            continue
    # Both names: a segment may have had either suffix (a deleted data_N.dat.zst is not "data_N.dat missing").
    raise FlatFileDbNotFoundError(
        errno.ENOENT,
        f"segment {number} does not exist (deleted, or never written)",
        f"{segment_name(number, False)} or {segment_name(number, True)}",
    )


def fsync_dir(dir_fd: int) -> None:
    """Make created, renamed or removed directory entries durable."""
    os.fsync(dir_fd)


# An index file is read whole up to this size. A larger one is read a chunk at a time up to a
# chunk that does not start with a valid record, and _TAIL_READ_BYTES past it: the bytes after the
# valid records are a writer's room only when they are zeros and at most
# segment.ROOM_CHECK_MAX_BYTES long (8 MiB), so reading more of them changes no decision. (A
# forged or damaged index with gigabytes after its records, a sparse file of zeros say, would
# else be read into memory whole.)
_WHOLE_READ_BYTES = 64 * 2**20
_CHUNK_BYTES = 8 * 2**20  # a multiple of RECORD_BYTES
_TAIL_READ_BYTES = 8 * 2**20 + RECORD_BYTES


def read_index_range(dir_fd: int, number: int, offset: int, size: int) -> bytes | None:
    """Up to ``size`` bytes of segment ``number``'s index file from ``offset`` (fewer at its end),
    or None when it is missing."""
    try:
        fd = open_regular(dir_fd, index_name(number))
    except FileNotFoundError:
        return None
    try:
        return pread_full(fd, size, offset)
    finally:
        os.close(fd)


def index_ends_where_page_says(
    dir_fd: int, number: int, view: Any, check_next: bool = True, index_fd: int | None = None
) -> bool:
    """Whether the record index of segment ``number`` ends where the state page's ``view`` (a
    ``state.MutableView`` of that segment) says its commits end.

    The view's committed index bytes must end with a valid record, a BLOB record ending (or a
    SEAL record closing the segment) at the view's committed end, or be the bare header when
    nothing is committed; a raw view's data bytes must equal its end; and, with
    ``check_next`` (under the write lock: no commit in flight), no valid record may follow. A
    page damaged since its last publish (a flipped bit, a word written by hand) fails this:
    trusted, it would serve uncommitted bytes as blobs, or make the next put overwrite
    committed ones. Two records are read (one without ``check_next``), whatever the size of
    the segment: through ``index_fd`` when given (the segment's open index file), else the file
    is opened for the read.
    """
    records_bytes = view.index_bytes - HEADER_BYTES
    if (
        records_bytes < 0
        or records_bytes % RECORD_BYTES
        or view.index_bytes > MAX_FILE_OFFSET
        or (view.kind != KIND_ZSTD and view.disk_bytes != view.end)
    ):
        return False
    if not records_bytes:
        return bool(view.end == 0)
    wanted = 2 * RECORD_BYTES if check_next else RECORD_BYTES
    if index_fd is None:
        around = read_index_range(dir_fd, number, view.index_bytes - RECORD_BYTES, wanted) or b""
    else:
        around = pread_full(index_fd, wanted, view.index_bytes - RECORD_BYTES)
    records = decode_records(around[:RECORD_BYTES]).records
    last = records[0] if records else None
    return (
        last is not None
        and ((last.rtype == REC_BLOB and last.end == view.end) or (last.rtype == REC_SEAL and last.offset == view.end))
        and (not check_next or valid_record_bytes(around[RECORD_BYTES:]) == 0)
    )


MAX_FILE_OFFSET = 2**63 - 1  # the largest offset pread takes (off_t)


def read_index(dir_fd: int, number: int, limit: int | None = None) -> bytes | None:
    """The index file of segment ``number`` (its first ``limit`` bytes), or None when missing.

    Without ``limit``: the whole file, but of a file over 64 MiB only its valid records and at
    least 8 MiB after them, at most 16 MiB (what recovery, sealing and verification look at)."""
    try:
        fd = open_regular(dir_fd, index_name(number))
    except FileNotFoundError:
        return None
    try:
        if limit is not None:
            return pread_full(fd, limit, 0)
        size = os.fstat(fd).st_size
        if size <= _WHOLE_READ_BYTES:
            return pread_full(fd, size, 0)
        return _read_valid_prefix(fd, size)
    finally:
        os.close(fd)


def _read_valid_prefix(fd: int, size: int) -> bytes:
    """The header and the chunks after it up to the first chunk that does not start with a valid
    record, then _TAIL_READ_BYTES more: so at least that much after the first record that is not
    valid, which lies at or before that chunk's start. One record is checked a chunk (the
    callers check every record they use), so a large index of valid records costs no more than
    its whole read."""
    parts = [pread_full(fd, HEADER_BYTES, 0)]
    offset = HEADER_BYTES
    while offset < size:
        chunk = pread_full(fd, min(_CHUNK_BYTES, size - offset), offset)
        if not chunk:
            break  # the file was cut shorter since its size was taken: it ends here now
        parts.append(chunk)
        offset += len(chunk)
        if not valid_record_bytes(chunk[:RECORD_BYTES]):
            parts.append(pread_full(fd, min(_TAIL_READ_BYTES, max(size - offset, 0)), offset))
            break
    return b"".join(parts)


def valid_records_from(fd: int, offset: int, size: int) -> bytes:
    """The index's bytes from ``offset`` (a record boundary) through the first chunk that holds a
    record that is not valid: the walk stops at that record, so nothing after that chunk is read.
    Memory is bounded by the valid records plus one chunk, however long the file: an index
    extended by gigabytes (a sparse file of zeros, by hand or by a damaged filesystem) used to be
    read into memory whole by every read-only open that walked it, and by a compressed reader
    catching up with its segment's seal."""
    parts = []
    while offset < size:
        chunk = pread_full(fd, min(_CHUNK_BYTES, size - offset), offset)
        if not chunk:
            break  # cut shorter since its size was taken
        parts.append(chunk)
        offset += len(chunk)
        if valid_record_bytes(chunk) != len(chunk):
            break
    return b"".join(parts)


def index_records(dir_fd: int, number: int, limit: int | None = None) -> list[Record]:
    """The records of a segment's index that decode (the valid prefix); [] without an index."""
    raw = read_index(dir_fd, number, limit)
    if raw is None:
        return []
    decode_header(raw, index_name(number), number)
    return decode_records(memoryview(raw)[HEADER_BYTES:]).records


def written_kind(dir_fd: int, number: int) -> int | None:
    """The kind a segment was first written as (its index header), None without a readable index.

    Locations handed out by put name the segment with this kind's suffix, so the store
    names it that way too when it lists locations, even after a rewrite changed the suffix.
    """
    raw = read_index(dir_fd, number, HEADER_BYTES)
    if raw is None:
        return None
    try:
        return decode_header(raw, index_name(number), number).kind
    except FormatError:
        return None
