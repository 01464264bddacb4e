"""Recovery: bring the newest segment back to its last committed record (FORMAT.md "Recovery").

A writer's open calls :func:`recover_segment` under the write lock. It walks the
record index (:class:`Walk`, also used by read-only opens to follow a writer and by
the reseal of a sealed segment), cuts a torn tail of the index and the data file,
and rebuilds an index that is missing or unreadable. The recovery of the whole datadir
(scratch files, interrupted deletes, which segment is newest) is writer_recovery.py's.
"""

from __future__ import annotations

import logging
import os
import time

from .checksums import checksum_frames, checksum_range
from .errors import CorruptionError, FlatFileDbNotFoundError, FormatError, IndexVersionError
from .fileio import pread_at, pwrite_all
from .frames import scan_frames
from .index import (
    FLAG_LEGACY_EXTENT,
    FLAG_UNCHECKED,
    HEADER_BYTES,
    KIND_RAW,
    KIND_ZSTD,
    REC_BLOB,
    REC_FRAME,
    REC_SEAL,
    RECORD_BYTES,
    Record,
    contiguous,
    decode_header,
    decode_records,
    encode_header,
    encode_record,
)
from .naming import index_name, segment_name, temp_name
from .seekable import (
    FrameTable,
    SeekableReader,
    encode_seek_table,
    padding_after,
    parse_seek_table,
    write_padding_and_table,
)
from .segment import PADDING_MIN_BYTES, Tail, is_room, is_zero_room, padding_for
from .segment_files import OPEN_WRITE, fsync_dir, open_data_file, open_regular, read_index

logger = logging.getLogger("conduit_flat_file_db")


def recover_segment(dir_fd: int, number: int, default_kind: int, check_from: int | None) -> Tail:
    """Bring the newest segment to its last committed record; call under the write lock.

    Steps (FORMAT.md "Recovery"): make sure both files exist; decode the index up to
    its first torn or bad record; keep records while they describe contiguous blobs
    (and, compressed, contiguous frames) inside the data file; when ``check_from`` is
    not None also check the XXH3 of every blob ending past it (after a power loss);
    cut the index and the data file after the last commit; for a compressed segment
    write a fresh padding frame and seek table.
    """
    try:  # refused before the data file is created: a directory or FIFO in the index's place is not ours
        os.close(open_regular(dir_fd, index_name(number)))
    except FileNotFoundError:
        pass
    try:
        data_fd, kind = open_data_file(dir_fd, number, OPEN_WRITE)
    except FlatFileDbNotFoundError:
        kind = default_kind
        data_fd = os.open(segment_name(number, kind == KIND_ZSTD), OPEN_WRITE | os.O_CREAT, 0o644, dir_fd=dir_fd)
        fsync_dir(dir_fd)
    try:
        return _recover(dir_fd, number, data_fd, kind, check_from)
    finally:
        os.close(data_fd)


class Walk:  # pylint: disable=too-many-instance-attributes  # running totals of one walk
    """The record walk of recovery: running totals and the last commit point seen.

    A commit point is where every frame written so far is covered by blob records
    (raw segments: after every blob record); recovery cuts back to the last one.
    """

    def __init__(self, data_fd: int, kind: int, data_size: int, check_from: int | None) -> None:
        self.data_fd = data_fd
        self.kind = kind
        self.data_size = data_size
        self.check_from = check_from
        self.end = 0  # uncompressed end of blobs
        self.frames_end_u = 0  # uncompressed end of frames
        self.frames_end_c = 0  # compressed end of frames
        self.frames: list[tuple[int, int]] = []
        self.blobs = 0
        self.sealed = False
        # The last commit point: (records, end, frames_end_c, frames, blobs, sealed). A plain tuple,
        # not a Tail: it is taken after every record, and commit() builds the Tail once.
        self._commit = (0, 0, 0, 0, 0, False)

    def commit(self) -> Tail:
        """The extent at the last commit point (``padding`` 0: the walk does not read the data file)."""
        records, end, frames_end_c, frames, blobs, sealed = self._commit
        disk_bytes = end if self.kind == KIND_RAW else frames_end_c
        return Tail(self.kind, end, HEADER_BYTES + records * RECORD_BYTES, disk_bytes, blobs, sealed, 0, frames)

    def resume(self, data_size: int) -> int:
        """Go back to the last commit point, to walk on from there once the data file has grown
        to ``data_size`` (a read-only opener following a writer); returns the records walked."""
        records, self.end, self.frames_end_c, frame_count, self.blobs, self.sealed = self._commit
        self.frames_end_u = self.end
        del self.frames[frame_count:]
        self.data_size = data_size
        return records

    def run(self, records: list[Record], first: int = 0) -> str | None:
        """Walk records (``first``: how many were walked before them) up to the first one that does
        not fit; returns why it stopped (None: all fit)."""
        for position, record in enumerate(records, first):
            if self.sealed:
                return f"record after the SEAL record at record {position}"
            if record.rtype == REC_SEAL:
                problem = self._seal(record)
            elif record.rtype == REC_FRAME and self.kind == KIND_ZSTD:
                problem = self._frame(record)
            elif record.rtype == REC_BLOB:
                problem = self._blob(record)
            else:
                problem = f"unexpected record type {record.rtype} in a segment of kind {self.kind}"
            if problem is not None:
                return problem
            if self.kind == KIND_RAW or self.end == self.frames_end_u:
                self._commit = (position + 1, self.end, self.frames_end_c, len(self.frames), self.blobs, self.sealed)
        return None if self._commit[0] == first + len(records) else "frames written without the blobs that commit them"

    def _seal(self, record: Record) -> str | None:
        if record.offset != self.end:
            return f"SEAL says {record.offset} bytes but the blobs end at {self.end}"
        self.sealed = True
        return None

    def _frame(self, record: Record) -> str | None:
        csize, dsize = record.compressed_size, record.uncompressed_size
        start = record.compressed_start
        if record.offset != self.frames_end_u or start != self.frames_end_c or start + csize > self.data_size:
            return f"frame record at {start} does not continue the frames or is past the data"
        self.frames.append((csize, dsize))
        self.frames_end_u += dsize
        self.frames_end_c += csize
        return None

    def _blob(self, record: Record) -> str | None:
        blob_end = record.end
        limit = self.data_size if self.kind == KIND_RAW else self.frames_end_u
        if record.offset != self.end or blob_end > limit:
            return f"blob record at offset {record.offset}..{blob_end} does not fit the data ({limit} bytes)"
        if (
            self.check_from is not None
            and blob_end > self.check_from
            and not record.flags & (FLAG_LEGACY_EXTENT | FLAG_UNCHECKED)
        ):
            if self._digest(record.offset, blob_end) != record.checksum:
                return f"blob at offset {record.offset} fails its checksum after a power loss"
        self.end = blob_end
        self.blobs += 1
        return None

    def _digest(self, start: int, end: int) -> int:
        if self.kind == KIND_RAW:
            return checksum_range(self.data_fd, start, end)
        reader = SeekableReader(self.data_fd, table=FrameTable.from_sizes(self.frames), verify_checksums=False)
        try:
            return checksum_frames(reader, start, end)
        except CorruptionError:
            return -1


def _recover(dir_fd: int, number: int, data_fd: int, kind: int, check_from: int | None) -> Tail:
    name = segment_name(number, kind == KIND_ZSTD)
    data_size = os.fstat(data_fd).st_size
    raw_index = read_index(dir_fd, number)
    try:
        if raw_index is None:
            raise FormatError(f"{index_name(number)} is missing")
        header = decode_header(raw_index, index_name(number))
        if header.segment != number or header.kind != kind:
            raise FormatError(f"{index_name(number)} belongs to segment {header.segment} of kind {header.kind}")
    except IndexVersionError:
        raise  # a newer release's index: never rebuilt as legacy data
    except FormatError as exc:
        return _rebuild_index(dir_fd, number, data_fd, kind, data_size, str(exc))

    scan = decode_records(memoryview(raw_index)[HEADER_BYTES:])
    sealed_tail = _sealed_compressed(kind, scan.records, data_size)
    if sealed_tail is not None:
        # Nothing follows a SEAL: a writer's room left there (a seal of an older release killed
        # before it cut the index, or a power loss that kept the SEAL but not the cut) goes.
        _cut_index_tail(dir_fd, number, raw_index, sealed_tail.index_bytes, True, scan.problem)
        return sealed_tail
    walk = Walk(data_fd, kind, data_size, check_from)
    problem = walk.run(scan.records) or scan.problem
    tail = walk.commit()
    end = tail.end
    _cut_index_tail(dir_fd, number, raw_index, tail.index_bytes, tail.sealed, problem)
    if kind == KIND_RAW:
        if data_size > end and (tail.sealed or not is_zero_room(data_fd, end, data_size)):
            logger.warning("%s: recovery cut %d uncommitted bytes after offset %d", name, data_size - end, end)
            os.ftruncate(data_fd, end)
            os.fsync(data_fd)
        return tail
    if tail.sealed:
        return tail
    padding = padding_after(data_fd, tail.disk_bytes, tail.frames, data_size)
    if padding is None:
        padding = padding_for(tail.disk_bytes, 0)
        logger.warning("%s: recovery rewrote the seek table after %d committed frames", name, tail.frames)
        write_padding_and_table(data_fd, tail.disk_bytes, walk.frames[: tail.frames], padding)
        os.fsync(data_fd)
    return tail._replace(padding=padding)


def _cut_index_tail(
    dir_fd: int,
    number: int,
    raw_index: bytes,
    index_bytes: int,
    sealed: bool,  # pylint: disable=too-many-arguments
    problem: str | None,
) -> None:
    """Cut the index after its last commit. Zero bytes there are a writer's room, kept while the
    segment is mutable; anything else is a torn tail, cut and logged."""
    if index_bytes >= len(raw_index):
        return
    room = is_room(raw_index[index_bytes:])
    if not room:
        logger.warning(
            "%s: recovery cut the record index from %d to %d bytes (%s)",
            index_name(number),
            os.stat(index_name(number), dir_fd=dir_fd, follow_symlinks=False).st_size,  # read_index may read less
            index_bytes,
            problem,
        )
    if sealed or not room:
        _truncate(dir_fd, index_name(number), index_bytes)


def _sealed_compressed(kind: int, records: list[Record], data_size: int) -> Tail | None:
    """A sealed compressed segment needs no walk here: its seek table, not FRAME records,
    describes it (it may have been re-framed or adopted), and after a power loss the
    sealed-segment check on open (seal_problem) covers it until its fsync was confirmed."""
    if kind != KIND_ZSTD or not records or records[-1].rtype != REC_SEAL:
        return None
    if data_size == 0 and records[-1].offset > 0:
        return None  # the index of a whole-file commit whose rename never happened: cut it
    if not contiguous(records):
        return None
    blobs = sum(1 for record in records if record.rtype == REC_BLOB)
    return Tail(KIND_ZSTD, records[-1].offset, HEADER_BYTES + len(records) * RECORD_BYTES, data_size, blobs, True)


def _truncate(dir_fd: int, name: str, size: int) -> None:
    fd = os.open(name, OPEN_WRITE, dir_fd=dir_fd)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def _legacy_frame_table(data_fd: int, number: int, data_size: int) -> tuple[FrameTable, int]:
    """The frame table of a compressed file written without an index, and its size.

    A writer that appends by cutting the seek table off and writing a new one on close
    (the original engine's) leaves bare frames when it crashes: walk them, cut a torn
    last frame, and write the seek table they should have had.
    """
    try:
        return parse_seek_table(pread_at(data_fd), data_size, segment_name(number, True)), data_size
    except FormatError as exc:
        sizes = scan_frames(pread_at(data_fd), data_size)
        frames_end = sum(c for c, _ in sizes)
        logger.warning(
            "%s: %s; found %d complete frames (%d bytes) by walking them, cut %d bytes after them "
            "and wrote their seek table",
            segment_name(number, True),
            exc,
            len(sizes),
            frames_end,
            data_size - frames_end,
        )
        table_bytes = encode_seek_table(sizes)
        os.ftruncate(data_fd, frames_end)
        pwrite_all(data_fd, table_bytes, frames_end)
        os.fsync(data_fd)
        return FrameTable.from_sizes(sizes), frames_end + len(table_bytes)


def _rebuild_index(dir_fd: int, number: int, data_fd: int, kind: int, data_size: int, why: str) -> Tail:
    """Write a fresh index for a segment whose index is missing or unreadable.

    An empty data file gets an empty index (a crash while creating the segment). A
    non-empty one was written by an engine without an index (or lost its index): its
    bytes become one LEGACY_EXTENT record, so every old location inside still reads,
    and the segment is sealed: new blobs go to a new segment, never after bytes whose
    blob boundaries are unknown.
    """
    parts = [encode_header(number, kind, time.time_ns())]
    end = 0
    if data_size:
        if kind == KIND_ZSTD:
            table, data_size = _legacy_frame_table(data_fd, number, data_size)
            end = table.decompressed_size
            digest = checksum_frames(SeekableReader(data_fd, table=table, verify_checksums=False), 0, end)
        else:
            end = data_size
            digest = checksum_range(data_fd, 0, data_size)
        logger.warning("segment %d: %s; indexing its %d bytes as one sealed legacy extent", number, why, end)
        parts.append(encode_record(REC_BLOB, FLAG_LEGACY_EXTENT, 0, end, digest))
        parts.append(encode_record(REC_SEAL, 0, end, 1, data_size))
    elif kind == KIND_ZSTD:
        write_padding_and_table(data_fd, 0, [], PADDING_MIN_BYTES)
        os.fsync(data_fd)
    payload = b"".join(parts)
    tmp = temp_name(index_name(number))
    fd = os.open(tmp, OPEN_WRITE | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=dir_fd)
    try:
        pwrite_all(fd, payload, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, index_name(number), src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    fsync_dir(dir_fd)
    if data_size:
        return Tail(kind, end, len(payload), data_size, 1, True)
    return Tail(kind, 0, len(payload), 0, 0, False, PADDING_MIN_BYTES if kind == KIND_ZSTD else 0, 0)
