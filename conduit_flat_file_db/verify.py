"""Offline and online consistency check of a store: every blob against its checksum,
every index against its data file. Reports; never raises for what it finds."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import xxhash

from .errors import FlatFileDbNotFoundError, FormatError, InvalidLocationError
from .index import FLAG_LEGACY_EXTENT, HEADER_BYTES, REC_BLOB, REC_SEAL, Record, decode_header, decode_records
from .naming import STATE_FILE_NAME, TEMP_PREFIX, index_name, parse_name, segment_name
from .segment import CHECK_CHUNK_BYTES, checksum_range, open_data_file, read_index
from .state import MutableView


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
    blobs: int = 0
    bytes_checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems

    def add(self, path: str, offset: int, kind: str, message: str) -> None:
        """Record a problem."""
        self.problems.append(Problem(path, offset, kind, message))

    def __str__(self) -> str:
        lines = [f"{'OK' if self.ok else 'PROBLEMS FOUND'}: {self.segments} segments, {self.blobs} blobs, "
                 f"{self.bytes_checked} bytes checked, {len(self.problems)} problems"]
        lines += [f"  problem: {p}" for p in self.problems]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def verify_store(dir_fd: int, dir_str: str, mutable: MutableView) -> VerifyReport:
    """Check every segment in the directory; ``mutable`` is the committed extent to trust."""
    report = VerifyReport()
    numbers: set[int] = set()
    for name in sorted(os.listdir(dir_fd)):
        parsed = parse_name(name)
        if parsed is not None:
            numbers.add(parsed[0])
        elif name.startswith(TEMP_PREFIX):
            report.notes.append(f"scratch file {name} (removed by the next open)")
        elif name != STATE_FILE_NAME:
            report.notes.append(f"unknown file {name} in the datadir")
    for number in sorted(numbers):
        if number > mutable.segment:
            continue  # created by a rotation that has not published yet
        report.segments += 1
        _verify_segment(report, dir_fd, dir_str, number, mutable)
    return report


def _verify_segment(report: VerifyReport, dir_fd: int, dir_str: str, number: int, mutable: MutableView) -> None:
    idx_path = os.path.join(dir_str, index_name(number))
    data_path = os.path.join(dir_str, segment_name(number, False))
    is_mutable = number == mutable.segment
    try:
        fd, _kind = open_data_file(dir_fd, number)
    except (FlatFileDbNotFoundError, InvalidLocationError) as exc:
        report.add(data_path, 0, "missing-data", f"segment {number}: {exc}")
        return
    try:
        raw = read_index(dir_fd, number)
        if raw is None:
            report.notes.append(f"segment {number} has no record index (written by an engine without one); "
                                "its blobs cannot be checked")
            return
        if is_mutable:
            raw = raw[: mutable.index_bytes]
        try:
            header = decode_header(raw, idx_path)
        except FormatError as exc:
            report.add(idx_path, 0, "bad-index-header", str(exc))
            return
        if header.segment != number:
            report.add(idx_path, 12, "bad-index-header", f"header names segment {header.segment}")
        scan = decode_records(memoryview(raw)[HEADER_BYTES:])
        if scan.problem is not None:
            report.add(idx_path, HEADER_BYTES + scan.valid_bytes, "bad-index-record", scan.problem)
        data_size = os.fstat(fd).st_size
        end, sealed = _verify_records(report, fd, data_path, idx_path, scan.records, data_size)
        if is_mutable:
            if end != mutable.end:
                report.add(idx_path, 0, "index-mismatch",
                           f"index commits {end} bytes but the state page says {mutable.end}")
        elif not sealed:
            report.add(idx_path, len(raw), "not-sealed", "sealed segment has no SEAL record")
        elif data_size != end:
            report.add(data_path, end, "size-mismatch", f"data file is {data_size} bytes, index commits {end}")
    finally:
        os.close(fd)


def _verify_records(report: VerifyReport, fd: int, data_path: str, idx_path: str,
                    records: list[Record], data_size: int) -> tuple[int, bool]:
    """Check contiguity and checksums of BLOB records; returns (committed end, sealed)."""
    end = 0
    sealed = False
    buf = b""
    buf_start = 0
    for position, record in enumerate(records):
        rec_offset = HEADER_BYTES + position * 32
        if record.rtype == REC_SEAL:
            if record.a != end:
                report.add(idx_path, rec_offset, "bad-seal", f"SEAL says {record.a} bytes, blobs end at {end}")
            sealed = True
            continue
        if record.rtype != REC_BLOB:
            continue
        start, stop = record.a, record.a + record.b
        if start != end:
            report.add(idx_path, rec_offset, "gap", f"blob starts at {start}, previous ended at {end}")
        end = stop
        if stop > data_size:
            report.add(data_path, start, "truncated", f"blob {start}..{stop} is past the data end ({data_size})")
            continue
        report.blobs += 1
        report.bytes_checked += record.b
        if record.b <= CHECK_CHUNK_BYTES:
            if stop > buf_start + len(buf) or start < buf_start:
                buf = os.pread(fd, max(CHECK_CHUNK_BYTES, record.b), start)
                buf_start = start
            digest = xxhash.xxh3_64_intdigest(memoryview(buf)[start - buf_start : stop - buf_start])
        else:
            digest = checksum_range(fd, start, stop)
        if digest != record.c:
            what = "legacy extent" if record.flags & FLAG_LEGACY_EXTENT else "blob"
            report.add(data_path, start, "checksum", f"{what} {start}..{stop} fails its XXH3-64 checksum")
    return end, sealed


__all__ = ["Problem", "VerifyReport", "verify_store"]
