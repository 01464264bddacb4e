"""Maintenance while the store is live: recompress, retention, compaction, statistics.

``MaintainedStore`` is the engine (``store.Store``) with its bulk reads (bulk.py) and
ingest (ingest.py), plus these operations; the public
class ``FlatFileDb`` (flat_file_db.py) is it with its constructor spelled out. The AUTO
compression policy is :func:`compress_sealed_if_it_pays`, a seal hook the engine calls
after each seal (the engine never calls up into this module). Each operation works
on sealed segments only, copies without the write lock and takes it only to switch
files (GUARANTEES.md "Maintenance"), so readers and writers in other processes go on
meanwhile.
"""

from __future__ import annotations

import enum
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import zstandard

from .arguments import check_level
from .bulk import BulkReads
from .catalog import Catalog
from .errors import FlatFileDbUnsafeAccessError, InvalidLocationError
from .frames import MAX_FRAME_DECOMPRESSED_BYTES
from .index import HEADER_BYTES, KIND_RAW, KIND_ZSTD, REC_BLOB, frame_summary
from .ingest import Ingest
from .naming import index_name, segment_name
from .rewrite import rewrite_segment
from .seekable import Framing
from .segment_files import index_records, open_data_file, read_index, written_kind
from .types import DataLocation

logger = logging.getLogger("conduit_flat_file_db")

SAMPLE_BYTES = 2**20
SAMPLES = 4
COPY_BATCH_BYTES = 64 * 2**20
_STREAM_COPY_BYTES = 8 * 2**20


class CompressMode(enum.Enum):
    """How segments are (re)compressed. ``use_compression`` and ``recompress`` take these or a bool.

    NO: raw. YES: seekable Zstandard. KEEP: as they are (recompress: only a new
    level or frame size). AUTO: compress when a sample shows it saves at least
    ``min_segment_saving`` of the bytes, else raw (new segments: decided when sealed).
    """

    NO = "no"
    YES = "yes"
    KEEP = "keep"
    AUTO = "auto"


def as_compress_mode(value: bool | CompressMode) -> CompressMode:
    """True/False or a CompressMode, as a CompressMode."""
    if isinstance(value, CompressMode):
        return value
    if isinstance(value, bool):
        return CompressMode.YES if value else CompressMode.NO
    raise TypeError(f"expected a bool or a CompressMode, not {type(value).__name__}")


@dataclass(frozen=True)
class SegmentStats:
    """One segment: sizes, blob count, state."""

    number: int
    file_name: str
    sealed: bool
    compressed: bool
    blobs: int
    logical_bytes: int  # uncompressed bytes of its blobs
    disk_bytes: int  # data file plus index file (for a segment only in the bucket: its data object there)
    remote: bool = False  # with tiering: its data file is only in the bucket now

    @property
    def ratio(self) -> float:
        """Logical bytes per byte on disk (above 1 means compression saves space)."""
        return self.logical_bytes / self.disk_bytes if self.disk_bytes else 1.0


@dataclass(frozen=True)
class StoreStats:
    """Every segment, and totals."""

    segments: list[SegmentStats]

    @property
    def logical_bytes(self) -> int:
        """Uncompressed bytes of all blobs."""
        return sum(s.logical_bytes for s in self.segments)

    @property
    def disk_bytes(self) -> int:
        """Bytes of all data and index files."""
        return sum(s.disk_bytes for s in self.segments)

    @property
    def blobs(self) -> int:
        """Number of blobs."""
        return sum(s.blobs for s in self.segments)

    @property
    def ratio(self) -> float:
        """Logical bytes per byte on disk."""
        return self.logical_bytes / self.disk_bytes if self.disk_bytes else 1.0


@dataclass(frozen=True)
class RecompressResult:
    """What recompress did to one segment."""

    number: int
    action: str  # "compressed", "decompressed", "reframed", "skipped", "vanished"
    disk_before: int
    disk_after: int
    reason: str = ""


@dataclass
class Compaction:
    """The result of :meth:`FlatFileDb.compact`: old location -> new location, and the old segments.

    Update your key-value store from ``mapping``, then call
    :meth:`FlatFileDb.finish_compaction` to delete ``old_segments``.
    """

    mapping: dict[DataLocation, DataLocation] = field(default_factory=dict)
    old_segments: list[int] = field(default_factory=list)
    dropped: int = 0  # blobs not copied (not live)
    store_id: tuple[int, int] = (0, 0)  # (device, inode) of the datadir that compact() ran on


def reframe_sealed(store: MaintainedStore, sealed: list[int]) -> None:
    """The seal hook of CompressMode.NO and YES: re-frame compressed segments just sealed when
    they hold small or stored frames (and ``reframe_on_seal``); raw ones stay as they are."""
    if not store.reframe_on_seal:
        return
    # pylint: disable=protected-access  # the hook is this module's policy for this module's class
    for number in sealed:
        try:
            if store._segment_kind(number) == KIND_ZSTD and _small_frames(store, number):
                framing = Framing(
                    True, store.compression_level, store.frame_bytes, store.compression_threads, store.min_frame_saving
                )
                rewrite_segment(
                    store._dir_fd, store._abs_dir, number, framing, write_lock=store._write_lock, state=store._state
                )
        except (OSError, ValueError) as exc:
            logger.warning(
                "%s: re-framing sealed segment %d failed (it stays as written): %s", store.datadir, number, exc
            )


def _small_frames(store: MaintainedStore, number: int) -> bool:
    """Whether a sealed compressed segment holds stored (uncompressed) frames, or many more
    frames than ``frame_bytes`` frames would make: only then does re-framing pay for itself."""
    raw = read_index(store._dir_fd, number)  # pylint: disable=protected-access
    if raw is None:
        return False
    frames, stored, size = frame_summary(memoryview(raw)[HEADER_BYTES:])
    return stored or frames > 1.25 * -(-size // store.frame_bytes)


def compress_sealed_if_it_pays(store: MaintainedStore, sealed: list[int]) -> None:
    """The seal hook of CompressMode.AUTO: a raw segment just sealed is compressed when a sample
    shows it pays (``min_segment_saving``); a compressed one (written by an instance opened with
    compression) is re-framed as the engine's default hook does. A failure only logs: the
    segment stays as it was written, every blob readable."""
    # pylint: disable=protected-access  # the hook is this module's policy for this module's class
    for number in sealed:
        try:
            if store._segment_kind(number) == KIND_ZSTD:
                reframe_sealed(store, [number])
            else:
                store._recompress_one(number, CompressMode.AUTO, None, None)
        except (OSError, ValueError) as exc:
            logger.warning("%s: compressing sealed segment %d failed (it stays raw): %s", store.datadir, number, exc)


def estimate_savings(read: Callable[[int, int], bytes], size: int, level: int) -> float:
    """Fraction of bytes Zstandard at ``level`` saves on up to SAMPLES samples of SAMPLE_BYTES."""
    if size == 0:
        return 0.0
    step = max(size // SAMPLES, 1)
    cctx = zstandard.ZstdCompressor(level=level)
    plain = packed = 0
    for start in range(0, size, step):
        sample = read(start, min(size, start + SAMPLE_BYTES))
        plain += len(sample)
        packed += len(cctx.compress(sample))
    return 1.0 - packed / plain if plain else 0.0


class MaintainedStore(BulkReads, Ingest, Catalog):
    """The engine plus statistics, recompression, retention and compaction.

    Set up by :class:`~conduit_flat_file_db.FlatFileDb`, whose constructor sets the two
    attributes below.
    """

    compress_mode: CompressMode  # the use_compression the store was opened with
    min_segment_saving: float  # CompressMode.AUTO's bar

    # -- statistics -----------------------------------------------------------------------

    def stats(self) -> StoreStats:
        """Per segment and total: logical bytes, bytes on disk, ratio, blobs, sealed, compressed.

        Bytes on disk are the data file's plus the index's; with tiering, a segment whose data file
        is only in the bucket counts its bytes there (``remote`` is True), so that
        ``enforce_retention(max_bytes=...)`` bounds the whole store. Raises InvalidLocationError for a
        segment file that is not a regular file (a directory, FIFO or symlink of its name).
        """
        mutable = self.mutable_segment()
        out = []
        for number in self.segments():
            remote = False
            try:
                fd, kind = open_data_file(self._dir_fd, number)
            except FileNotFoundError:
                manifest = self._tier.manifest(number) if self._tier is not None else None
                if manifest is None:
                    continue  # deleted meanwhile
                disk, kind, remote = manifest.data_size, KIND_ZSTD if manifest.compressed else KIND_RAW, True
            else:
                try:
                    disk = os.fstat(fd).st_size
                finally:
                    os.close(fd)
            compressed = kind == KIND_ZSTD
            name = segment_name(number, compressed)
            try:
                records = index_records(self._dir_fd, number)
                indexed = written_kind(self._dir_fd, number) is not None
            except FileNotFoundError:
                continue  # deleted meanwhile
            try:
                disk += os.stat(index_name(number), dir_fd=self._dir_fd).st_size
            except FileNotFoundError:
                pass
            blobs = [r for r in records if r.rtype == REC_BLOB]
            if indexed:
                count, logical = len(blobs), sum(r.size for r in blobs)
            else:  # written without an index: one extent of unknown blobs
                try:
                    count, logical = 1, self._readers.open(number).limit
                except FileNotFoundError:
                    continue  # deleted meanwhile: a delete removes the data file, then the index
            out.append(SegmentStats(number, name, number != mutable, compressed, count, logical, disk, remote))
        return StoreStats(out)

    # -- recompression --------------------------------------------------------------------

    def _sealed_numbers(self, segments: Iterable[int | str | os.PathLike[str]] | None) -> list[int]:
        mutable = self.mutable_segment()
        if segments is None:
            return [n for n in self.segments() if n < mutable]
        # One entry per segment, in first-seen order: a segment named twice (as 3, "…/data_00000003.dat"
        # and Path("…/data_00000003.dat.zst") alike) would be rewritten or copied twice.
        numbers: dict[int, None] = {}
        for item in segments:
            number = (
                item if isinstance(item, int) and not isinstance(item, bool) else self._readers.segment_number_of(item)
            )
            if number < 0:
                raise InvalidLocationError(f"segment numbers are >= 0, got {number}")
            if number >= mutable:
                raise FlatFileDbUnsafeAccessError(
                    f"segment {number} is the mutable segment (or newer): only sealed segments are maintained"
                )
            numbers[number] = None
        return list(numbers)

    def recompress(
        self,
        segments: Iterable[int | str | os.PathLike[str]] | None = None,
        mode: bool | CompressMode = CompressMode.AUTO,
        level: int | None = None,
        frame_bytes: int | None = None,
    ) -> list[RecompressResult]:
        """Rewrite sealed segments raw -> compressed, compressed -> raw, or with another level/frame size.

        Every location stays valid (offsets are uncompressed; a segment is found by its
        number). Each switch is atomic: the new file is written aside, fsynced, renamed
        over the old one under the write lock; readers holding the old file keep
        reading it. ``segments``: numbers or paths; default every sealed segment.
        """
        self._refuse_write("recompress")
        target_mode = as_compress_mode(mode)
        if level is not None:
            check_level(level, "recompress(level=)")
        if frame_bytes is not None and (
            isinstance(frame_bytes, bool)
            or not isinstance(frame_bytes, int)
            or not 1 <= frame_bytes <= MAX_FRAME_DECOMPRESSED_BYTES
        ):
            wrong_type = not isinstance(frame_bytes, int) or isinstance(frame_bytes, bool)
            raise (TypeError if wrong_type else ValueError)(
                f"recompress(frame_bytes=) must be an int in 1..{MAX_FRAME_DECOMPRESSED_BYTES} or None, "
                f"got {frame_bytes!r}"
            )
        self._reopen_if_closed()
        self._wait_seal_hooks("recompress()")  # not racing the seal hook's rewrite of a segment just sealed
        results = []
        for number in self._sealed_numbers(segments):
            results.append(self._recompress_one(number, target_mode, level, frame_bytes))
        return results

    def _recompress_one(
        self, number: int, mode: CompressMode, level: int | None, frame_bytes: int | None
    ) -> RecompressResult:
        try:
            return self._rewrite_one(number, mode, level, frame_bytes)
        except FileNotFoundError:  # deleted between two of its steps (they take no lock but the rename's)
            return RecompressResult(number, "vanished", 0, 0, "deleted or rewritten meanwhile")

    def _rewrite_one(
        self, number: int, mode: CompressMode, level: int | None, frame_bytes: int | None
    ) -> RecompressResult:
        kind = self._segment_kind(number)
        name = segment_name(number, kind == KIND_ZSTD)
        before = os.stat(name, dir_fd=self._dir_fd).st_size
        reason = ""
        if mode is CompressMode.AUTO:
            reader = self._readers.open(number)
            savings = estimate_savings(reader.read, reader.limit, level or self.compression_level)
            target = savings >= self.min_segment_saving
            reason = f"a sample compresses by {savings:.1%} (bar {self.min_segment_saving:.0%})"
        elif mode is CompressMode.KEEP:
            target = kind == KIND_ZSTD
        else:
            target = mode is CompressMode.YES
        new_framing = level is not None or frame_bytes is not None
        if target == (kind == KIND_ZSTD) and not (target and new_framing):
            return RecompressResult(number, "skipped", before, before, reason or "already in that form")
        framing = Framing(
            target,
            level or self.compression_level,
            frame_bytes or self.frame_bytes,
            self.compression_threads,
            self.min_frame_saving,
        )
        if not rewrite_segment(
            self._dir_fd, self._abs_dir, number, framing, write_lock=self._write_lock, state=self._state, fsync=True
        ):
            return RecompressResult(number, "vanished", before, before, "deleted or rewritten meanwhile")
        after = os.stat(segment_name(number, target), dir_fd=self._dir_fd).st_size
        action = "reframed" if target == (kind == KIND_ZSTD) else ("compressed" if target else "decompressed")
        return RecompressResult(number, action, before, after, reason)

    # -- retention --------------------------------------------------------------------------

    def enforce_retention(
        self,
        max_bytes: int | None = None,
        max_age: float | None = None,
        keep_min: int = 0,
        on_delete: Callable[[str, list[DataLocation]], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> list[int]:
        """Delete the oldest sealed segments until the store holds at most ``max_bytes`` on disk
        and no sealed segment is older than ``max_age`` seconds (its seal time); never the
        mutable segment, and never fewer than ``keep_min`` sealed segments.

        ``on_delete(path, locations)`` is called with each segment's blob locations before
        it is deleted (drop them from your key-value store there); if it raises, nothing
        more is deleted and the error propagates. Returns the deleted segment numbers.
        """
        self._refuse_write("enforce_retention")
        if (max_bytes is not None and max_bytes < 0) or (max_age is not None and max_age < 0) or keep_min < 0:
            raise ValueError("max_bytes, max_age and keep_min must be >= 0")
        stats = self.stats()
        total = stats.disk_bytes
        sealed = [s for s in stats.segments if s.sealed]
        deleted: list[int] = []
        now = clock()
        for segment in sealed:
            if len(sealed) - len(deleted) <= keep_min:
                break
            too_big = max_bytes is not None and total > max_bytes
            too_old = max_age is not None and now - self._sealed_at(segment.number) > max_age
            if not too_big and not too_old:
                break
            path = self.segment_path(segment.number)
            if on_delete is not None:
                on_delete(path, self._locations_of(segment.number))
            self.delete_file(path)
            total -= segment.disk_bytes
            deleted.append(segment.number)
        return deleted

    def _sealed_at(self, number: int) -> float:
        """When a segment was sealed: the time of its index's last write (the SEAL record)."""
        for name in (index_name(number), segment_name(number, False), segment_name(number, True)):
            try:
                return os.stat(name, dir_fd=self._dir_fd).st_mtime
            except FileNotFoundError:
                continue
        return 0.0

    def _locations_of(self, number: int) -> list[DataLocation]:
        """The blob locations of a segment, named as put() named them."""
        path = self.segment_path(number, as_issued=True)
        return [DataLocation(path, r.offset, r.end) for r in index_records(self._dir_fd, number) if r.rtype == REC_BLOB]

    # -- compaction ---------------------------------------------------------------------------

    def compact(
        self, segments: Iterable[int | str | os.PathLike[str]], is_live: Callable[[DataLocation], bool]
    ) -> Compaction:
        """Copy the live blobs of sealed segments into new sealed segments (phase one of two).

        Returns the mapping old location -> new location. The old segments stay until
        :meth:`finish_compaction`: update your key-value store from the mapping first.
        Copies are ordinary commits, so a crash at any point leaves every old location
        readable and every copy whole (a crash can leave copies nobody maps to; they
        are reclaimed by the next compaction of their segment). Memory is bounded by
        COPY_BATCH_BYTES.
        """
        self._refuse_write("compact")
        result = Compaction(store_id=self._store_id())
        result.old_segments = self._sealed_numbers(segments)
        for number in result.old_segments:
            batch: list[tuple[DataLocation, bytes]] = []
            batch_bytes = 0
            for old in self._locations_of(number):
                if not is_live(old):
                    result.dropped += 1
                    continue
                size = old.end_offset - old.start_offset
                if size > _STREAM_COPY_BYTES:
                    with self.open_blob(old) as source:
                        result.mapping[old] = self.put_stream(source)
                    continue
                batch.append((old, self.get(old)))
                batch_bytes += size
                if batch_bytes >= COPY_BATCH_BYTES:
                    self._copy_batch(batch, result)
                    batch, batch_bytes = [], 0
            self._copy_batch(batch, result)
        self.rotate()  # the copies now sit in sealed segments
        return result

    def _copy_batch(self, batch: list[tuple[DataLocation, bytes]], result: Compaction) -> None:
        if batch:
            for (old, _data), new in zip(batch, self.put_many([data for _old, data in batch])):
                result.mapping[old] = new

    def _store_id(self) -> tuple[int, int]:
        self._reopen_if_closed()
        status = os.fstat(self._dir_fd)
        return status.st_dev, status.st_ino

    def finish_compaction(self, compaction: Compaction) -> list[int]:
        """Phase two: delete the compacted segments. Returns the numbers deleted."""
        self._refuse_write("finish_compaction")
        if not isinstance(compaction, Compaction):
            raise TypeError(f"expected the Compaction that compact() returned, not {type(compaction).__name__}")
        if compaction.store_id != self._store_id():
            # Its segment numbers name another store's segments: deleting ours of the same
            # numbers would drop blobs that were never copied.
            raise InvalidLocationError(
                f"this Compaction was not made by compact() of {self._dir_str}; finish it on the store that made it"
            )
        deleted = []
        for number in compaction.old_segments:
            path = self.segment_path(number)
            try:
                self.delete_file(path)
            except InvalidLocationError:
                continue
            deleted.append(number)
        return deleted


__all__ = [
    "Compaction",
    "CompressMode",
    "MaintainedStore",
    "RecompressResult",
    "SegmentStats",
    "StoreStats",
    "compress_sealed_if_it_pays",
    "reframe_sealed",
]
