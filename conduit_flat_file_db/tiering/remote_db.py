"""``FlatFileDb.open_remote``: a store's uploaded segments, read from any machine, no datadir.

A location names its segment by number (the file name's ``data_NNNNNNNN`` part; the
directory is the writer's and is ignored here), so every location the writer handed out
for a segment it uploaded reads the same bytes here. The set of segments is the bucket's
manifests: listed at open, again on ``refresh()``, and by itself at most every
``refresh_seconds`` (on the first read after that interval), so segments uploaded later and
segments deleted appear within that interval. A read of a segment deleted since the last
listing raises FlatFileDbNotFoundError, as on the writer. Every write raises
FlatFileDbReadOnlyError (an ``io.UnsupportedOperation``).
"""

from __future__ import annotations

import errno
import os
import threading
import time
from types import TracebackType
from typing import Any, Iterable, Iterator

import xxhash

from ..errors import (
    FlatFileDbNotFoundError,
    FlatFileDbReadOnlyError,
    InvalidLocationError,
    RemoteCorruptionError,
    RemoteOnlySegmentError,
    TieringError,
)
from ..frames import FrameCache
from ..index import HEADER_BYTES, REC_BLOB, decode_header, decode_records
from ..naming import parse_segment_name, segment_name
from ..reader import BlobFile, apply_slice, as_offset, fast_slice
from ..types import BlobRecord, DataLocation, Slice
from ..verify import VerifyReport
from .bucket import RemoteBucket
from .config import Tiering
from .manifest import (
    CLAIM_NAME,
    MANIFESTS,
    MAX_MANIFEST_BYTES,
    Manifest,
    hex64,
    index_object,
    manifest_object,
    parse_manifest_name,
)
from .remote_reader import FETCH_ATTEMPTS, RemoteSegmentReader, read_groups

_WRITES = (
    "put",
    "put_many",
    "put_stream",
    "put_streams",
    "put_log",
    "delete_file",
    "rotate",
    "recompress",
    "compact",
    "finish_compaction",
    "enforce_retention",
    "adopt_file",
    "sync_tiering",
    "gc_tiering",
)


class RemoteFlatFileDb:
    """A read-only store served from the bucket (see the module docstring)."""

    readonly = True

    def __init__(self, url: str, **options: Any) -> None:
        self.tiering = Tiering(url, **options)
        self.url = url
        self.bucket = RemoteBucket(self.tiering.build_store(), self.tiering.prefix, url)
        self.cache = FrameCache(self.tiering.remote_cache_bytes)
        self._lock = threading.Lock()
        self._readers: dict[int, RemoteSegmentReader] = {}
        self._manifests: dict[int, Manifest] = {}
        self._numbers: set[int] = set()
        self._listed_at = 0.0
        self._closed = False
        if self.bucket.get("get_claim", CLAIM_NAME, MAX_MANIFEST_BYTES) is None:
            raise FlatFileDbNotFoundError(errno.ENOENT, "no store was ever uploaded here", url)
        self.refresh()

    def __repr__(self) -> str:
        return f"RemoteFlatFileDb({self.url!r})"

    def __getattr__(self, name: str) -> Any:
        if name in _WRITES:

            def refuse(*_args: Any, **_kwargs: Any) -> Any:
                raise FlatFileDbReadOnlyError(f"{name}(): {self.url} was opened with open_remote (read-only)")

            return refuse
        raise AttributeError(name)

    def __enter__(self) -> RemoteFlatFileDb:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Forget the cached readers and ranges (a later read works again)."""
        with self._lock:
            self._readers.clear()
            self._manifests.clear()
        self.cache.clear()

    # -- the listing ----------------------------------------------------------------------

    def refresh(self) -> None:
        """List the bucket's manifests now: segments uploaded since appear, deleted ones go."""
        numbers = {n for n in (parse_manifest_name(name) for name, _ in self.bucket.list(MANIFESTS)) if n is not None}
        with self._lock:
            for gone in set(self._readers) - numbers:
                del self._readers[gone]
                self._manifests.pop(gone, None)
            self._numbers = numbers
            self._listed_at = time.monotonic()

    def segments(self) -> list[int]:
        """Numbers of the uploaded segments, oldest first (as of the last listing)."""
        self._maybe_refresh()
        return sorted(self._numbers)

    def _maybe_refresh(self) -> None:
        if time.monotonic() - self._listed_at >= self.tiering.refresh_seconds:
            self.refresh()

    def _manifest(self, number: int) -> Manifest:
        found = self._manifests.get(number)
        if found is not None:
            return found
        raw = self.bucket.get("get_manifest", manifest_object(number), MAX_MANIFEST_BYTES)
        if raw is None:
            raise FlatFileDbNotFoundError(errno.ENOENT, f"segment {number} is not in the bucket", self.url)
        found = Manifest.decode(raw, f"{self.url}/{manifest_object(number)}", number)
        self._manifests[number] = found
        return found

    def _reader(self, number: int) -> RemoteSegmentReader:
        reader = self._readers.get(number)
        if reader is not None:
            return reader
        self._maybe_refresh()
        if number not in self._numbers:
            raise FlatFileDbNotFoundError(errno.ENOENT, f"segment {number} is not in the bucket", self.url)
        manifest = self._manifest(number)
        name = segment_name(number, manifest.compressed)
        reader = RemoteSegmentReader(self.bucket, manifest, name, self.cache, lambda: self._index(number))
        with self._lock:
            self._readers[number] = reader
        return reader

    def _resolve(self, location: Any) -> tuple[Any, int, int, RemoteSegmentReader]:
        if not isinstance(location, tuple) or len(location) != 3:
            raise TypeError(f"expected a DataLocation(file_path, start_offset, end_offset), got {location!r}")
        file_path, start, end = location
        try:
            base = os.path.basename(os.fspath(file_path))
        except TypeError:
            raise TypeError(f"file_path must be str or os.PathLike, not {type(file_path).__name__}") from None
        number = parse_segment_name(base) if isinstance(base, str) else None
        if number is None:
            raise InvalidLocationError(f"{file_path!r} is not a segment file name")
        start, end = as_offset(start, "start_offset", file_path), as_offset(end, "end_offset", file_path)
        reader = self._reader(number)
        if start > end or end > reader.limit:
            raise InvalidLocationError(
                f"{file_path}: {start}..{end} is not within segment {number}'s {reader.limit} bytes"
            )
        return file_path, start, end, reader

    # -- reads ----------------------------------------------------------------------------

    def get(self, data_location: DataLocation, slice: Slice | None = None) -> bytes:  # pylint: disable=redefined-builtin
        """A blob (or ``slice`` of it), as ``FlatFileDb.get``."""
        file_path, start, end, reader = self._resolve(data_location)
        if slice is not None:
            start, end = fast_slice(start, end, slice) or apply_slice(file_path, start, end, slice)
        return reader.read(start, end)

    def get_many(self, locations: Iterable[DataLocation], slices: Iterable[Slice | None] | None = None) -> list[bytes]:
        """Many blobs (or slices), in the caller's order; per segment, one coalesced, parallel fetch."""
        locations = list(locations)
        parts = [None] * len(locations) if slices is None else list(slices)
        if len(parts) != len(locations):
            raise InvalidLocationError(f"get_many: {len(locations)} locations but {len(parts)} slices")
        groups: dict[int, tuple[RemoteSegmentReader, list[int], list[tuple[int, int]]]] = {}
        for index, (location, part) in enumerate(zip(locations, parts)):
            file_path, start, end, reader = self._resolve(location)
            if part is not None:
                start, end = fast_slice(start, end, part) or apply_slice(file_path, start, end, part)
            entry = groups.setdefault(reader.number, (reader, [], []))
            entry[1].append(index)
            entry[2].append((start, end))
        out: list[bytes] = [b""] * len(locations)
        if groups:
            read_groups(list(groups.values()), out)
        return out

    def iter_many(self, locations: Iterable[DataLocation]) -> Iterator[tuple[int, bytes]]:
        """(input index, bytes) of each location, in disk order, one blob in memory at a time."""
        resolved = sorted(
            (reader.number, start, index, end, reader)
            for index, (_path, start, end, reader) in enumerate(map(self._resolve, locations))
        )
        for _number, start, index, end, reader in resolved:
            yield index, reader.read(start, end)

    def open_blob(self, location: DataLocation, slice: Slice | None = None) -> BlobFile:  # pylint: disable=redefined-builtin
        """A read-only, seekable file object over a blob (or a slice of it)."""
        file_path, start, end, reader = self._resolve(location)
        if slice is not None:
            start, end = fast_slice(start, end, slice) or apply_slice(file_path, start, end, slice)
        return BlobFile(reader, start, end, str(file_path))

    def get_view(self, location: DataLocation, slice: Slice | None = None) -> memoryview:  # pylint: disable=redefined-builtin
        """Not here: no local file to map (RemoteOnlySegmentError); use :meth:`get`."""
        raise RemoteOnlySegmentError(f"{location!r}: open_remote has no local file to map; use get()")

    # -- records and checks ---------------------------------------------------------------

    def _index(self, number: int) -> bytes:
        """Segment ``number``'s record index from the bucket, checked against its manifest (a
        failed check fetches once more: a byte flipped in transit is not a damaged object)."""
        manifest = self._manifest(number)
        for _attempt in range(FETCH_ATTEMPTS):
            raw = self.bucket.get("get_index", index_object(number))
            if raw is None:
                raise FlatFileDbNotFoundError(errno.ENOENT, f"segment {number}'s index is not in the bucket", self.url)
            if len(raw) == manifest.index_size and hex64(xxhash.xxh3_64_intdigest(raw)) == manifest.index_xxh3:
                header = decode_header(raw, index_object(number))
                if header.segment != number:
                    raise RemoteCorruptionError(
                        f"{self.url}/{index_object(number)} is the index of segment {header.segment}", self.url
                    )
                return raw
        raise RemoteCorruptionError(f"{self.url}/{index_object(number)} does not match its manifest (twice)", self.url)

    def iter_records(self) -> Iterator[BlobRecord]:
        """Every blob of every uploaded segment, from their indexes, in disk order."""
        for number in self.segments():
            try:
                raw = self._index(number)
            except FlatFileDbNotFoundError:
                continue  # deleted since the listing
            for record in decode_records(memoryview(raw)[HEADER_BYTES:]).records:
                if record.rtype == REC_BLOB:
                    yield BlobRecord(number, record.offset, record.end, record.checksum)

    def iter_locations(self) -> Iterator[DataLocation]:
        """Every blob's location (named by segment file name only)."""
        for record in self.iter_records():
            name = segment_name(record.segment, self._manifest(record.segment).compressed)
            yield DataLocation(name, record.start_offset, record.end_offset)

    def verify(self, full: bool = True) -> VerifyReport:
        """Check every uploaded segment: its index against the manifest, and (``full``) every
        blob against its checksum, reading each segment through the tier's checks. Never raises
        for what it finds."""
        report = VerifyReport(full=full)
        for number in self.segments():
            report.segments += 1
            try:
                self._verify_segment(report, number, full)
            except FlatFileDbNotFoundError:
                report.segments -= 1  # deleted meanwhile
            except (TieringError, ValueError) as exc:
                report.add(f"{self.url}/{manifest_object(number)}", 0, "remote", f"segment {number}: {exc}")
        return report

    def _verify_segment(self, report: VerifyReport, number: int, full: bool) -> None:
        raw = self._index(number)
        records = decode_records(memoryview(raw)[HEADER_BYTES:]).records
        report.records += len(records)
        report.index_bytes += len(raw)
        if not full:
            return
        reader = self._reader(number)
        for record in records:
            if record.rtype != REC_BLOB:
                continue
            if record.end > reader.limit:  # read_frames has no frame there: say so, check the others
                report.add(reader.name, record.offset, "remote", f"blob at {record.offset} ends past the segment")
                continue
            data = reader.read(record.offset, record.end)
            report.blobs += 1
            report.bytes_checked += len(data)
            if xxhash.xxh3_64_intdigest(data) != record.checksum:
                report.add(reader.name, record.offset, "checksum", f"blob at {record.offset} fails its checksum")


__all__ = ["RemoteFlatFileDb"]
