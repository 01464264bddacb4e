"""Whether a sealed segment's files are its own: checked once per open of a segment, never per read.

Reads of a sealed segment use its data file alone (a raw file by its size, a compressed one by its
seek table), so a data file swapped with another segment's, an index copied over another's, or a
file replaced by a copy of another store's segment would serve another blob's bytes for a
location. Each time a reader opens a sealed segment it checks, at a bounded cost whatever the
segment's size (FORMAT.md "Record index"):

- the index header names this segment;
- the data file holds exactly the uncompressed bytes the SEAL record closes the segment at (a raw
  file's size, a compressed file's seek table). Not the disk size the SEAL record gives: a
  rewrite (re-framing, recompression) changes it, and so does a seal that kept its padding frame;
- the last blob (and, when that fails, the first blob) of the segment, when at most
  FINGERPRINT_MAX_BYTES long, has the XXH3-64 its BLOB record holds. A foreign file of the same
  size fails both; a damaged blob fails only its own, so one damaged blob never takes the rest
  of its segment down (reads do not check checksums; ``verify()`` reports it).

A reader of the mutable segment makes the same checks but the SEAL's when it opens the segment
(read_mutable_index: its header, and its last committed blob, then its first).

A data file that fails raises CorruptionError naming it and an offset (as a read that finds a
segment shorter than its committed size does): its bytes are not the segment's, so no location
into it may be served, and the caller's location is not at fault (so not a ValueError). An index
whose header names another segment raises FormatError, as every reader of an index refuses it
(index.decode_header): the file does not have the layout of this segment's index.
Segments without an index (written by the original engine), or whose index does not decode or
does not end in a SEAL record (damage that ``verify()`` reports, and recovery judges), keep
being served by their data file as before.
"""

from __future__ import annotations

import os
from bisect import bisect_right
from typing import Callable

import xxhash

from .errors import CorruptionError, FormatError
from .index import (
    FLAG_LEGACY_EXTENT,
    FLAG_UNCHECKED,
    HEADER_BYTES,
    REC_BLOB,
    REC_SEAL,
    RECORD_BYTES,
    Record,
    decode_header,
    decode_records,
)
from .naming import index_name
from .seekable import FrameTable
from .segment_files import open_regular

FINGERPRINT_MAX_BYTES = 64 * 2**10  # a blob longer than this is not read at an open
FINGERPRINT_MAX_FRAMES_BYTES = 2**20  # nor one whose frames decompress to more than this
_HEAD_READ_BYTES = HEADER_BYTES + 4096  # the header and the first records: a compressed index's first BLOB


class SealedIndex:
    """What a sealed segment's index says about its data file: its SEAL record, its last BLOB record
    (None when the record before the SEAL is none) and, decoded only when asked, its first."""

    __slots__ = ("_head", "last", "seal")

    def __init__(self, seal: Record | None, last: Record | None, head: bytes) -> None:
        self.seal = seal
        self.last = last
        self._head = head

    def first(self) -> Record | None:
        """The first BLOB record among the index's first records (raw: the first record;
        compressed: after the FRAME records of the first commit), None when not found there."""
        body = memoryview(self._head)[HEADER_BYTES:]
        first = decode_records(body[:RECORD_BYTES]).records  # a raw index starts with it: one record decoded
        if first and first[0].rtype == REC_BLOB:
            return first[0]
        return next((r for r in decode_records(body).records if r.rtype == REC_BLOB), None)


def read_sealed_index(dir_fd: int, number: int, index_path: str) -> SealedIndex | None:
    """The ends of segment ``number``'s index (two preads), or None when there is nothing to check.

    Raises FormatError when the header names another segment: an index moved or copied over this
    one (as every reader of an index refuses it).
    """
    try:
        fd = open_regular(dir_fd, index_name(number))
    except FileNotFoundError:
        return None  # written without an index (the original engine): served by its data file
    try:
        size = os.fstat(fd).st_size
        head = os.pread(fd, min(size, _HEAD_READ_BYTES), 0)
        try:
            header = decode_header(head, index_path)
        except FormatError:
            return None  # a damaged header: verify() reports it; the data file is still the segment's
        if header.segment != number:
            decode_header(head, index_path, number)  # raises the FormatError that names both segments
        records_bytes = size - HEADER_BYTES
        if records_bytes < RECORD_BYTES or records_bytes % RECORD_BYTES:
            return None
        wanted = min(2, records_bytes // RECORD_BYTES) * RECORD_BYTES
        tail = os.pread(fd, wanted, size - wanted)
    finally:
        os.close(fd)
    ends = decode_records(tail).records
    if not ends or len(ends) * RECORD_BYTES != len(tail) or ends[-1].rtype != REC_SEAL:
        return None  # not a whole SEAL at the end: verify() and recovery judge such an index
    seal = ends[-1]
    last = ends[0] if len(ends) == 2 and ends[0].rtype == REC_BLOB else None
    return SealedIndex(seal, last, head)


def check_sealed_files(
    index: SealedIndex,
    data_path: str,
    disk_size: int,
    table: FrameTable | None,
    read: Callable[[int, int], bytes],
) -> None:
    """Refuse a data file that is not the one ``index`` seals (CorruptionError naming it).

    ``disk_size``: the data file's size; ``table``: its seek table (None for a raw file);
    ``read(start, end)``: its uncompressed bytes.
    """
    seal = index.seal
    assert seal is not None
    size = disk_size if table is None else table.decompressed_size
    if size != seal.offset:
        raise CorruptionError(
            f"{data_path}: the data file holds {size} uncompressed bytes but its SEAL record closes the "
            f"segment at {seal.offset}: it is not this segment's file (swapped, replaced, cut or "
            "extended); refused",
            data_path,
            min(size, seal.offset),
        )
    check_blobs(index, data_path, table, read)


def read_mutable_index(dir_fd: int, number: int, index_path: str, index_bytes: int) -> SealedIndex | None:
    """The first records of the mutable segment ``number``'s index and its last committed one
    (``index_bytes``: its committed size, from the state page), or None without an index.

    Raises FormatError when the header names another segment. The SEAL of the result is None.
    """
    try:
        fd = open_regular(dir_fd, index_name(number))
    except FileNotFoundError:
        return None
    try:
        head = os.pread(fd, _HEAD_READ_BYTES, 0)
        try:
            header = decode_header(head, index_path)
        except FormatError:
            return None  # recovery's to judge (a writer's open rebuilds such an index)
        if header.segment != number:
            decode_header(head, index_path, number)  # raises the FormatError that names both segments
        records = decode_records(os.pread(fd, RECORD_BYTES, index_bytes - RECORD_BYTES)).records
    finally:
        os.close(fd)
    last = records[0] if index_bytes > HEADER_BYTES and records and records[0].rtype == REC_BLOB else None
    return SealedIndex(None, last, head)


def check_blobs(
    index: SealedIndex, data_path: str, table: FrameTable | None, read: Callable[[int, int], bytes]
) -> None:
    """Refuse a data file whose last blob and first blob (each when checkable) both fail their
    checksums, or whose only checkable one does (CorruptionError naming it)."""
    last = index.last
    if last is not None and _checkable(last, table):
        if _matches(last, read):
            return
        first = index.first()
        if first is not None and first != last and _checkable(first, table) and _matches(first, read):
            return  # the last blob alone is damaged: the file is the segment's (verify() reports it)
        raise CorruptionError(
            f"{data_path}: the blob at offset {last.offset} does not have the checksum its index record "
            "holds: the data file is not this segment's (swapped or replaced?), or it is damaged; "
            "refused (verify() reports what it finds)",
            data_path,
            last.offset,
        )
    first = index.first()
    if first is not None and _checkable(first, table) and not _matches(first, read):
        raise CorruptionError(
            f"{data_path}: the blob at offset {first.offset} does not have the checksum its index record "
            "holds: the data file is not this segment's (swapped or replaced?), or it is damaged; refused",
            data_path,
            first.offset,
        )


def _checkable(record: Record, table: FrameTable | None) -> bool:
    """Whether ``record``'s blob is checked at an open: not an adopted or legacy one, not empty,
    not too long, and (compressed) not in frames too long."""
    if record.flags & (FLAG_LEGACY_EXTENT | FLAG_UNCHECKED) or not 0 < record.size <= FINGERPRINT_MAX_BYTES:
        return False
    if table is None:
        return True
    offsets = table.d_offsets
    first = max(bisect_right(offsets, record.offset) - 1, 0)
    last = min(bisect_right(offsets, record.end - 1), len(offsets) - 1)
    return offsets[last] - offsets[first] <= FINGERPRINT_MAX_FRAMES_BYTES


def _matches(record: Record, read: Callable[[int, int], bytes]) -> bool:
    """Whether ``record``'s blob has its checksum (a frame that fails to decode: no)."""
    try:
        data = read(record.offset, record.end)
    except CorruptionError:
        return False
    return bool(len(data) == record.size and xxhash.xxh3_64_intdigest(data) == record.checksum)
