"""The store's segments as a catalogue: list, name, delete, walk their records, verify, and
locations in a packed form independent of the datadir's path; the read lock and the frame
cache's counters for callers that inspect the store.

``Catalog`` adds these to the engine (store.Store) as a subclass: none is on a hot path, and
each needs the engine's descriptors, lock and reader cache, which a separate object would
only reach through it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Callable, ContextManager, Iterator

from .errors import FlatFileDbLockTimeoutError, FlatFileDbUnsafeAccessError, InvalidLocationError, LogPositionTypeError
from .fileio import list_dir
from .index import FLAG_LOG, KIND_RAW, KIND_ZSTD, REC_BLOB, REC_SEAL, Record
from .log_records import LogRecords
from .naming import INDEX_SUFFIX, MAX_SEGMENT_NUMBER, index_name, parse_name, remote_name, segment_name
from .reader import as_offset
from .segment_files import fsync_dir, index_records, written_kind
from .state import W_SEGMENT
from .types import BlobRecord, DataLocation, pack_location_parts, unpack_location_parts
from .verify import VerifyReport, verify_store, wait_a_grace_period

logger = logging.getLogger("conduit_flat_file_db")

DELETE_SETTLE_SECONDS = 5.0  # verify waits this long at most for a delete in progress to finish


class Catalog(LogRecords):
    """The engine plus what is known of its segments: numbers, paths, records, checks."""

    def delete_file(self, file_path: Path | str) -> None:
        """Delete one sealed segment (data and index), and every blob in it.

        Raises InvalidLocationError for anything that is not a segment file of this
        datadir (other directories, symlinks, other names) and
        FlatFileDbUnsafeAccessError for the mutable segment. Deleting a segment that
        is already gone logs an error and returns, as the original engine did.
        """
        self._refuse_write("delete_file")
        self._reopen_if_closed()
        number = self._readers.segment_number_of(file_path)
        dir_fd = self._dir_fd
        for name in (segment_name(number, False), segment_name(number, True)):
            try:
                if os.path.islink(os.path.join(self._abs_dir, name)):
                    raise InvalidLocationError(f"{name} in {self._dir_str} is a symlink; refused")
            except ValueError:
                raise InvalidLocationError(f"{file_path!r} is not a segment file of this store") from None
        with self._writing():
            # No resync: deleting a sealed segment needs no repair of the mutable one, and that
            # repair (after a put or rotation that failed on a full disk: a seek table rewritten, a
            # segment created) needs disk space, which is what a delete is often called to free.
            # Every segment below the state page's mutable segment is sealed, even while a dead
            # writer's rotation is half done (the page then still names the segment it sealed).
            if number >= self._words[W_SEGMENT]:
                raise FlatFileDbUnsafeAccessError(
                    f"Deleting the mutable file is not allowed. Ever. ({file_path}; seal it first with rotate())"
                )
            # Only what this datadir uploaded (its marker says so, even a damaged one) is deleted in the
            # bucket: objects under a number it never uploaded are another copy's, or a crash's left
            # to gc_tiering().
            tier = self._tier if self._tier is not None and self._tier.uploaded(number) else None
            if tier is not None:
                tier.forget_manifest(number)  # first: no machine trusts the segment in the bucket any more
            removed = 0
            # Data first, index last: an index left alone by a crash is removed by recovery.
            for name in (
                segment_name(number, False),
                segment_name(number, True),
                remote_name(number),
                index_name(number),
            ):
                try:
                    os.unlink(name, dir_fd=dir_fd)
                    removed += 1
                except FileNotFoundError:
                    pass
            if tier is not None:
                tier.forget_objects(number)  # a crash before this leaves orphans: gc_tiering() removes them
            if not removed:
                logger.error("File not found at path: %s. Was it already deleted?", file_path)
                return
            self._state.bump_epoch()
            if self.fsync:
                fsync_dir(dir_fd)

    def segments(self) -> list[int]:
        """Numbers of every segment present, oldest first (the last is the mutable one)."""
        self._reopen_if_closed()
        numbers = {
            parsed[0] for parsed in map(parse_name, list_dir(self._dir_fd)) if parsed and parsed[1] != INDEX_SUFFIX
        }
        return sorted(numbers)

    def mutable_segment(self) -> int:
        """Number of the mutable segment."""
        self._reopen_if_closed()
        return self._readers.mutable_view().segment

    def iter_records(self) -> Iterator[BlobRecord]:
        """Every committed blob of the store from the record indexes alone, in disk order.

        A segment written without an index appears as one record covering all of it.
        """
        self._reopen_if_closed()
        for number in self.segments():
            for record in self._segment_records(number):
                if record.rtype == REC_BLOB:
                    yield BlobRecord(number, record.offset, record.end, record.checksum)
                elif record.rtype == REC_SEAL:
                    break

    def iter_log(self, after: tuple[int, int] = (0, 0)) -> Iterator[BlobRecord]:
        """The log records (:meth:`put_log`) committed at or after position ``after``, a pair
        (segment, offset), in commit order: those of segment ``after[0]`` that start at or
        after ``after[1]``, then those of every later segment. Reads the record indexes only. An
        ``after`` that is not a pair of ints is a LogPositionTypeError (a TypeError)."""
        if (
            not isinstance(after, tuple)
            or len(after) != 2
            or any(isinstance(value, bool) or not isinstance(value, int) for value in after)
        ):
            raise LogPositionTypeError(f"iter_log(after=) takes a pair of ints (segment, offset), not {after!r}")
        segment, offset = after
        self._reopen_if_closed()
        for number in self.segments():
            if number < segment:
                continue
            for record in self._segment_records(number):
                if (
                    record.rtype == REC_BLOB
                    and record.flags & FLAG_LOG
                    and (number > segment or record.offset >= offset)
                ):
                    yield BlobRecord(number, record.offset, record.end, record.checksum)

    def _segment_records(self, number: int) -> list[Record]:
        """The committed records of segment ``number`` ([] when it was deleted meanwhile)."""
        view = self._readers.mutable_view()
        limit = view.index_bytes if number == view.segment else None
        try:
            return index_records(self._dir_fd, number, limit)
        except OSError:
            return []

    def iter_locations(self) -> Iterator[DataLocation]:
        """Every committed blob's location, in disk order: rebuilds a lost key-value store."""
        paths: dict[int, str] = {}
        for record in self.iter_records():
            path = paths.get(record.segment)
            if path is None:
                path = paths[record.segment] = self.segment_path(record.segment, as_issued=True)
            yield DataLocation(path, record.start_offset, record.end_offset)

    def segment_path(self, number: int, *, as_issued: bool = False) -> str:
        """The path string of segment ``number`` as locations name it: with the suffix of its file
        now (``.dat`` or ``.dat.zst``), or with ``as_issued`` the one it was written with, the path
        put() gave its blobs, so listed locations compare equal to stored ones even after the
        segment was recompressed. Either resolves: a location finds its segment by number.
        A number that is not an int is a TypeError; one outside 0..2**32-1 (no segment file can
        have it) an InvalidLocationError."""
        if isinstance(number, bool) or not isinstance(number, int):
            raise TypeError(f"segment_path() takes a segment number (an int), not {type(number).__name__}")
        if not 0 <= number <= MAX_SEGMENT_NUMBER:
            raise InvalidLocationError(f"segment numbers are 0..{MAX_SEGMENT_NUMBER}, got {number}")
        kind = written_kind(self._dir_fd, number) if as_issued else None
        if kind is None:
            kind = self._segment_kind(number)
        return str(self.datadir / segment_name(number, kind == KIND_ZSTD))

    def _segment_kind(self, number: int) -> int:
        """The kind of segment ``number``'s data file now (KIND_RAW when no .dat.zst exists; with
        tiering, the uploaded file's kind when neither is on the local disk)."""
        if os.path.exists(os.path.join(self._abs_dir, segment_name(number, True))):
            return KIND_ZSTD
        if self._tier is not None and not os.path.exists(os.path.join(self._abs_dir, segment_name(number, False))):
            manifest = self._tier.manifest(number)
            if manifest is not None and manifest.compressed:
                return KIND_ZSTD
        return KIND_RAW

    def verify(self, full: bool = True, progress: Callable[[int, int], None] | None = None) -> VerifyReport:
        """Check the store; returns a report listing each problem with file and offset.

        Always: every index against its data file (header, record checksums,
        contiguity, sizes, SEAL records). With ``full`` (the default) also every blob
        against its XXH3-64 checksum and every Zstandard frame (decoded, so its own
        checksum is checked) and every seek table. ``progress(done, total)`` is called
        after each segment. Never raises for what it finds; takes no lock: a segment
        sealed, rewritten or deleted while it is checked is checked again (or skipped when
        gone), so each problem reported was seen in one unchanging file.
        """
        self._reopen_if_closed()
        settle = wait_a_grace_period if self.readonly else self._wait_for_a_delete_in_progress
        return verify_store(self._dir_fd, self._dir_str, self._readers.mutable_view, progress, full, settle)

    def _wait_for_a_delete_in_progress(self) -> None:
        """Return once no writer holds the write lock taken before this call: delete_file
        removes a segment's data file and index under one hold of it, so a delete in progress has
        then finished. Bounded (a lock held for long, or held by this thread's own read_lock()
        with a writer waiting, is waited for at most DELETE_SETTLE_SECONDS, then a grace period)."""
        try:
            with self._lock.read(DELETE_SETTLE_SECONDS):
                return
        except FlatFileDbLockTimeoutError:
            wait_a_grace_period()

    # -- compact locations ----------------------------------------------------------

    def pack_location(self, location: DataLocation) -> bytes:
        """A 20-byte form of a location, independent of the datadir's path (FORMAT.md "Packed location")."""
        if not isinstance(location, tuple) or len(location) != 3:
            raise TypeError(f"expected a DataLocation, got {location!r}")
        self._reopen_if_closed()
        number = self._readers.segment_number_of(location[0])
        start = as_offset(location[1], "start_offset", location[0])
        end = as_offset(location[2], "end_offset", location[0])
        if start > end or end >= 2**64:
            raise InvalidLocationError(f"{location[0]}: cannot pack offsets {start}..{end}")
        return pack_location_parts(number, start, end)

    def unpack_location(self, packed: bytes | bytearray | memoryview) -> DataLocation:
        """Inverse of :meth:`pack_location`, naming the segment under this datadir."""
        try:
            number, start, end = unpack_location_parts(packed)
        except ValueError as exc:
            raise InvalidLocationError(str(exc)) from None
        return DataLocation(self.segment_path(number), start, end)

    def read_lock(self) -> ContextManager[None]:
        """Context manager: hold the store's read lock (excludes writers and maintenance).

        Not on a read-only instance (FlatFileDbReadOnlyError): taking the lock needs the lock
        file, which a read-only open neither creates nor writes.
        """
        self._refuse_write("read_lock")
        self._reopen_if_closed()
        return self._read_locked()

    @contextlib.contextmanager
    def _read_locked(self) -> Iterator[None]:
        # A generator of the store's: it keeps the store (and so its lock) alive while held,
        # even when the caller keeps no reference to it (``with FlatFileDb(...).read_lock():``).
        with self._lock.read(self.lock_timeout):
            yield

    def frame_cache_info(self) -> dict[str, int]:
        """Counters of the decompressed-frame cache: hits, misses (= frames decompressed), bytes held."""
        cache = self._frame_cache
        return {"hits": cache.hits, "misses": cache.misses, "bytes": cache.size_bytes, "max_bytes": cache.max_bytes}


__all__ = ["Catalog"]
