"""FlatFileDb: puts append to the one mutable segment; gets read any committed slice.

Layers: this module decides *when* (locking, rotation, recovery, caching); segment.py
and index.py decide *how bytes look*. Hot paths are written for few syscalls and few
Python calls: a put is lockf, pwrite(data), pwrite(index), lockf; a get of a
cached segment is one pread.
"""

from __future__ import annotations

import errno
import functools
import logging
import operator
import os
import threading
from pathlib import Path
from types import TracebackType
from typing import Any, Iterable, Iterator

from .errors import FlatFileDbNotFoundError, FlatFileDbUnsafeAccessError, InvalidLocationError
from .index import (
    HEADER_BYTES,
    KIND_RAW,
    KIND_ZSTD,
    RECORD_BYTES,
    blob_checksum,
    encode_blob,
    encode_seal,
)
from .locking import ProcessLock, process_lock_for
from .naming import TEMP_PREFIX, index_name, parse_name, parse_segment_name, segment_name
from .segment import (
    blob_records,
    create_segment,
    fsync_dir,
    open_data_file,
    pwrite_all,
    pwritev_all,
    recover_segment,
)
from .state import W_DIRTY, W_DISK_BYTES, W_DURABLE_END, W_END, W_EPOCH, W_INDEX_BYTES, W_SEGMENT, SharedState
from .verify import VerifyReport, verify_store
from .types import BlobRecord, DataLocation, Slice, pack_location_parts, unpack_location_parts

logger = logging.getLogger("conduit_flat_file_db")

DEFAULT_MAX_DAT_FILE_SIZE = 128 * 2**20
MAX_CACHED_PATHS = 4096
_BYTES_TYPES = (bytes, bytearray, memoryview)
_CLOSED_WORDS = (-1,) * 16  # stands in for the state page while closed: every epoch check fails


class _SegmentReader:
    """An open segment for reading; the descriptor closes when the last user drops it."""

    __slots__ = ("number", "fd", "limit", "mutable", "__weakref__")

    def __init__(self, number: int, fd: int, limit: int, mutable: bool) -> None:
        self.number = number
        self.fd = fd
        self.limit = limit  # bytes [0, limit) are committed
        self.mutable = mutable

    def __del__(self) -> None:
        # Readers are shared between threads without a lock; closing only when no
        # thread holds a reference means a descriptor number is never reused under
        # a pread that is about to run.
        try:
            os.close(self.fd)
        except OSError:
            pass


class FlatFileDb:
    """An append-only store of blobs in rotating segment files.

    Args:
        datadir: directory of the store (created if missing).
        mutable_file_lock_path: the lock file shared by every process using the store.
        fsync: when True, ``put`` returns only after the blob and its index record
            are on stable storage (see GUARANTEES.md).
        use_compression: compress new segments (seekable Zstandard).
        lock_timeout: seconds to wait for the write lock before raising
            FlatFileDbLockTimeoutError; None waits for ever.

    Thread and process safety: every method may be called from any thread; many
    processes may open the same datadir with the same lock path.
    """

    def __init__(
        self,
        datadir: Path | str,
        mutable_file_lock_path: Path | str,
        fsync: bool = False,
        use_compression: bool = False,
        *,
        lock_timeout: float | None = None,
    ) -> None:
        if not isinstance(datadir, (str, os.PathLike)) or not isinstance(mutable_file_lock_path, (str, os.PathLike)):
            raise TypeError("datadir and mutable_file_lock_path must be paths (str or os.PathLike)")
        if lock_timeout is not None and lock_timeout < 0:
            raise ValueError(f"lock_timeout must be >= 0 or None, got {lock_timeout}")
        self.datadir = Path(datadir)
        self.mutable_file_lock_path = Path(mutable_file_lock_path)
        self.fsync = bool(fsync)
        self.use_compression = bool(use_compression)
        self.lock_timeout = lock_timeout
        self.MAX_DAT_FILE_SIZE = DEFAULT_MAX_DAT_FILE_SIZE  # pylint: disable=invalid-name  # reference API
        self._dir_str = str(self.datadir)
        self._guard = threading.Lock()  # opening/closing, never on a hot path
        self._closed = True
        self._words: Any = _CLOSED_WORDS
        self._epoch = -2
        self._open()

    # -- lifecycle ------------------------------------------------------------------

    def _open(self) -> None:
        with self._guard:
            if not self._closed:
                return
            os.makedirs(self.datadir, exist_ok=True)
            self._dir_fd = os.open(self.datadir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            st = os.fstat(self._dir_fd)
            self._dir_id = (st.st_dev, st.st_ino)
            self._known_dirs: set[str] = {self._dir_str}
            self._lock: ProcessLock = process_lock_for(str(self.mutable_file_lock_path))
            self._readers: dict[Any, _SegmentReader] = {}
            self._readers_by_number: dict[int, _SegmentReader] = {}
            self._w_segment = -1
            self._w_data_fd = -1
            self._w_index_fd = -1
            self._w_path = ""
            self._lock.acquire_write(self.lock_timeout)
            try:
                self._state = SharedState(self._dir_fd)
                self._recover_on_open()
            finally:
                self._lock.release_write()
            self._words = self._state.words
            self._epoch = self._words[W_EPOCH]
            self._closed = False

    def _recover_on_open(self) -> None:
        """Find the newest segment, cut its torn tail, publish the state page (write lock held)."""
        numbers: set[int] = set()
        for name in os.listdir(self._dir_fd):
            if name.startswith(TEMP_PREFIX):
                logger.warning("%s: removing scratch file %s left by an interrupted operation",
                               self._dir_str, name)
                os.unlink(name, dir_fd=self._dir_fd)
                continue
            parsed = parse_name(name)
            if parsed is not None:
                numbers.add(parsed[0])
        state = self._state
        words = state.words
        default_kind = KIND_ZSTD if self.use_compression else KIND_RAW
        if not numbers:
            create_segment(self._dir_fd, 0, default_kind)
            numbers.add(0)
        newest = max(numbers)
        # After a power loss (state page missing, or written before the last boot)
        # bytes the page cache had accepted may be gone: check blob checksums past the
        # last point known to be on disk.
        check_from: int | None = None
        if state.fresh or not state.same_boot():
            same_segment = not state.fresh and words[W_SEGMENT] == newest
            check_from = words[W_DURABLE_END] if same_segment else 0
        tail = recover_segment(self._dir_fd, newest, default_kind, check_from)
        if tail.sealed:
            newest += 1
            create_segment(self._dir_fd, newest, default_kind)
            tail = tail._replace(kind=default_kind, end=0, index_bytes=HEADER_BYTES, disk_bytes=0)
        if check_from is not None or state.fresh:
            words[W_DURABLE_END] = tail.end if check_from is not None else 0
        state.initialise()
        state.publish(newest, tail.end, tail.index_bytes, tail.disk_bytes, tail.kind)
        words[W_DIRTY] = 0

    def close(self) -> None:
        """Release descriptors and the state page. The store reopens itself on next use."""
        with self._guard:
            if self._closed:
                return
            self._closed = True
            self._words = _CLOSED_WORDS
            self._epoch = -2
            self._close_writer()
            self._readers = {}
            self._readers_by_number = {}
            self._state.close()
            os.close(self._dir_fd)

    def _reopen_if_closed(self) -> None:
        if self._closed:
            self._open()

    def __enter__(self) -> FlatFileDb:
        self._reopen_if_closed()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FlatFileDb({self._dir_str!r}, compression={self.use_compression}, fsync={self.fsync})"

    # -- writer ---------------------------------------------------------------------

    def _close_writer(self) -> None:
        for fd in (self._w_data_fd, self._w_index_fd):
            if fd >= 0:
                os.close(fd)
        self._w_data_fd = self._w_index_fd = -1
        self._w_segment = -1

    def _begin_write(self) -> int:
        """Sync this instance with the mutable segment (write lock held); returns its end."""
        words = self._words
        if words[W_DIRTY] or words[W_SEGMENT] != self._w_segment:
            self._sync_writer()
        end: int = words[W_END]
        if end >= self.MAX_DAT_FILE_SIZE and end:
            self._rotate_locked()
            end = 0
        return end

    def _sync_writer(self) -> None:
        """Recover a dead writer's tail and (re)open the mutable segment if needed (write lock held)."""
        words = self._words
        if words[W_DIRTY]:
            # A writer died between its first write and its publish: its bytes past
            # the last committed record are cut now, before anything is appended.
            logger.warning("%s: a writer stopped mid-append; recovering the mutable segment", self._dir_str)
            tail = recover_segment(self._dir_fd, words[W_SEGMENT], KIND_RAW, None)
            self._state.publish(words[W_SEGMENT], tail.end, tail.index_bytes, tail.disk_bytes, tail.kind)
            words[W_DIRTY] = 0
        number = words[W_SEGMENT]
        if number != self._w_segment or self._w_data_fd < 0:
            self._close_writer()
            self._w_data_fd, kind = open_data_file(self._dir_fd, number, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
            self._w_index_fd = os.open(index_name(number), os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW,
                                       dir_fd=self._dir_fd)
            self._w_segment = number
            self._w_path = str(self.datadir / segment_name(number, kind == KIND_ZSTD))

    def _rotate_locked(self) -> None:
        """Seal the mutable segment and start the next one (write lock held, writer synced)."""
        words = self._words
        old = self._w_segment
        end = words[W_END]
        index_bytes = words[W_INDEX_BYTES]
        os.fsync(self._w_data_fd)
        blobs = (index_bytes - HEADER_BYTES) // RECORD_BYTES
        pwrite_all(self._w_index_fd, encode_seal(end, blobs, end), index_bytes)
        os.fsync(self._w_index_fd)
        new = old + 1
        kind = KIND_RAW  # compressed segments: a later version
        create_segment(self._dir_fd, new, kind)
        words[W_DURABLE_END] = 0
        self._state.publish(new, 0, HEADER_BYTES, 0, kind)
        self._sync_writer()
        logger.debug("%s: sealed segment %d, mutable segment is now %d", self._dir_str, old, new)

    def _append_locked(self, data: Any, buffers: list[Any] | None, start: int, end: int, records: bytes) -> None:
        """Write data at ``start``, then its index records, fsync as configured, publish.

        The commit protocol (FORMAT.md "Commit"): dirty flag up, data, [fdatasync],
        index records, [fdatasync], publish the new end, dirty flag down. A failure
        cuts both files back so nothing partial stays behind.
        """
        words = self._words
        index_bytes = words[W_INDEX_BYTES]
        words[W_DIRTY] = 1
        try:
            if buffers is None:
                written = os.pwrite(self._w_data_fd, data, start)
                if written != end - start:  # short write: finish it
                    pwrite_all(self._w_data_fd, memoryview(data).cast("B")[written:], start + written)
            else:
                pwritev_all(self._w_data_fd, buffers, start, end - start)
            if self.fsync:
                os.fdatasync(self._w_data_fd)  # data first: a durable record never points at lost bytes
            written = os.pwrite(self._w_index_fd, records, index_bytes)
            if written != len(records):
                pwrite_all(self._w_index_fd, memoryview(records)[written:], index_bytes + written)
            if self.fsync:
                os.fdatasync(self._w_index_fd)
                words[W_DURABLE_END] = end
        except BaseException:
            try:
                os.ftruncate(self._w_data_fd, start)
                os.ftruncate(self._w_index_fd, index_bytes)
            except OSError:
                logger.exception("%s: could not cut a failed append; the next writer will", self._dir_str)
                raise
            words[W_DIRTY] = 0
            raise
        # Same segment, so no seqlock round: readers only need W_END, one aligned word.
        words[W_INDEX_BYTES] = index_bytes + len(records)
        words[W_DISK_BYTES] = end
        words[W_END] = end
        words[W_DIRTY] = 0

    def put(self, data: bytes) -> DataLocation:
        """Append one blob and return its location.

        Raises TypeError for anything but bytes-like data; FlatFileDbLockTimeoutError
        when ``lock_timeout`` passes first. Nothing is written on either error.
        """
        if type(data) is not bytes:  # pylint: disable=unidiomatic-typecheck  # fast path for the common case
            data = _as_bytes_like(data)
        checksum = blob_checksum(data)
        if self._closed:
            self._open()
        lock = self._lock
        lock.acquire_write(self.lock_timeout)
        try:
            start = self._begin_write()
            end = start + len(data)
            self._append_locked(data, None, start, end, encode_blob(start, end - start, checksum))
            return _new_location((self._w_path, start, end))
        finally:
            lock.release_write()

    def put_many(self, datas: Iterable[bytes]) -> list[DataLocation]:
        """Append many blobs under one lock acquisition; returns their locations in order.

        The data of each run of blobs that lands in one segment is written with one
        ``pwritev`` and their index records with one ``pwrite``. A crash may keep a
        prefix of the batch (whole blobs only), never a torn blob.
        """
        items = [d if type(d) is bytes else _as_bytes_like(d) for d in datas]  # pylint: disable=unidiomatic-typecheck
        if not items:
            return []
        checksums = [blob_checksum(d) for d in items]
        if self._closed:
            self._open()
        locations: list[DataLocation] = []
        lock = self._lock
        lock.acquire_write(self.lock_timeout)
        try:
            index = 0
            while index < len(items):
                index = self._put_run_locked(items, checksums, index, locations)
        finally:
            lock.release_write()
        return locations

    def _put_run_locked(self, items: list[Any], checksums: list[int], index: int,
                        locations: list[DataLocation]) -> int:
        """Write items[index:] up to the rotation point as one run; returns the next index."""
        start = pos = self._begin_write()
        limit = self.MAX_DAT_FILE_SIZE
        records = []
        first = index
        path = self._w_path
        while index < len(items) and (pos < limit or pos == start):
            size = len(items[index])
            records.append(encode_blob(pos, size, checksums[index]))
            locations.append(_new_location((path, pos, pos + size)))
            pos += size
            index += 1
        try:
            self._append_locked(None, items[first:index], start, pos, b"".join(records))
        except BaseException:
            del locations[first - index:]
            raise
        return index

    def sync(self) -> None:
        """Make every acknowledged blob durable now (for ``fsync=False`` stores).

        One ``fdatasync`` of the mutable segment's data and index; afterwards a power
        loss cannot cost any blob acknowledged before this call.
        """
        self._reopen_if_closed()
        with self._lock.write(self.lock_timeout):
            self._sync_writer()
            os.fdatasync(self._w_data_fd)
            os.fdatasync(self._w_index_fd)
            self._words[W_DURABLE_END] = self._words[W_END]

    def rotate(self) -> tuple[Path, int]:
        """Seal the mutable segment now and start a new one; returns (new path, new number).

        A no-op when the mutable segment is empty (it stays mutable).
        """
        return self._maybe_get_new_mutable_file(force_new_file=True)

    def _maybe_get_new_mutable_file(self, force_new_file: bool = False) -> tuple[Path, int]:
        """Compatibility alias of :meth:`rotate` (rotates only when forced or full)."""
        self._reopen_if_closed()
        with self._lock.write(self.lock_timeout):
            if self._begin_write() and force_new_file:
                self._rotate_locked()
            return Path(self._w_path), self._w_segment

    # -- reader ---------------------------------------------------------------------

    def get(self, data_location: DataLocation, slice: Slice | None = None,  # pylint: disable=redefined-builtin
            lock_free_access: bool = False) -> bytes:
        """Read a blob, or a slice of it, from any committed location.

        Reads take no lock (committed bytes never change); ``lock_free_access`` is
        accepted for compatibility and changes nothing. Use :meth:`read_lock` to
        exclude maintenance while reading.

        Raises:
            FlatFileDbNotFoundError: the segment was deleted (a FileNotFoundError).
            InvalidLocationError: not a segment of this store, offsets past the
                committed end, bad slice (a ValueError).
            TypeError: not a location or slice.
        """
        try:
            file_path, start, end = data_location
            reader = self._readers[file_path]
        except (KeyError, TypeError, ValueError):
            file_path, start, end, reader = self._resolve(data_location)
        if self._words[W_EPOCH] != self._epoch:
            file_path, start, end, reader = self._resolve(data_location)
        if slice is not None:
            start, end = _apply_slice(file_path, start, end, slice)
        try:
            if not 0 <= start <= end <= reader.limit:
                start, end = self._check_range(reader, file_path, start, end)
            size = end - start
            data = os.pread(reader.fd, size, start)
        except TypeError:
            start, end = self._check_range(reader, file_path, start, end)  # raises a clear TypeError
            size = end - start
            data = os.pread(reader.fd, size, start)
        if len(data) != size:
            raise FlatFileDbNotFoundError(
                errno.ENOENT, f"segment {reader.number} is shorter than its committed size "
                f"(read {len(data)} of {size} bytes at offset {start}); was it replaced?", file_path)
        return data

    def _resolve(self, location: Any) -> tuple[Any, int, int, _SegmentReader]:
        """Slow path of get: validate a location and find (or open) its segment."""
        self._reopen_if_closed()
        if self._words[W_EPOCH] != self._epoch:
            self._epoch = self._words[W_EPOCH]
            self._readers = {}
            self._readers_by_number = {}
        if not isinstance(location, tuple) or len(location) != 3:
            raise TypeError(f"expected a DataLocation(file_path, start_offset, end_offset), got {location!r}")
        file_path, start, end = location
        start, end = _as_offset(start, "start_offset"), _as_offset(end, "end_offset")
        number = self._segment_number_of(file_path)
        reader = self._readers_by_number.get(number)
        if reader is None:
            reader = self._open_reader(number)
        if isinstance(file_path, str):
            if len(self._readers) >= MAX_CACHED_PATHS:
                self._readers = {}
            self._readers[file_path] = reader
        return file_path, start, end, reader

    def _segment_number_of(self, file_path: Any) -> int:
        """The segment number a path names, refusing anything that is not a segment of this datadir."""
        try:
            path = os.fspath(file_path)
        except TypeError:
            raise TypeError(f"file_path must be str or os.PathLike, not {type(file_path).__name__}") from None
        if not isinstance(path, str):
            raise TypeError("file_path must be a str path, not bytes")
        dirname, base = os.path.split(path)
        number = parse_segment_name(base)
        if number is None:
            raise InvalidLocationError(
                f"{path!r} is not a segment file (names are data_NNNNNNNN.dat or data_NNNNNNNN.dat.zst)")
        if dirname not in self._known_dirs:
            try:
                st = os.stat(dirname or ".")
            except OSError:
                st = None
            if st is None or (st.st_dev, st.st_ino) != self._dir_id:
                raise InvalidLocationError(f"{path!r} is not in this store's datadir {self._dir_str!r}")
            if len(self._known_dirs) < MAX_CACHED_PATHS:
                self._known_dirs.add(dirname)
        return number

    def _open_reader(self, number: int) -> _SegmentReader:
        fd, kind = open_data_file(self._dir_fd, number)
        if kind != KIND_RAW:
            os.close(fd)
            raise InvalidLocationError(f"segment {number} is compressed; this version reads raw segments only")
        mutable_number = self._state.read_mutable().segment
        if number >= mutable_number:
            reader = _SegmentReader(number, fd, 0, True)
            self._refresh_limit(reader)
        else:
            reader = _SegmentReader(number, fd, os.fstat(fd).st_size, False)
        self._readers_by_number[number] = reader
        return reader

    def _refresh_limit(self, reader: _SegmentReader) -> None:
        view = self._state.read_mutable()
        if view.segment == reader.number:
            reader.limit = view.end
        elif view.segment > reader.number:
            # Sealed since we opened it: sealing cut the file to its committed size.
            reader.limit = os.fstat(reader.fd).st_size
            reader.mutable = False

    def _check_range(self, reader: _SegmentReader, file_path: Any, start: Any, end: Any) -> tuple[int, int]:
        start, end = _as_offset(start, "start_offset"), _as_offset(end, "end_offset")
        if start > end:
            raise InvalidLocationError(f"{file_path}: start_offset {start} > end_offset {end}")
        if end > reader.limit and reader.mutable:
            self._refresh_limit(reader)
        if end > reader.limit:
            raise InvalidLocationError(
                f"{file_path}: end_offset {end} is past the committed end of segment {reader.number} "
                f"({reader.limit} bytes)")
        return start, end

    def read_lock(self) -> Any:
        """Context manager: hold the store's read lock (excludes writers and maintenance)."""
        self._reopen_if_closed()
        return self._lock.read(self.lock_timeout)

    # -- segments -------------------------------------------------------------------

    def delete_file(self, file_path: Path | str) -> None:
        """Delete one sealed segment (data and index), and every blob in it.

        Raises FlatFileDbUnsafeAccessError for the mutable segment and
        InvalidLocationError for anything that is not a segment file of this datadir
        (other directories, symlinks, other names). Deleting a segment that is
        already gone logs an error and returns, as the original engine did.
        """
        number = self._segment_number_of(file_path)
        self._reopen_if_closed()
        dir_fd = self._dir_fd
        with self._lock.write(self.lock_timeout):
            self._sync_writer()
            if number >= self._w_segment:
                raise FlatFileDbUnsafeAccessError(
                    f"Deleting the mutable file is not allowed. Ever. ({file_path}; seal it first with rotate())")
            names = [segment_name(number, False), segment_name(number, True), index_name(number)]
            for name in names[:2]:
                try:
                    if os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode & 0o170000 == 0o120000:
                        raise InvalidLocationError(f"{name} in {self._dir_str} is a symlink; refused")
                except FileNotFoundError:
                    pass
            removed = 0
            for name in names:
                try:
                    os.unlink(name, dir_fd=dir_fd)
                    removed += 1
                except FileNotFoundError:
                    pass
            if not removed:
                logger.error("File not found at path: %s. Was it already deleted?", file_path)
                return
            self._state.bump_epoch()
            if self.fsync:
                fsync_dir(dir_fd)
        self._readers_by_number.pop(number, None)

    def segments(self) -> list[int]:
        """Numbers of every segment present, oldest first (the last is the mutable one)."""
        self._reopen_if_closed()
        numbers = {n for n in (parse_segment_name(name) for name in os.listdir(self._dir_fd)) if n is not None}
        return sorted(numbers)

    def mutable_segment(self) -> int:
        """Number of the mutable segment."""
        self._reopen_if_closed()
        return self._state.read_mutable().segment

    def iter_records(self) -> Iterator[BlobRecord]:
        """Every committed blob of the store from the record indexes alone, in disk order."""
        self._reopen_if_closed()
        for number in self.segments():
            view = self._state.read_mutable()
            for record in blob_records(self._dir_fd, number):
                if number == view.segment and record.a + record.b > view.end:
                    break
                yield BlobRecord(number, record.a, record.a + record.b, record.c)

    def iter_locations(self) -> Iterator[DataLocation]:
        """Every committed blob's location, in disk order: rebuilds a lost key-value store."""
        paths: dict[int, str] = {}
        for record in self.iter_records():
            path = paths.get(record.segment)
            if path is None:
                path = paths[record.segment] = self.segment_path(record.segment)
            yield DataLocation(path, record.start_offset, record.end_offset)

    def segment_path(self, number: int) -> str:
        """The path string of segment ``number`` as locations name it (existing suffix preferred)."""
        compressed = not os.path.exists(os.path.join(self._dir_str, segment_name(number, False))) and \
            os.path.exists(os.path.join(self._dir_str, segment_name(number, True)))
        return str(self.datadir / segment_name(number, compressed))

    def verify(self) -> VerifyReport:
        """Check every committed blob against its checksum and every index against its
        data file; returns a report (never raises for what it finds). Takes no lock."""
        self._reopen_if_closed()
        return verify_store(self._dir_fd, self._dir_str, self._state.read_mutable())

    # -- compact locations ----------------------------------------------------------

    def pack_location(self, location: DataLocation) -> bytes:
        """A 20-byte form of a location, independent of the datadir's path (see FORMAT.md)."""
        if not isinstance(location, tuple) or len(location) != 3:
            raise TypeError(f"expected a DataLocation, got {location!r}")
        number = self._segment_number_of(location[0])
        return pack_location_parts(number, _as_offset(location[1], "start_offset"),
                                   _as_offset(location[2], "end_offset"))

    def unpack_location(self, packed: bytes) -> DataLocation:
        """Inverse of :meth:`pack_location`, naming the segment under this datadir."""
        number, start, end = unpack_location_parts(packed)
        return DataLocation(self.segment_path(number), start, end)


_new_location = functools.partial(tuple.__new__, DataLocation)  # skips NamedTuple.__new__'s Python frame


def _as_bytes_like(data: Any) -> Any:
    if isinstance(data, (bytearray, bytes)):
        return data
    if isinstance(data, memoryview):
        if not data.contiguous:
            raise ValueError("put() needs a contiguous memoryview")
        return data.cast("B") if data.format != "B" or data.ndim != 1 else data
    raise TypeError(f"put() takes bytes, bytearray or memoryview, not {type(data).__name__}")


def _as_offset(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not bool")
    try:
        result = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, not {type(value).__name__}") from None
    if result < 0:
        raise InvalidLocationError(f"{name} must be >= 0, got {result}")
    return result


def _apply_slice(file_path: Any, start: Any, end: Any, slice_: Any) -> tuple[int, int]:
    """Turn a blob-relative Slice into absolute segment offsets, refusing bad slices."""
    if not isinstance(slice_, tuple) or len(slice_) != 2:
        raise TypeError(f"slice must be a Slice(start_offset, end_offset), got {slice_!r}")
    start, end = _as_offset(start, "start_offset"), _as_offset(end, "end_offset")
    s_start, s_end = _as_offset(slice_[0], "slice start_offset"), _as_offset(slice_[1], "slice end_offset")
    length = end - start
    if s_end == 0:
        s_end = length
    if s_start > s_end or s_end > length:
        raise InvalidLocationError(
            f"{file_path}: slice {s_start}..{s_end} is not inside the blob at {start}..{end} ({length} bytes)")
    return start + s_start, start + s_end
