"""Consistency check of a store, online or offline: every blob against its checksum,
every index against its data file, every seek table against its frames, every
Zstandard frame against its own checksum. Reports; never raises for what it finds."""

from __future__ import annotations

import mmap
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import xxhash

from .checksums import CHECK_CHUNK_BYTES
from .errors import CorruptionError, FlatFileDbError, FlatFileDbNotFoundError, FormatError, InvalidLocationError
from .fileio import list_dir, pread_at
from .index import (
    FLAG_LEGACY_EXTENT,
    FLAG_UNCHECKED,
    HEADER_BYTES,
    KIND_ZSTD,
    REC_SEAL,
    RECORD_BYTES,
    Record,
    blob_starts,
    decode_header,
    decode_records,
)
from .naming import STATE_FILE_NAME, TIER_FILE_NAME, index_name, parse_name, remote_name, segment_name, temp_owner
from .seekable import FrameTable, SeekableReader, parse_seek_table
from .segment import frame_table_of
from .segment_files import open_data_file, read_index
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
            checked = (
                f"{self.records} index records ({self.index_bytes} bytes of indexes) checked, "
                "structure only (no checksums)"
            )
        lines = [
            f"{'OK' if self.ok else 'PROBLEMS FOUND'}: {self.segments} segments, {checked}, "
            f"{len(self.problems)} problems"
        ]
        lines += [f"  problem: {p}" for p in self.problems]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


RECHECKS = 4
"""Passes over one segment that changed while it was checked (sealed, rewritten, deleted)
before verify gives up on it with a note: each change restarts its check from scratch."""

DELETE_GRACE_SECONDS = 0.05
"""How long a pass that finds an index without its data file waits before it believes it: a
delete removes the data file, then the index, under the write lock (rejected: taking the lock,
which is not reentrant, so a verify inside ``read_lock()`` could deadlock)."""

Identity = tuple[int, int, bool]  # (inode, device, mutable?) of a segment's data file; inode 0: no data file


def wait_a_grace_period() -> None:
    """The default wait for a delete in progress: a delete removes the index just after the data
    file, so a moment later an index left alone by a delete is gone."""
    time.sleep(DELETE_GRACE_SECONDS)


def verify_store(  # pylint: disable=too-many-arguments,too-many-positional-arguments
    dir_fd: int,
    dir_str: str,
    current: Callable[[], MutableView],
    progress: Progress | None = None,
    full: bool = True,
    settle: Callable[[], None] = wait_a_grace_period,
) -> VerifyReport:
    """Check every segment in the directory; ``current()`` gives the mutable segment's committed
    extent as it is now (read anew for each segment: the store may be in use meanwhile).
    ``settle()`` returns once a delete in progress when it was called has finished: an index
    found without its data file is reported only if it is still there afterwards."""
    report = VerifyReport(full=full)
    newest = current().segment  # before the listing: a segment listed above it is a rotation not yet published
    numbers: set[int] = set()
    for name in sorted(list_dir(dir_fd)):
        parsed = parse_name(name)
        if parsed is not None:
            numbers.add(parsed[0])
        elif temp_owner(name) is not None:
            report.notes.append(f"scratch file {name} (removed by the next open once its process is gone)")
        elif name not in (STATE_FILE_NAME, TIER_FILE_NAME):
            report.notes.append(f"unknown file {name} in the datadir")
    todo = sorted(n for n in numbers if n <= newest)
    for done, number in enumerate(todo):
        if _remote_only(dir_fd, number):
            report.notes.append(f"segment {number} is in the object store only (open_remote(...).verify() checks it)")
            continue
        report.segments += 1
        _verify_segment(report, dir_fd, dir_str, number, current, full, settle)
        if progress is not None:
            progress(done + 1, len(todo))
    return report


def _remote_only(dir_fd: int, number: int) -> bool:
    """True when segment ``number`` was uploaded to the tier and has no local data file now."""
    try:
        os.stat(remote_name(number), dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    try:
        os.close(open_data_file(dir_fd, number)[0])
    except FlatFileDbNotFoundError:
        return True
    return False


def _verify_segment(  # pylint: disable=too-many-arguments,too-many-positional-arguments
    report: VerifyReport,
    dir_fd: int,
    dir_str: str,
    number: int,
    current: Callable[[], MutableView],
    full: bool,
    settle: Callable[[], None],
) -> None:
    """Check one segment; report what the check found only if the segment is still what was checked.

    A live store seals, rewrites (new frames, other suffix: a new file renamed in) and deletes
    segments while verify reads them. One pass reads the index and the frames through one open
    file, so it never mixes two versions; a pass that finds anything is trusted only when the
    segment's file (inode) and its state (mutable or sealed) are the same afterwards, else the
    segment is checked again from scratch. Whatever a user reads in the report was true of one
    unchanging segment (rejected: taking the read lock, which would stall writers for the whole
    check of a large segment).
    """
    for _ in range(RECHECKS):
        found = VerifyReport(full=full)
        try:
            checked = _check_segment(found, dir_fd, dir_str, number, current, full)
        except (OSError, FlatFileDbError, ValueError) as exc:
            # A file that cannot be read as the store's (a directory, FIFO or symlink named like a
            # segment's file, an I/O error): a problem of its segment, never raised.
            found.add(dir_str, 0, "unreadable", f"segment {number}: {exc}")
            checked = _safe_identity(dir_fd, number, current)
        now = checked
        if checked is not None and not (found.ok and not found.notes):
            if checked[0] == 0:  # an index without data: a delete in progress removes the index next
                settle()
            now = _safe_identity(dir_fd, number, current)
        if now is None:
            report.segments -= 1  # deleted while we looked
            return
        if now == checked:
            report.blobs += found.blobs
            report.bytes_checked += found.bytes_checked
            report.records += found.records
            report.index_bytes += found.index_bytes
            report.problems += found.problems
            report.notes += found.notes
            return
    report.notes.append(
        f"segment {number} changed during each of {RECHECKS} checks (sealed, rewritten or "
        "deleted meanwhile); not checked this time"
    )


def _safe_identity(dir_fd: int, number: int, current: Callable[[], MutableView]) -> Identity | None:
    """_identity, or (-1, -1, False) for a segment whose files cannot be read as ours (the same
    every time, so a problem found in them is reported)."""
    try:
        return _identity(dir_fd, number, current)
    except (OSError, FlatFileDbError, ValueError):
        return -1, -1, False


def _identity(dir_fd: int, number: int, current: Callable[[], MutableView]) -> Identity | None:
    """Segment ``number`` as it is now: its data file's (inode, device) and whether it is the
    mutable segment; inode 0 when only its index is left; None when it is gone."""
    mutable = number == current().segment
    # A rewrite that changes the suffix renames the new name in, then unlinks the old one (open_data_file).
    for compressed in (False, True, False, True):
        try:
            found = os.stat(segment_name(number, compressed), dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        return found.st_ino, found.st_dev, mutable
    return None if read_index(dir_fd, number, HEADER_BYTES) is None else (0, 0, mutable)


def _check_segment(
    report: VerifyReport, dir_fd: int, dir_str: str, number: int, current: Callable[[], MutableView], full: bool
) -> Identity | None:
    """One pass over one segment; returns the identity of what it checked, None when it is gone.

    The data file is opened before the state page is read: a segment the page calls mutable
    was mutable when the file was opened, and a mutable segment's file is only ever appended
    to and sealed in place, never replaced, so its committed frames are in that file.
    """
    try:
        fd, kind = open_data_file(dir_fd, number)
    except InvalidLocationError as exc:  # not a regular file
        report.add(os.path.join(dir_str, segment_name(number, False)), 0, "unreadable", f"segment {number}: {exc}")
        return _safe_identity(dir_fd, number, current)
    except FlatFileDbNotFoundError:
        if read_index(dir_fd, number, HEADER_BYTES) is None:
            return None
        report.add(
            os.path.join(dir_str, segment_name(number, False)),
            0,
            "missing-data",
            f"segment {number} has an index but no data file (its data was lost, or this is what an "
            "interrupted delete leaves)",
        )
        return 0, 0, number == current().segment
    try:
        mutable = current()
        is_mutable = number == mutable.segment
        status = os.fstat(fd)
        _check_files(report, fd, kind, dir_fd, dir_str, number, mutable=mutable if is_mutable else None, full=full)
        return status.st_ino, status.st_dev, is_mutable
    finally:
        os.close(fd)


def _check_files(
    report: VerifyReport,
    fd: int,
    kind: int,
    dir_fd: int,
    dir_str: str,
    number: int,  # pylint: disable=too-many-arguments
    *,
    mutable: MutableView | None,
    full: bool,
) -> None:
    """Check a segment's index against its open data file ``fd``; ``mutable``: its committed
    extent when it is the mutable segment, None when sealed."""
    idx_path = os.path.join(dir_str, index_name(number))
    data_path = os.path.join(dir_str, segment_name(number, kind == KIND_ZSTD))
    raw = read_index(dir_fd, number, mutable.index_bytes if mutable is not None else None)
    records: list[Record] = []
    if raw is None:
        report.notes.append(
            f"segment {number} has no record index (written by an engine without one); only its framing can be checked"
        )
    else:
        try:
            header = decode_header(raw, idx_path)
        except FormatError as exc:
            report.add(idx_path, 0, "bad-index-header", str(exc))
            return
        # A sealed segment may have been rewritten to the other kind since: its suffix decides.
        if header.segment != number or (mutable is not None and header.kind != kind):
            report.add(idx_path, 10, "bad-index-header", f"header names segment {header.segment} of kind {header.kind}")
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
        chunks = _raw_chunks(fd, min(size, mutable.end) if mutable is not None else size, mapped=mutable is None)
        if mutable is None and sealed and size != end:
            report.add(data_path, end, "size-mismatch", f"data file is {size} bytes, index commits {end}")
        elif size < end:
            report.add(data_path, size, "truncated", f"data file is {size} bytes, index commits {end}")
    if full:
        _check_blobs(report, data_path, chunks, blobs)
    elif kind == KIND_ZSTD and (sealed or raw is None):
        _check_seek_table(report, fd, data_path, size)
    if mutable is not None and raw is not None and end != mutable.end:
        report.add(idx_path, 0, "index-mismatch", f"index commits {end} bytes but the state page says {mutable.end}")
    if mutable is None and raw is not None and not sealed:
        report.add(idx_path, len(raw), "not-sealed", "sealed segment has no SEAL record")


def _check_seek_table(report: VerifyReport, fd: int, data_path: str, size: int) -> None:
    """Structure only: the seek table must parse and add up."""
    try:
        parse_seek_table(pread_at(fd), size, data_path)
    except FormatError as exc:
        report.add(data_path, max(size - 9, 0), "bad-seek-table", str(exc))


def _blob_records(report: VerifyReport, idx_path: str, records: list[Record]) -> tuple[list[Record], int, bool]:
    """BLOB records in order, checking contiguity; returns (blobs, committed end, sealed)."""
    sealed = False
    blobs: list[Record] = []
    for position, record, end in blob_starts(records):
        at = HEADER_BYTES + position * RECORD_BYTES
        if record.rtype == REC_SEAL:
            if record.offset != end:
                report.add(idx_path, at, "bad-seal", f"SEAL says {record.offset} bytes, blobs end at {end}")
            if record.blob_count != len(blobs):
                report.add(idx_path, at, "bad-seal", f"SEAL says {record.blob_count} blobs, the index has {len(blobs)}")
            sealed = True
        else:
            if record.offset != end:
                report.add(idx_path, at, "gap", f"blob starts at {record.offset}, previous ended at {end}")
            blobs.append(record)
    return blobs, blobs[-1].end if blobs else 0, sealed


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


def _zstd_chunks(
    report: VerifyReport, fd: int, data_path: str, records: list[Record], size: int, use_seek_table: bool
) -> Iterator[tuple[int, bytes | memoryview]]:
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


def _check_blobs(
    report: VerifyReport, data_path: str, chunks: Iterable[tuple[int, bytes | memoryview]], blobs: list[Record]
) -> None:
    """Feed contiguous chunks of the segment's uncompressed bytes to each blob's checksum."""
    position = 0
    hasher = xxhash.xxh3_64()
    covered = 0
    for offset, data in chunks:
        chunk_end = offset + len(data)
        covered = chunk_end
        while position < len(blobs):
            blob = blobs[position]
            start, stop = blob.offset, blob.end
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
        if blob.size == 0 and blob.offset <= covered:
            _finish(report, data_path, blob, xxhash.xxh3_64_intdigest(b""))
        else:
            report.add(
                data_path,
                blob.offset,
                "truncated",
                f"blob {blob.offset}..{blob.end} is past the readable data ({covered} bytes)",
            )


def _finish(report: VerifyReport, data_path: str, blob: Record, digest: int) -> None:
    report.blobs += 1
    report.bytes_checked += blob.size
    if blob.flags & FLAG_UNCHECKED:
        report.notes.append(
            f"{data_path}: blob {blob.offset}..{blob.end} was adopted without a checksum; only its framing was checked"
        )
    elif digest != blob.checksum:
        what = "legacy extent" if blob.flags & FLAG_LEGACY_EXTENT else "blob"
        report.add(data_path, blob.offset, "checksum", f"{what} {blob.offset}..{blob.end} fails its XXH3-64 checksum")
