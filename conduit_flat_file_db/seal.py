"""Sealing a segment, and checking and repairing sealed segments after a power loss.

A seal ends the data file (a compressed one with a plain seek table) and appends
the SEAL record (:func:`write_seal`); its fsync runs in the background
(:func:`sync_segment`). A power loss before that fsync may take the tail of a
sealed segment: :func:`seal_problem` finds out, :func:`reseal_segment` cuts the
segment back to its last good blob and seals it again, and :func:`seal_recovered`
seals the newest segment after recovery so that no offset is handed out twice.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Sequence

from .checksums import first_bad_blob
from .errors import CorruptionError, FlatFileDbNotFoundError, FormatError, InvalidLocationError
from .fileio import pread_at, pread_full, pwrite_all
from .index import (
    FLAG_UNCHECKED,
    HEADER_BYTES,
    KIND_RAW,
    KIND_ZSTD,
    REC_BLOB,
    REC_SEAL,
    RECORD_BYTES,
    Record,
    contiguous,
    decode_header,
    decode_records,
    encode_seal,
)
from .naming import index_name, segment_name
from .recovery import Walk
from .seekable import SeekableReader, encode_seek_table, is_padding_frame, parse_seek_table
from .segment import Tail, frame_table_of
from .segment_files import OPEN_READ, OPEN_WRITE, open_data_file, open_regular, read_index

logger = logging.getLogger("conduit_flat_file_db")

# Why a sealed segment not known to be fsynced is refused after a power loss although its sizes
# match: its blob was adopted without a checksum, so zeros that never reached the disk would pass.
UNVERIFIABLE = "it holds a file adopted without a checksum, which nothing can check after a power loss"


def write_seal(data_fd: int, index_fd: int, kind: int, tail: Tail, sizes: Sequence[tuple[int, int]]) -> int:
    """Seal a segment whose committed extent is ``tail``: end its data file (a compressed one
    with a plain seek table of the frame ``sizes``) and append the SEAL record. No fsync:
    the caller decides when the segment must be durable. Returns the data file's size."""
    if kind == KIND_RAW:
        os.ftruncate(data_fd, tail.end)  # even at the same size: frees blocks preallocated beyond it
        disk = tail.end
    else:
        table = encode_seek_table(sizes)
        pwrite_all(data_fd, table, tail.disk_bytes)
        disk = tail.disk_bytes + len(table)
        os.ftruncate(data_fd, disk)
    # The index is cut to its final size before the SEAL is written: a writer killed between the
    # two leaves 32 zero bytes of room after its last record (a segment still mutable), never a
    # SEAL followed by the writer's room.
    os.ftruncate(index_fd, tail.index_bytes + RECORD_BYTES)
    pwrite_all(index_fd, encode_seal(tail.end, tail.blobs, disk), tail.index_bytes)
    return disk


def sync_segment(dir_fd: int, number: int) -> int:
    """fsync the files of segment ``number`` that exist; returns how many (2 for a whole segment)."""
    synced = 0
    for name in (segment_name(number, False), segment_name(number, True), index_name(number)):
        try:
            fd = os.open(name, OPEN_READ, dir_fd=dir_fd)
        except FileNotFoundError:
            continue
        try:
            os.fsync(fd)
            synced += 1
        finally:
            os.close(fd)
    return synced


def holds_unchecked(dir_fd: int, number: int) -> bool:
    """Whether sealed segment ``number`` is a file adopted without a checksum (``adopt_file``
    without ``verify``): an index of one BLOB record with FLAG_UNCHECKED and the SEAL.

    Only such whole-file commits carry FLAG_UNCHECKED, so the index's size rules out every other
    segment after one ``fstat``, without reading it (the sync thread asks this of each segment).
    """
    try:
        index_fd = open_regular(dir_fd, index_name(number))
    except (FileNotFoundError, InvalidLocationError):  # gone (deleted meanwhile), or not a file of ours
        return False
    try:
        if os.fstat(index_fd).st_size != HEADER_BYTES + 2 * RECORD_BYTES:
            return False
        records = decode_records(os.pread(index_fd, RECORD_BYTES, HEADER_BYTES)).records
    finally:
        os.close(index_fd)
    return bool(records) and records[0].rtype == REC_BLOB and bool(records[0].flags & FLAG_UNCHECKED)


def seal_problem(dir_fd: int, number: int, *, full: bool) -> str | None:
    """Why sealed segment ``number`` is not whole, or None when it is (or is gone).

    After a power loss, a segment sealed shortly before it may have lost the tail of
    its data or index: its fsync runs in the background after the seal. The quick
    form (``full=False``) reads two records and the file size: the index ends in a
    SEAL record, and the data file holds exactly the bytes it names (compressed: it
    ends in a seek table of that many uncompressed bytes). The full form also needs
    contiguous BLOB records up to the SEAL and checks the XXH3-64 of every blob,
    reading the segment once, in order; a blob without a checksum (UNCHECKED: an adopted
    file) cannot be checked, and is a problem of its own (see UNVERIFIABLE).
    """
    try:
        data_fd, kind = open_data_file(dir_fd, number)
    except FlatFileDbNotFoundError:
        return None
    try:
        return _seal_problem(dir_fd, number, data_fd, kind, full)
    finally:
        os.close(data_fd)


def _seal_problem(dir_fd: int, number: int, data_fd: int, kind: int, full: bool) -> str | None:
    scan = _sealed_index(dir_fd, number, full)
    if scan is None or isinstance(scan, str):
        return scan
    end = scan[-1].offset
    read = _sealed_reader(data_fd, kind, end)
    if isinstance(read, str):
        return read
    if not full:
        return None
    uncheckable = _uncheckable(scan)
    if uncheckable is not None:
        return uncheckable
    try:
        bad = first_bad_blob(read, [r for r in scan if r.rtype == REC_BLOB], end)
    except CorruptionError as exc:
        return f"a frame does not decode ({exc})"
    return None if bad is None else f"the blob at offset {bad.offset} fails its checksum"


def _uncheckable(records: Sequence[Record]) -> str | None:
    """Why the blobs of a sealed segment's ``records`` cannot be checked by their checksums, or None."""
    if not contiguous(records):
        return "its BLOB records do not cover the segment contiguously"
    if any(record.flags & FLAG_UNCHECKED for record in records):
        return UNVERIFIABLE
    return None


def _sealed_reader(data_fd: int, kind: int, end: int) -> Callable[[int, int], bytes] | str:
    """read(start, stop) of a sealed segment's uncompressed bytes when its data file holds exactly
    ``end`` of them (compressed: ends in a seek table for them), else a string saying why not."""
    data_size = os.fstat(data_fd).st_size
    if kind == KIND_RAW:
        if data_size != end:
            return f"the SEAL record says {end} bytes but the data file has {data_size}"
        return lambda start, stop: pread_full(data_fd, stop - start, start)
    try:
        reader = SeekableReader(data_fd, table=parse_seek_table(pread_at(data_fd), data_size), verify_checksums=False)
    except FormatError as exc:
        return f"the data file does not end in a seek table ({exc})"
    if reader.size != end:
        return f"the SEAL record says {end} bytes but the seek table holds {reader.size}"
    return reader.read_range


def _sealed_index(dir_fd: int, number: int, full: bool) -> list[Record] | str | None:
    """The records of a sealed segment's index ending in its SEAL (only the SEAL unless ``full``),
    a string saying why they do not, or None for an index this check does not judge."""
    try:
        index_fd = open_regular(dir_fd, index_name(number))
    except FileNotFoundError:
        return None  # written without an index (the original engine): nothing of ours to check
    try:
        index_size = os.fstat(index_fd).st_size
        try:
            decode_header(os.pread(index_fd, HEADER_BYTES, 0), index_name(number), number)
        except FormatError:
            return None  # the header was fsynced when the segment was created: not a power-loss tail
        if index_size < HEADER_BYTES + RECORD_BYTES or (index_size - HEADER_BYTES) % RECORD_BYTES:
            return f"its record index is {index_size} bytes, not whole records ending in a SEAL"
        body = pread_full(
            index_fd,
            index_size - HEADER_BYTES if full else RECORD_BYTES,
            HEADER_BYTES if full else index_size - RECORD_BYTES,
        )
    finally:
        os.close(index_fd)
    scan = decode_records(body)
    if scan.problem is not None or not scan.records or scan.records[-1].rtype != REC_SEAL:
        return scan.problem or "its record index does not end in a SEAL record"
    return scan.records


def reseal_segment(dir_fd: int, number: int, why: str) -> None:
    """Cut a damaged sealed segment back to its last blob that checks, and seal it again.

    For a segment sealed shortly before a power loss (see :func:`seal_problem`): its
    records are walked as recovery walks the mutable segment's, checking every blob,
    then the index and data are cut after the last good blob, the SEAL record (and,
    compressed, the seek table) written again, and both files fsynced. A segment that
    a rewrite replaced (fsynced before its switch, so not damaged by a power loss) is
    not cut: it is logged for ``verify()``.
    """
    data_fd, kind = open_data_file(dir_fd, number, OPEN_WRITE)
    try:
        raw_index = read_index(dir_fd, number) or b""
        try:
            header = decode_header(raw_index, index_name(number), number)
        except FormatError:
            return  # seal_problem reports no problem for these
        records = decode_records(memoryview(raw_index)[HEADER_BYTES:]).records
        if header.kind != kind or (kind == KIND_ZSTD and _rewritten(data_fd, records)):
            logger.error(
                "%s: sealed segment is damaged (%s) but was rewritten, so it is not cut; run verify()",
                segment_name(number, kind == KIND_ZSTD),
                why,
            )
            return
        tail, found = _cut_and_seal(dir_fd, number, data_fd, kind, records, check=True)
    finally:
        os.close(data_fd)
    logger.warning(
        "%s: sealed segment damaged by a power loss (%s); kept its first %d of %d blobs (%d bytes) and sealed it again",
        segment_name(number, kind == KIND_ZSTD),
        why,
        tail.blobs,
        found,
        tail.end,
    )


def _rewritten(data_fd: int, records: Sequence[Record]) -> bool:
    """Whether a compressed segment's file was replaced by a rewrite (re-framing): recovery
    never cuts those by their FRAME records.

    A rewrite starts by fsyncing the segment, so its index ends in a durable SEAL; it
    writes a plain seek table (no padding frame: only the mutable layout has one);
    and its frames differ from the FRAME records. A file whose table lists the FRAME
    records' frames (plus, mutable layout, a padding frame) was never rewritten: its
    seal, or part of it, is what the power loss took.
    """
    if not records or records[-1].rtype != REC_SEAL:
        return False
    frames = frame_table_of(records).sizes()
    if not frames:
        return False  # a whole file committed by rename (put_stream, adopt_file): its one blob is checked as any
    try:
        table = parse_seek_table(pread_at(data_fd), os.fstat(data_fd).st_size)
    except FormatError:
        return False  # no table: never rewritten (a rewrite is fsynced before its switch)
    sizes = table.sizes()
    if sizes and sizes[-1][1] == 0 and is_padding_frame(data_fd, table.c_offsets[-2]):
        return False  # a padding frame: the mutable layout, so the seal's table never landed
    return sizes != frames


def seal_recovered(dir_fd: int, number: int) -> Tail:
    """Seal the newest segment right after recovery brought it to its last commit (after a
    power loss), so that no later put reuses its offsets.

    A power loss can take blobs whose locations were already handed out: recovery cuts
    them, and a put into the same segment would then hand out the same offsets for other
    bytes, which a caller's saved location would read. Sealing the segment makes every such
    location past its end, refused with a typed error, for ever. The rejected alternative,
    continuing in the segment after the highest offset ever handed out, needs that offset,
    which only the state page knows, and the state page is not fsynced either.
    """
    data_fd, kind = open_data_file(dir_fd, number, OPEN_WRITE)
    try:
        records = decode_records(memoryview(read_index(dir_fd, number) or b"")[HEADER_BYTES:]).records
        tail, _found = _cut_and_seal(dir_fd, number, data_fd, kind, records, check=False)
    finally:
        os.close(data_fd)
    logger.warning(
        "%s: sealed on open after a power loss, or without the store's state page (a copy of the "
        "store, a lost state file), with %d blobs (%d bytes); blobs written after them, if any, "
        "were lost and their locations now fail",
        segment_name(number, kind == KIND_ZSTD),
        tail.blobs,
        tail.end,
    )
    return tail


def _cut_and_seal(
    dir_fd: int,
    number: int,
    data_fd: int,
    kind: int,  # pylint: disable=too-many-arguments
    records: list[Record],
    *,
    check: bool,
) -> tuple[Tail, int]:
    """Cut a segment after the last commit its records reach (checking each blob's XXH3-64 when
    ``check``), seal it, fsync both files; returns its sealed extent (SEAL record included) and
    how many blob records the index held before the cut."""
    walk = Walk(data_fd, kind, os.fstat(data_fd).st_size, 0 if check else None)
    walk.run(records)
    commit = walk.commit()
    # The SEAL is written again, after the cut.
    tail = commit._replace(index_bytes=commit.index_bytes - commit.sealed * RECORD_BYTES, sealed=True)
    index_fd = os.open(index_name(number), OPEN_WRITE, dir_fd=dir_fd)
    try:
        os.ftruncate(index_fd, tail.index_bytes)
        disk = write_seal(data_fd, index_fd, kind, tail, walk.frames[: tail.frames])
        os.fsync(data_fd)
        os.fsync(index_fd)
    finally:
        os.close(index_fd)
    sealed_tail = tail._replace(index_bytes=tail.index_bytes + RECORD_BYTES, disk_bytes=disk)
    return sealed_tail, sum(1 for r in records if r.rtype == REC_BLOB)
