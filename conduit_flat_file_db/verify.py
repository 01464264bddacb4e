"""Consistency check of a store, online or offline: every blob against its checksum,
every index against its data file, every seek table against its frames, every
Zstandard frame against its own checksum. Reports; never raises for what it finds."""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import xxhash

from .errors import CorruptionError, FlatFileDbError, FlatFileDbNotFoundError, FormatError
from .fileio import pread_at
from .index import (
    FLAG_LEGACY_EXTENT,
    FLAG_UNCHECKED,
    HEADER_BYTES,
    KIND_ZSTD,
    REC_BLOB,
    REC_SEAL,
    RECORD_BYTES,
    Record,
    decode_header,
    decode_records,
)
from .naming import STATE_FILE_NAME, index_name, parse_name, segment_name, temp_owner
from .segment import CHECK_CHUNK_BYTES, frame_table_of, open_data_file, read_index
from .seekable import FrameTable, SeekableReader, parse_seek_table
from .state import MutableView

Progress = Callable[[int, int], None]  # (segments done, segments in all)


@dataclass(frozen=True)
class Problem:
    """One thing verify found wrong: which file, where, what."""

    path: str
    offset: int
    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.path} @ {self.offset}: [{self.kind}] {self.message}"


@dataclass
class VerifyReport:
    """What :meth:`FlatFileDb.verify` checked and found. ``ok`` is True when no problem was found."""

    segments: int = 0
    blobs: int = 0  # blobs whose bytes were checked (full check only)
    bytes_checked: int = 0  # their length
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    full: bool = True  # False: structure only, no blob was read (so blobs and bytes_checked stay 0)
    records: int = 0  # index records decoded and checked
    index_bytes: int = 0  # bytes of record indexes read

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems

    def add(self, path: str, offset: int, kind: str, message: str) -> None:
        """Record a problem."""
        self.problems.append(Problem(path, offset, kind, message))

    def __str__(self) -> str:
        if self.full:
            checked = f"{self.blobs} blobs, {self.bytes_checked} bytes checked"
        else:  # "0 blobs, 0 bytes checked" would read as "nothing was checked"
            checked = (f"{self.records} index records ({self.index_bytes} bytes of indexes) checked, "
                       "structure only (no checksums)")
        lines = [f"{'OK' if self.ok else 'PROBLEMS FOUND'}: {self.segments} segments, {checked}, "
                 f"{len(self.problems)} problems"]
        lines += [f"  problem: {p}" for p in self.problems]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def verify_store(dir_fd: int, dir_str: str, mutable: MutableView, progress: Progress | None = None,
                 full: bool = True) -> VerifyReport:
    """Check every segment in the directory; ``mutable`` is the committed extent to trust.

    A file that cannot be read as the store's (a directory, FIFO or symlink named like a
    segment's file, an I/O error) is reported as a problem of its segment, never raised.
    """
    report = VerifyReport(full=full)
    numbers: set[int] = set()
    for name in sorted(os.listdir(dir_fd)):
        parsed = parse_name(name)
        if parsed is not None:
            numbers.add(parsed[0])
        elif temp_owner(name) is not None:
            report.notes.append(f"scratch file {name} (removed by the next open once its process is gone)")
        elif name != STATE_FILE_NAME:
            report.notes.append(f"unknown file {name} in the datadir")
    todo = sorted(n for n in numbers if n <= mutable.segment)  # higher: a rotation not yet published
    for done, number in enumerate(todo):
        report.segments += 1
        try:
            _verify_segment(report, dir_fd, dir_str, number, mutable, full)
        except (OSError, FlatFileDbError, ValueError) as exc:
            report.add(dir_str, 0, "unreadable", f"segment {number}: {exc}")
        if progress is not None:
            progress(done + 1, len(todo))
    return report


def _verify_segment(report: VerifyReport, dir_fd: int, dir_str: str, number: int, mutable: MutableView,
                    full: bool) -> None:
    idx_path = os.path.join(dir_str, index_name(number))
    is_mutable = number == mutable.segment
    try:
        fd, kind = open_data_file(dir_fd, number)
    except FlatFileDbNotFoundError as exc:
        if read_index(dir_fd, number) is None:
            report.segments -= 1  # deleted while we looked
            return
        report.add(os.path.join(dir_str, segment_name(number, False)), 0, "missing-data", f"segment {number}: {exc}")
        return
    data_path = os.path.join(dir_str, segment_name(number, kind == KIND_ZSTD))
    try:
        raw = read_index(dir_fd, number, mutable.index_bytes if is_mutable else None)
        records: list[Record] = []
        if raw is None:
            report.notes.append(f"segment {number} has no record index (written by an engine without one); "
                                "only its framing can be checked")
        else:
            try:
                header = decode_header(raw, idx_path)
            except FormatError as exc:
                report.add(idx_path, 0, "bad-index-header", str(exc))
                return
            # A sealed segment may have been rewritten to the other kind since: its suffix decides.
            if header.segment != number or (is_mutable and header.kind != kind):
                report.add(idx_path, 10, "bad-index-header",
                           f"header names segment {header.segment} of kind {header.kind}")
            scan = decode_records(memoryview(raw)[HEADER_BYTES:])
            if scan.problem is not None:
                report.add(idx_path, HEADER_BYTES + scan.valid_bytes, "bad-index-record", scan.problem)
            records = scan.records
            report.records += len(records)
            report.index_bytes += len(raw)
        blobs, end, sealed = _blob_records(report, idx_path, records)
        size = os.fstat(fd).st_size
        chunks: Iterator[tuple[int, bytes | memoryview]]
        if kind == KIND_ZSTD:
            chunks = _zstd_chunks(report, fd, data_path, records, size, sealed or raw is None)
        else:
            chunks = _raw_chunks(fd, min(size, mutable.end) if is_mutable else size, mapped=not is_mutable)
            if not is_mutable and sealed and size != end:
                report.add(data_path, end, "size-mismatch", f"data file is {size} bytes, index commits {end}")
            elif size < end:
                report.add(data_path, size, "truncated", f"data file is {size} bytes, index commits {end}")
        if full:
            _check_blobs(report, data_path, chunks, blobs)
        elif kind == KIND_ZSTD and (sealed or raw is None):
            _check_seek_table(report, fd, data_path, size)
        if is_mutable and raw is not None and end != mutable.end:
            report.add(idx_path, 0, "index-mismatch",
                       f"index commits {end} bytes but the state page says {mutable.end}")
        if not is_mutable and raw is not None and not sealed:
            report.add(idx_path, len(raw), "not-sealed", "sealed segment has no SEAL record")
    finally:
        os.close(fd)


def _check_seek_table(report: VerifyReport, fd: int, data_path: str, size: int) -> None:
    """Structure only: the seek table must parse and add up."""
    try:
        parse_seek_table(pread_at(fd), size, data_path)
    except FormatError as exc:
        report.add(data_path, max(size - 9, 0), "bad-seek-table", str(exc))


def _blob_records(report: VerifyReport, idx_path: str, records: list[Record]) -> tuple[list[Record], int, bool]:
    """BLOB records in order, checking contiguity; returns (blobs, committed end, sealed)."""
    end = 0
    sealed = False
    blobs: list[Record] = []
    for position, record in enumerate(records):
        at = HEADER_BYTES + position * RECORD_BYTES
        if record.rtype == REC_SEAL:
            if record.a != end:
                report.add(idx_path, at, "bad-seal", f"SEAL says {record.a} bytes, blobs end at {end}")
            if record.b != len(blobs):
                report.add(idx_path, at, "bad-seal", f"SEAL says {record.b} blobs, the index has {len(blobs)}")
            sealed = True
        elif record.rtype == REC_BLOB:
            if record.a != end:
                report.add(idx_path, at, "gap", f"blob starts at {record.a}, previous ended at {end}")
            end = record.a + record.b
            blobs.append(record)
    return blobs, end, sealed


def _raw_chunks(fd: int, size: int, mapped: bool) -> Iterator[tuple[int, bytes | memoryview]]:
    """The file in CHECK_CHUNK_BYTES pieces. A sealed file is mapped and checksummed in place
    (no copy); the mutable one is read into one reused buffer (its tail may be cut meanwhile)."""
    if mapped and size:
        try:
            whole = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        except (OSError, ValueError):
            whole = None
        if whole is not None:
            whole.madvise(mmap.MADV_SEQUENTIAL)
            view = memoryview(whole)  # the map closes when the last slice of it is dropped
            for pos in range(0, size, CHECK_CHUNK_BYTES):
                yield pos, view[pos : pos + CHECK_CHUNK_BYTES]
                # Unmap what was checked: the process never holds more than one piece mapped in.
                whole.madvise(mmap.MADV_DONTNEED, pos, min(CHECK_CHUNK_BYTES, size - pos))
            return
    buffer = bytearray(min(CHECK_CHUNK_BYTES, max(size, 1)))
    view = memoryview(buffer)
    for pos in range(0, size, CHECK_CHUNK_BYTES):
        count = os.preadv(fd, [view[: min(CHECK_CHUNK_BYTES, size - pos)]], pos)
        if count <= 0:
            return
        yield pos, view[:count]


def _zstd_chunks(report: VerifyReport, fd: int, data_path: str, records: list[Record], size: int,
                 use_seek_table: bool) -> Iterator[tuple[int, bytes | memoryview]]:
    """Decompressed frames in order (each checked by Zstandard's own checksum on the way)."""
    table: FrameTable
    if use_seek_table:
        try:
            table = parse_seek_table(pread_at(fd), size, data_path)
        except FormatError as exc:
            report.add(data_path, max(size - 9, 0), "bad-seek-table", str(exc))
            return
    else:
        table = frame_table_of(records)
        if table.compressed_size > size:
            report.add(data_path, size, "truncated", f"frames need {table.compressed_size} bytes, file has {size}")
            return
    reader = SeekableReader(fd, table=table)
    for index in range(len(table)):
        if table.d_offsets[index + 1] == table.d_offsets[index]:
            continue  # skippable frame
        try:
            yield table.d_offsets[index], reader.frame(index)
        except CorruptionError as exc:
            report.add(data_path, table.c_offsets[index], "bad-frame", str(exc))
            return


def _check_blobs(report: VerifyReport, data_path: str, chunks: Iterable[tuple[int, bytes | memoryview]],
                 blobs: list[Record]) -> None:
    """Feed contiguous chunks of the segment's uncompressed bytes to each blob's checksum."""
    position = 0
    hasher = xxhash.xxh3_64()
    covered = 0
    for offset, data in chunks:
        chunk_end = offset + len(data)
        covered = chunk_end
        while position < len(blobs):
            blob = blobs[position]
            start, stop = blob.a, blob.a + blob.b
            if start >= chunk_end:
                break
            lo, hi = max(start, offset), min(stop, chunk_end)
            if hi > lo:
                hasher.update(data[lo - offset : hi - offset])
            if stop > chunk_end:
                break
            _finish(report, data_path, blob, hasher.intdigest())
            hasher.reset()
            position += 1
    for blob in blobs[position:]:
        if blob.b == 0 and blob.a <= covered:
            _finish(report, data_path, blob, xxhash.xxh3_64_intdigest(b""))
        else:
            report.add(data_path, blob.a, "truncated",
                       f"blob {blob.a}..{blob.a + blob.b} is past the readable data ({covered} bytes)")


def _finish(report: VerifyReport, data_path: str, blob: Record, digest: int) -> None:
    report.blobs += 1
    report.bytes_checked += blob.b
    if blob.flags & FLAG_UNCHECKED:
        report.notes.append(f"{data_path}: blob {blob.a}..{blob.a + blob.b} was adopted without a checksum; "
                            "only its framing was checked")
    elif digest != blob.c:
        what = "legacy extent" if blob.flags & FLAG_LEGACY_EXTENT else "blob"
        report.add(data_path, blob.a, "checksum", f"{what} {blob.a}..{blob.a + blob.b} fails its XXH3-64 checksum")
