"""The store engine: puts append to the one mutable segment; gets read any committed slice.

``Store`` is the engine; ``FlatFileDb`` (maintenance.py) adds the maintenance operations.

This module decides *when* (locking, rotation, compression, caching); writer.py,
reader.py and segment.py decide *how*. Hot paths are written for few syscalls and
few Python calls: a raw put is lockf, pwrite(data), pwrite(index), lockf; a get of
an open raw segment is one pread.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import itertools
import operator
import logging
import os
import stat
import sys
import threading
import warnings
import weakref
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, ContextManager, Iterable, Iterator, TypeVar

from .errors import FlatFileDbReadOnlyError, FlatFileDbUnsafeAccessError, InvalidLocationError
from .index import (
    FLAG_STORED,
    FLAG_UNCHECKED,
    KIND_RAW,
    KIND_ZSTD,
    REC_BLOB,
    REC_FRAME,
    REC_SEAL,
    blob_checksum,
    encode_blob,
)
from .arguments import as_bytes_like, bytes_like_ok, check_lock_path, check_stream_item, default_lock_path
from .locking import ProcessLock, ReadOnlyLock, process_lock_for, release_process_lock
from .naming import index_name, parse_segment_name, segment_name
from .readonly import ReadOnlyState, open_datadir
from .reader import MAP_READ_BYTES, BlobFile, ReaderCache, SegmentReader, apply_slice, as_offset, fast_slice
from .rewrite import rewrite_segment
from .seekable import (
    DEFAULT_LEVEL,
    DEFAULT_MIN_SAVING,
    MAX_FRAME_DECOMPRESSED_BYTES,
    FrameCache,
    Framing,
    check_min_saving,
    compress_frames,
    stored_frame,
)
from .segment import fsync_dir, index_records, written_kind
from .state import W_DIRTY, W_END, W_EPOCH, W_SEGMENT, SharedState
from .types import BlobRecord, Buffer, DataLocation, Slice, pack_location_parts, unpack_location_parts
from .streams import LazyOpener, examine_for_adoption, read_head, write_aside
from .verify import VerifyReport, verify_store
from .writer import SealSyncer, SegmentWriter

logger = logging.getLogger("conduit_flat_file_db")

DEFAULT_MAX_DAT_FILE_SIZE = 128 * 2**20
DEFAULT_FRAME_BYTES = 16 * 2**10  # README "Frame size": ratio vs slice latency, measured
DEFAULT_FRAME_CACHE_BYTES = 64 * 2**20
MAX_LOCK_TIMEOUT_SECONDS = 365 * 86400.0  # longer, and the lock's deadline arithmetic overflows: use None
# Puts and batches smaller than this go into the mutable segment as stored frames:
# compressing a few KiB alone costs ~15 us and gains little; sealing compresses them.
STORED_BELOW_BYTES = 8 * 2**10
_CLOSED_WORDS = (-1,) * 32  # stands in for the state page while closed: every epoch check fails
_new_location = functools.partial(tuple.__new__, DataLocation)  # skips NamedTuple.__new__'s Python frame
_DISK_ORDER = operator.itemgetter(0, 1)
_PATH = operator.itemgetter(0)
_START = operator.itemgetter(1)
_END = operator.itemgetter(2)
_S = TypeVar("_S", bound="Store")
SealHook = Callable[[Any, list[int]], None]
"""Called as ``hook(store, numbers)`` after segments are sealed, outside the write lock, so a
policy above the engine (compress when it pays) decides what becomes of them. A plain function
taking the store, rather than a bound method: a bound method held by the store is a reference
cycle that would keep a dropped store's descriptors open until the cyclic collector runs."""


def _disk_order(paths: tuple[Any, ...], starts: tuple[Any, ...],
                by_path: dict[Any, SegmentReader]) -> list[int] | None:
    """Indexes sorted by (segment, offset), or None when the keys do not compare (bad input).

    Segment names are zero-padded, so path order is segment order. When the segments'
    sizes fit one machine word together (the usual case), one sort of small int keys
    does it; else two stable sorts. The order only steers the reads: an offset past its
    segment's size may land out of place, never read the wrong bytes.
    """
    count = len(starts)
    try:
        ranks = sorted(set(paths))
        limits = [reader.limit if (reader := by_path.get(path)) is not None else -1 for path in ranks]
        span = (max(limits) if min(limits) >= 0 else max(starts)) + 1
        if 0 < span and len(ranks) * span < 1 << 30:
            base = {path: rank * span for rank, path in enumerate(ranks)}
            keys = list(map(operator.add, map(base.__getitem__, paths), starts))
            return sorted(range(count), key=keys.__getitem__)
        order = sorted(range(count), key=starts.__getitem__)
        order.sort(key=paths.__getitem__)
        return order
    except TypeError:  # paths of mixed types, offsets that are not numbers
        return None


class Store:  # pylint: disable=too-many-instance-attributes  # configuration + two caches
    """The engine: an append-only store of blobs in rotating segment files.

    Its arguments are documented on the public class, :class:`~conduit_flat_file_db.FlatFileDb`
    (flat_file_db.py), which adds the maintenance operations and the AUTO compression policy;
    ``seal_hook`` (see SealHook) is how that policy is handed down here.
    """

    _lock: ProcessLock | ReadOnlyLock  # ReadOnlyLock on a read-only instance
    _ro_state: ReadOnlyState  # a read-only instance's view of the committed extent

    def __init__(  # pylint: disable=too-many-arguments
        self,
        datadir: Path | str,
        mutable_file_lock_path: Path | str | None = None,
        fsync: bool = False,
        use_compression: bool = False,
        *,
        lock_timeout: float | None = None,
        max_file_size: int = DEFAULT_MAX_DAT_FILE_SIZE,
        compression_level: int = DEFAULT_LEVEL,
        frame_bytes: int = DEFAULT_FRAME_BYTES,
        frame_cache_bytes: int = DEFAULT_FRAME_CACHE_BYTES,
        compression_threads: int = 2,
        reframe_on_seal: bool = True,
        min_frame_saving: float = DEFAULT_MIN_SAVING,
        readonly: bool = False,
        seal_hook: SealHook | None = None,
    ) -> None:
        if not isinstance(datadir, (str, os.PathLike)) or not isinstance(mutable_file_lock_path,
                                                                          (str, os.PathLike, type(None))):
            raise TypeError("datadir and mutable_file_lock_path must be paths (str or os.PathLike)")
        if mutable_file_lock_path is None:
            mutable_file_lock_path = default_lock_path(datadir)
        if lock_timeout is not None and (isinstance(lock_timeout, bool) or not isinstance(lock_timeout, (int, float))):
            raise TypeError(f"lock_timeout must be a number of seconds or None, not {type(lock_timeout).__name__}")
        if lock_timeout is not None and not 0 <= lock_timeout <= MAX_LOCK_TIMEOUT_SECONDS:
            raise ValueError(f"lock_timeout must be in 0..{MAX_LOCK_TIMEOUT_SECONDS} seconds, or None to wait for "
                             f"ever; got {lock_timeout}")
        if not 1 <= frame_bytes <= MAX_FRAME_DECOMPRESSED_BYTES:
            raise ValueError(f"frame_bytes must be in 1..{MAX_FRAME_DECOMPRESSED_BYTES}, got {frame_bytes}")
        if frame_cache_bytes < 0 or compression_threads < 1:
            raise ValueError("frame_cache_bytes must be >= 0 and compression_threads >= 1")
        self.datadir = Path(datadir)
        self.mutable_file_lock_path = Path(mutable_file_lock_path)
        self.fsync = bool(fsync)
        self.readonly = bool(readonly)
        self.use_compression = bool(use_compression) and not self.readonly  # nothing to compress
        self.lock_timeout = lock_timeout
        self.compression_level = compression_level
        self.frame_bytes = frame_bytes
        self.compression_threads = compression_threads
        self.reframe_on_seal = reframe_on_seal
        self.min_frame_saving = check_min_saving(min_frame_saving)
        self.MAX_DAT_FILE_SIZE = max_file_size  # pylint: disable=invalid-name  # reference API (checked on set)
        self._seal_hook: SealHook = seal_hook if seal_hook is not None else Store.reframe_sealed
        self._dir_str = str(self.datadir)
        self._abs_dir = os.path.abspath(self.datadir)
        self._abs_lock = os.path.abspath(self.mutable_file_lock_path)
        check_lock_path(self._abs_dir, self._abs_lock)
        self._base_dir = os.getcwd()
        self._frame_cache = FrameCache(frame_cache_bytes)  # size 0 caches nothing but still counts
        self._guard = threading.Lock()  # opening/closing, never on a hot path
        self._closed = True
        self._words: Any = _CLOSED_WORDS
        self._epoch = -2
        self._by_path: dict[Any, SegmentReader] = {}
        self._open()

    def __setattr__(self, name: str, value: Any) -> None:
        # MAX_DAT_FILE_SIZE is a plain attribute that users set (the reference API) and that
        # every put reads: a property would add a Python call to each put, so the value is
        # checked here, on the rare set, instead.
        if name == "MAX_DAT_FILE_SIZE" and (type(value) is not int or value < 1):  # pylint: disable=unidiomatic-typecheck
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"MAX_DAT_FILE_SIZE (max_file_size) must be an int, not {type(value).__name__}")
            if value < 1:
                raise ValueError(f"MAX_DAT_FILE_SIZE (max_file_size) must be at least 1 byte, got {value}")
            value = int(value)  # an int subclass: stored as a plain int
        object.__setattr__(self, name, value)

    # -- lifecycle ------------------------------------------------------------------

    def _open(self) -> None:
        with self._guard:
            if not self._closed:
                return
            if self.readonly:
                self._open_readonly()
                return
            os.makedirs(self._abs_dir, exist_ok=True)
            dir_fd = os.open(self._abs_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            lock: ProcessLock | None = None
            state: SharedState | None = None
            try:
                lock = process_lock_for(self._abs_lock)
                with lock.write(self.lock_timeout):
                    state = SharedState(dir_fd)
                    writer = SegmentWriter(dir_fd, self.datadir, state, fsync=self.fsync,
                                           new_kind=KIND_ZSTD if self.use_compression else KIND_RAW)
                    writer.recover(power_loss_check=True, may_defer=True)
            except BaseException:
                if state is not None:
                    state.close()
                if lock is not None:
                    release_process_lock(lock)
                os.close(dir_fd)
                raise
            self._dir_fd = dir_fd
            self._lock = lock
            self._state = state
            self._writer = writer
            self._syncer = SealSyncer(dir_fd, state.words)
            # The repair callback must not hold the instance: that cycle would keep a dropped
            # instance (and its descriptors) alive until the cyclic collector ran.
            self._readers = ReaderCache(dir_fd, self._dir_str, self._base_dir, state, self._frame_cache,
                                        functools.partial(_repair_if_alive, weakref.ref(self)))
            self._opened(state.words)

    def _open_readonly(self) -> None:
        """Open an existing store without writing anything (GUARANTEES.md "Read-only opens")."""
        dir_fd = open_datadir(self._abs_dir, self._dir_str)
        try:
            state = ReadOnlyState(dir_fd)
        except BaseException:
            os.close(dir_fd)
            raise
        self._dir_fd = dir_fd
        self._lock = ReadOnlyLock(self._dir_str)
        self._ro_state = state
        self._readers = ReaderCache(dir_fd, self._dir_str, self._base_dir, state, self._frame_cache, state.repair)
        self._opened(state.words)

    def _opened(self, words: Any) -> None:
        self._by_path = self._readers.by_path
        self._words = words
        self._epoch = self._readers.epoch
        self._closed = False

    def close(self) -> None:
        """Release descriptors and the state page. The store reopens itself on next use."""
        with self._guard:
            if self._closed:
                return
            self._closed = True
            self._words = _CLOSED_WORDS
            self._epoch = -2
            self._readers.reset()
            self._by_path = {}
            self._frame_cache.clear()
            if isinstance(self._lock, ProcessLock):
                self._syncer.close()
                self._writer.close()
                self._state.close()
                release_process_lock(self._lock)
            else:
                self._ro_state.close()
            os.close(self._dir_fd)

    def __del__(self) -> None:
        # As an unclosed file does: warn, then release the descriptors and the state page
        # (else short-lived instances that are never closed run out of descriptors).
        if getattr(self, "_closed", True):
            return  # closed, or the constructor failed before anything was opened
        if sys.is_finalizing():
            # Interpreter exit: the process's end releases every descriptor, the lock and the map,
            # and the exit handler already waited for pending seal fsyncs. Closing here would join
            # threads that finalization has stopped (the sync thread, the lease reaper): a hang.
            return
        try:
            warnings.warn(f"unclosed {self!r}", ResourceWarning, source=self)
        finally:  # even when warnings are errors
            with contextlib.suppress(Exception):  # at interpreter exit, modules may be gone already
                self.close()

    def _refuse_write(self, operation: str) -> None:
        """Raise FlatFileDbReadOnlyError on a read-only instance, before anything is touched."""
        if self.readonly:
            raise FlatFileDbReadOnlyError(
                f"{operation}(): {self._dir_str} was opened with readonly=True (no writes, no lock)")

    def _reopen_if_closed(self) -> None:
        if self._closed:
            self._open()

    def _repair_state(self) -> None:
        """A publisher of the state page died mid-way: redo recovery under the write lock."""
        with self._lock.write(self.lock_timeout):
            if self._state.read_mutable() is None:
                self._writer.recover(power_loss_check=False)

    def __enter__(self: _S) -> _S:
        self._reopen_if_closed()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.readonly:
            return f"{type(self).__name__}({self._dir_str!r}, readonly=True)"
        return (f"{type(self).__name__}({self._dir_str!r}, use_compression={self.use_compression}, "
                f"fsync={self.fsync})")

    # -- writing ----------------------------------------------------------------------

    def _frames(self, data: Any) -> tuple[list[bytes], list[int], bool]:
        """Frames for one put or batch: compressed, or stored when small (compressed at seal);
        (frames, their uncompressed sizes, stored?)."""
        size = len(data)
        if size < STORED_BELOW_BYTES:
            return [stored_frame(data)], [size], True
        frame = self.frame_bytes
        dsizes = [min(frame, size - i) for i in range(0, size, frame)]
        return (compress_frames(data, frame, self.compression_level, self.compression_threads, self.min_frame_saving),
                dsizes, False)

    def _after_seal(self, sealed: list[int]) -> None:
        """After segments this thread just sealed (outside the write lock): have them fsynced in
        the background; wait only if older seals are still not durable (so at most the ones
        sealed now are exposed); re-frame compressed ones."""
        if not sealed:
            return
        self._syncer.request(max(sealed) + 1)
        self._syncer.wait(min(sealed))
        self._seal_hook(self, sealed)

    def reframe_sealed(self, sealed: list[int]) -> None:
        """The default seal hook: re-frame compressed segments just sealed when they hold small
        or stored frames (and ``reframe_on_seal``); raw ones stay as they are."""
        if not self.reframe_on_seal:
            return
        for number in sealed:
            try:
                if self._segment_kind(number) == KIND_ZSTD and self._small_frames(number):
                    framing = Framing(True, self.compression_level, self.frame_bytes, self.compression_threads,
                                      self.min_frame_saving)
                    rewrite_segment(self._dir_fd, self._abs_dir, number, framing, write_lock=self._write_lock,
                                    state=self._state)
            except (OSError, ValueError) as exc:
                logger.warning("%s: re-framing sealed segment %d failed (it stays as written): %s",
                               self._dir_str, number, exc)

    def _small_frames(self, number: int) -> bool:
        """Whether a sealed compressed segment holds stored (uncompressed) frames, or many more
        frames than ``frame_bytes`` frames would make: only then does re-framing pay for itself."""
        frames = [r for r in index_records(self._dir_fd, number) if r.rtype == REC_FRAME]
        size = sum(r.b & 0xFFFFFFFF for r in frames)
        return any(r.flags & FLAG_STORED for r in frames) or len(frames) > 1.25 * -(-size // self.frame_bytes)

    def _segment_kind(self, number: int) -> int:
        exists = os.path.exists(os.path.join(self._abs_dir, segment_name(number, True)))
        return KIND_ZSTD if exists else KIND_RAW

    def _write_lock(self) -> ContextManager[None]:
        return self._lock.write(self.lock_timeout)

    def put(self, data: Buffer) -> DataLocation:
        """Append one blob and return its location.

        ``data``: bytes, bytearray, or any C-contiguous buffer (memoryview, numpy array,
        ``array.array``, ``mmap``), stored as its bytes in memory order.
        Raises UnsupportedBufferError (a TypeError) for anything else, NonContiguousBufferError
        (a TypeError and ValueError) for a buffer not in C order; FlatFileDbLockTimeoutError
        when ``lock_timeout`` passes first. Nothing is written on either error.
        """
        if type(data) is not bytes:  # pylint: disable=unidiomatic-typecheck  # fast path for the common case
            data = as_bytes_like(data)
        checksum = blob_checksum(data)
        frames = self._frames(data) if self.use_compression else None  # compressed before the lock
        if self._closed:
            self._open()
        lock = self._lock
        lock.acquire_write(self.lock_timeout)  # a read-only instance's raises FlatFileDbReadOnlyError
        try:
            writer = self._writer
            if frames is None and len(data) <= writer.map_limit:
                start = writer.put_mapped(data, checksum, self.MAX_DAT_FILE_SIZE)
                if start >= 0:  # the common case: nothing to prepare, room in the maps
                    return _new_location((writer.path, start, start + len(data)))
            words = self._words
            if words[W_DIRTY] or words[W_SEGMENT] != writer.segment or words[W_END] >= self.MAX_DAT_FILE_SIZE:
                start = writer.prepare(self.MAX_DAT_FILE_SIZE)
            else:
                start = words[W_END]
            end = start + len(data)
            if writer.kind == KIND_RAW:
                if end - start > writer.map_limit or not writer.append_mapped(data, checksum, start, end):
                    writer.append_raw(data, None, start, end, encode_blob(start, end - start, checksum))
            else:
                if frames is None:  # the mutable segment is compressed though this instance is not
                    frames = self._frames(data)
                writer.append_zstd(frames[0], frames[1], start, end, encode_blob(start, end - start, checksum),
                                   stored=frames[2])
            location = _new_location((writer.path, start, end))
            sealed = writer.take_sealed() if writer.sealed else None
        finally:
            lock.release_write()
        if sealed:
            self._after_seal(sealed)
        return location

    def put_many(self, datas: Iterable[Buffer]) -> list[DataLocation]:
        """Append many blobs under one lock acquisition; returns their locations in order.

        The data of each run of blobs that lands in one segment is written with one
        ``pwritev`` (compressed: one set of frames) and their index records with one
        ``pwrite``. A crash may keep a prefix of the batch (whole blobs), never a torn blob.
        """
        self._refuse_write("put_many")
        try:
            items = [d if type(d) is bytes else as_bytes_like(d, "put_many()") for d in datas]  # pylint: disable=unidiomatic-typecheck
        except (TypeError, ValueError) as exc:
            if not isinstance(datas, (list, tuple)):
                raise
            position = next((i for i, d in enumerate(datas) if not bytes_like_ok(d)), None)
            if position is None:
                raise
            raise type(exc)(f"{exc} (item {position})") from None
        if not items:
            return []
        checksums = [blob_checksum(d) for d in items]
        frames = self._frames(b"".join(items)) if self.use_compression else None
        if self._closed:
            self._open()
        locations: list[DataLocation] = []
        with self._lock.write(self.lock_timeout):
            index = 0
            while index < len(items):
                index = self._put_run_locked(items, checksums, index, locations, frames)
                frames = None  # precompressed frames cover the whole batch only
            sealed = self._writer.take_sealed()
        self._after_seal(sealed)
        return locations

    def _put_run_locked(self, items: list[Any], checksums: list[int], index: int, locations: list[DataLocation],
                        frames: tuple[list[bytes], list[int], bool] | None) -> int:
        """Write items[index:] up to the rotation point as one run; returns the next index."""
        writer = self._writer
        start = writer.prepare(self.MAX_DAT_FILE_SIZE)
        sizes = [len(item) for item in items[index:]]
        ends = list(itertools.accumulate(sizes, initial=start))
        # Blobs go in while they start before the limit; the first always goes in.
        stop = index + max(1, bisect.bisect_left(ends, self.MAX_DAT_FILE_SIZE, 0, len(sizes)))
        count = stop - index
        starts, ends = ends[:count], ends[1 : count + 1]
        records = b"".join(map(encode_blob, starts, sizes[:count], checksums[index:stop]))
        run = items[index:stop]
        if writer.kind == KIND_RAW:
            writer.append_raw(None, run, start, ends[-1], records)
        else:
            if frames is None or index != 0 or stop != len(items):
                frames = self._frames(b"".join(run))
            writer.append_zstd(frames[0], frames[1], start, ends[-1], records, stored=frames[2])
        locations.extend(map(_new_location, zip(itertools.repeat(writer.path), starts, ends)))
        return stop

    # -- streams and adoption --------------------------------------------------------

    def put_stream(self, stream: Any) -> DataLocation:
        """Store everything ``stream`` yields (``readinto`` or ``read``) as one blob, in constant memory.

        The bytes go to a private scratch file first (compressed when
        ``use_compression``), which then becomes a sealed segment of its own by rename:
        other writers wait only for that rename, never for the copy. Same commit and
        crash guarantees as ``put``; a crash mid-copy leaves nothing behind.
        """
        self._refuse_write("put_stream")
        self._reopen_if_closed()
        return self._put_stream(stream, b"")

    def _put_stream(self, stream: Any, prefix: bytes) -> DataLocation:
        framing = Framing(self.use_compression, self.compression_level, self.frame_bytes, self.compression_threads,
                          self.min_frame_saving)
        written = write_aside(self._dir_fd, self._abs_dir, stream, prefix, framing=framing, fsync=self.fsync)
        kind = KIND_ZSTD if self.use_compression else KIND_RAW
        return self._commit_file(written.name, kind, written.size, written.checksum, 0, written.disk_size)

    def _commit_file(self, source: str, kind: int, size: int, checksum: int, flags: int,  # pylint: disable=too-many-arguments
                     disk_size: int) -> DataLocation:
        try:
            with self._lock.write(self.lock_timeout):
                self._writer.resync()
                number = self._writer.commit_sealed_file(source, kind, size, checksum, flags, disk_size)
                sealed = self._writer.take_sealed()
        except BaseException:
            if not os.path.isabs(source):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(source, dir_fd=self._dir_fd)
            raise
        self._after_seal(sealed)
        return DataLocation(str(self.datadir / segment_name(number, kind == KIND_ZSTD)), 0, size)

    def put_streams(self, streams: Iterable[Any], open_streams: bool = False,
                    small_bytes: int = 2**20, batch_bytes: int = 64 * 2**20) -> list[DataLocation]:
        """Store many streams; returns their locations in input order.

        Each item is a readable, or (``open_streams=True``) a context manager giving
        one, such as :class:`LazyOpener`; a str or os.PathLike item is opened lazily
        either way. Streams up to ``small_bytes`` are batched through ``put_many``
        (at most ``batch_bytes`` in memory); longer ones go through ``put_stream``. Only
        one input is open at a time.
        """
        self._refuse_write("put_streams")
        if isinstance(streams, (list, tuple)):  # refused before anything is stored
            for position, item in enumerate(streams):
                check_stream_item(item, position, open_streams)
        self._reopen_if_closed()
        locations: list[DataLocation] = []
        pending: list[bytes] = []
        pending_bytes = 0
        for position, item in enumerate(streams):
            check_stream_item(item, position, open_streams)
            if isinstance(item, (str, os.PathLike)):
                item, opened = LazyOpener(item), True
            else:
                opened = open_streams
            with (item if opened else contextlib.nullcontext(item)) as stream:
                head, ended = read_head(stream, small_bytes)
                if ended:
                    pending.append(head)
                    pending_bytes += len(head)
                else:
                    locations += self.put_many(pending) if pending else []
                    pending, pending_bytes = [], 0
                    locations.append(self._put_stream(stream, head))
            if pending_bytes >= batch_bytes:
                locations += self.put_many(pending)
                pending, pending_bytes = [], 0
        if pending:
            locations += self.put_many(pending)
        return locations

    def adopt_file(self, path: str | os.PathLike[str], *, verify: bool = False) -> DataLocation:
        """Move an existing file into the store as a new sealed segment, by rename: O(1).

        Returns the location of its whole content. A file starting with a Zstandard or
        skippable frame must be a valid seekable Zstandard file (its seek table is
        checked) and becomes a compressed segment; anything else becomes a raw one.
        Without ``verify`` the blob is recorded without a checksum (``verify()`` then
        only checks its framing); with it the file is read once to compute one (O(n)).

        Raises InvalidLocationError for a symlink, a non-regular file, a file on another
        filesystem (copy it with ``put_stream`` instead) or inside the datadir, and
        FormatError for a compressed file that is not seekable; the file is then left
        where it was.
        """
        self._refuse_write("adopt_file")
        self._reopen_if_closed()
        source = os.path.abspath(os.fspath(path))
        st = os.lstat(source)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidLocationError(f"{source!r}: only a regular file can be adopted (not a symlink, device or dir)")
        if st.st_dev != os.fstat(self._dir_fd).st_dev:
            raise InvalidLocationError(f"{source!r} is on another filesystem than {self._dir_str!r}; "
                                       "a rename cannot move it (use put_stream to copy it)")
        if os.path.samefile(os.path.dirname(source), self._abs_dir):
            raise InvalidLocationError(f"{source!r} is inside the datadir already")
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(st, os.stat(self._abs_lock)):
                # Renamed away, the lock file would be created afresh by the next process: two locks.
                raise InvalidLocationError(f"{source!r} is this store's lock file; it cannot be adopted")
        if st.st_nlink > 1:
            raise InvalidLocationError(
                f"{source!r} has {st.st_nlink} hard links: through another name the committed bytes could "
                "change; remove the other links, or copy it with put_stream")
        fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            kind, size, checksum = examine_for_adoption(fd, source, st.st_size, verify)
            os.fsync(fd)  # the caller may have just written it: durable before the commit, in both modes
        finally:
            os.close(fd)
        return self._commit_file(source, kind, size, checksum, 0 if verify else FLAG_UNCHECKED, st.st_size)

    def open_blob(self, location: DataLocation) -> BlobFile:
        """A read-only, seekable binary file object over one blob (raw or compressed).

        Seeking in a compressed blob costs nothing; reading decompresses only the frames
        read. Use it as a context manager. Not thread-safe: open one per thread.
        """
        file_path, start, end, reader = self._resolve(location)
        start, end = self._readers.check_range(reader, file_path, start, end)
        return BlobFile(reader, start, end, str(file_path))

    # -- bulk and zero-copy reads -------------------------------------------------------

    def _in_disk_order(self, locations: Iterable[DataLocation]) -> list[tuple[Any, ...]]:
        """(segment, start, end, input index, location) for each location, sorted on disk.

        Readers are not kept here: reading in this order needs one segment open at a time,
        so any number of segments can be read within the process's descriptor limit.
        """
        lookup = self._lookup
        resolved = []
        for index, location in enumerate(locations):
            _file_path, start, end, reader = lookup(location)
            resolved.append((reader.number, start, end, index, location))
        resolved.sort(key=_DISK_ORDER)
        return resolved

    def _sliced(self, locations: list[DataLocation], slices: Iterable[Slice | None]) -> list[DataLocation]:
        """The locations of ``get(location, slice)`` for each pair; bad slices raise as in get()."""
        parts = slices if isinstance(slices, list) else list(slices)
        if len(parts) != len(locations):
            raise ValueError(f"get_many: {len(locations)} locations but {len(parts)} slices")
        out = []
        for location, part in zip(locations, parts):
            if part is not None:
                if location.__class__ is DataLocation:
                    file_path, start, end = location
                else:
                    file_path, start, end, _reader = self._resolve(location)
                start, end = fast_slice(start, end, part) or apply_slice(file_path, start, end, part)
                location = _new_location((file_path, start, end))
            out.append(location)
        return out

    def iter_many(self, locations: Iterable[DataLocation]) -> Iterator[tuple[int, bytes]]:
        """Read many blobs in disk order (segment, offset); yields (input index, bytes).

        Memory holds one blob at a time (plus the sorted list of locations); one
        segment is open at a time.
        """
        lookup = self._lookup
        read = self._readers.read
        number = -1
        reader: SegmentReader | None = None
        file_path: Any = None
        for segment, start, end, index, location in self._in_disk_order(locations):
            if segment != number or reader is None:
                file_path, _start, _end, reader = lookup(location)
                number = segment
            mm = reader.mm
            if type(start) is int and type(end) is int and mm is not None \
                    and 0 <= start < end <= reader.mapped and end - start <= MAP_READ_BYTES:  # pylint: disable=unidiomatic-typecheck
                yield index, mm[start:end]
            else:
                yield index, read(reader, file_path, start, end)

    def get_many(self, locations: Iterable[DataLocation],
                 slices: Iterable[Slice | None] | None = None) -> list[bytes]:
        """Read many blobs (or slices of them) in one call; returns them in the caller's order.

        Underneath, the reads go in disk order (segment, then offset), one segment at a
        time through its cached reader. ``slices``, when given, pairs one ``Slice`` (or
        ``None`` for the whole blob) with each location, as ``get(location, slice)``
        would. Errors are those of :meth:`get`, for the first bad item in disk order.
        """
        locations = locations if isinstance(locations, list) else list(locations)
        if slices is not None:
            locations = self._sliced(locations, slices)
        count = len(locations)
        out: list[bytes] = [b""] * count
        if count == 0:
            return out
        try:  # columns first (this pass pays the cache misses on the items), then the type check
            paths, starts, ends = itertools.islice(zip(*locations), 3)
        except (TypeError, ValueError):  # an item that is not a sequence of three: get() says why
            paths = ()
        # bool is an int that get() refuses as an offset; the mapped loop would read it as 0 or 1.
        if paths and {*map(type, locations)} == {DataLocation} and bool not in {*map(type, starts), *map(type, ends)}:
            order = _disk_order(paths, starts, self._by_path if self._words[W_EPOCH] == self._epoch else {})
            if order is not None:
                self._read_mapped(locations, order, paths, starts, ends, out)
                return out
        for *_disk, index, location in self._in_disk_order(locations):  # unusual input: one get() each
            out[index] = self.get(location)
        return out

    def _read_mapped(self, locations: list[DataLocation], order: list[int], paths: tuple[Any, ...],
                     starts: tuple[int, ...], ends: tuple[int, ...], out: list[bytes]) -> None:
        """get_many's loop: ``out[i]`` = blob ``i``, read in ``order``, from the mappings where possible."""
        by_path = self._by_path if self._words[W_EPOCH] == self._epoch else {}
        for file_path, group in itertools.groupby(order, paths.__getitem__):
            reader = by_path.get(file_path)
            mm: Any = None
            mapped = 0
            if reader is not None:
                mm, mapped = reader.mm, reader.mapped
            for index in group:
                start = starts[index]
                end = ends[index]
                try:
                    if 0 <= start < end <= mapped and end - start <= MAP_READ_BYTES:
                        out[index] = mm[start:end]
                        continue
                except TypeError:  # offsets that are not ints: get() names the problem
                    pass
                # not mapped yet, compressed, large, empty or bad: get() reads it or says why
                out[index] = self.get(locations[index])
                by_path = self._by_path  # get() resolved it: the cache is current now
                if (reader := by_path.get(file_path)) is not None:
                    mm, mapped = reader.mm, reader.mapped

    def get_view(self, location: DataLocation, slice: Slice | None = None) -> memoryview:  # pylint: disable=redefined-builtin
        """A read-only, zero-copy ``memoryview`` of a blob in a raw segment (memory-mapped).

        The view stays valid as long as you hold it, even if the segment is deleted
        meanwhile (the mapping keeps the file). Compressed segments have no bytes to
        map: InvalidLocationError (use ``get``, or recompress the segment raw).
        ``numpy.frombuffer(view, dtype=...)`` makes an array without a copy.
        """
        if location.__class__ is DataLocation and self._words[W_EPOCH] == self._epoch \
                and (reader := self._by_path.get(location[0])) is not None:
            file_path, start, end = location
        else:
            file_path, start, end, reader = self._resolve(location)
        if slice is not None:
            start, end = fast_slice(start, end, slice) or apply_slice(file_path, start, end, slice)
        if start == end and type(start) is int:  # pylint: disable=unidiomatic-typecheck
            self._readers.check_range(reader, file_path, start, end)
            return memoryview(b"")
        view = reader.view
        if type(start) is int and type(end) is int and 0 <= start <= end <= reader.mapped and view is not None:  # pylint: disable=unidiomatic-typecheck
            return view[start:end]
        start, end = self._readers.check_range(reader, file_path, start, end)
        if not reader.raw:
            raise InvalidLocationError(f"{file_path}: a compressed segment has no bytes to map; use get()")
        if end > reader.mapped:
            reader.remap()
        view = reader.view
        if view is None or end > reader.mapped:
            raise InvalidLocationError(f"{file_path}: bytes {start}..{end} cannot be mapped")
        return view[start:end]

    def sync(self) -> None:
        """Make every acknowledged blob durable now (for ``fsync=False`` stores).

        One ``fdatasync`` of the mutable segment's data and index, after waiting for the
        background fsync of recently sealed segments; afterwards a power loss cannot cost
        any blob acknowledged before this call. Raises the OSError of a failed fsync.
        """
        self._refuse_write("sync")
        self._reopen_if_closed()
        with self._lock.write(self.lock_timeout):
            self._writer.resync()
            self._writer.sync()
            mutable = self._writer.segment
        self._syncer.request(mutable)
        error = self._syncer.wait(mutable)
        if error is not None:
            raise error

    def rotate(self) -> tuple[Path, int]:
        """Seal the mutable segment now and start a new one; returns (new path, new number).

        A no-op when the mutable segment is empty (it stays mutable). Raises
        FlatFileDbUnsafeAccessError, sealing nothing, when the mutable segment is number
        4294967295, the last one the format can name (FORMAT.md "Files").
        """
        self._refuse_write("rotate")
        return self._maybe_get_new_mutable_file(force_new_file=True)

    def _maybe_get_new_mutable_file(self, force_new_file: bool = False) -> tuple[Path, int]:
        """Compatibility alias of :meth:`rotate`: rotates when forced or when full."""
        self._refuse_write("_maybe_get_new_mutable_file")
        self._reopen_if_closed()
        with self._lock.write(self.lock_timeout):
            writer = self._writer
            if writer.prepare(self.MAX_DAT_FILE_SIZE) and force_new_file:
                writer.rotate()
            result = Path(writer.path), writer.segment
            sealed = writer.take_sealed()
        self._after_seal(sealed)
        return result

    # -- reading ----------------------------------------------------------------------

    def get(self, data_location: DataLocation, slice: Slice | None = None,  # pylint: disable=redefined-builtin
            lock_free_access: bool = False) -> bytes:  # pylint: disable=unused-argument  # reference API
        """Read a blob, or a slice of it, from any committed location.

        Reads take no lock (committed bytes never change); ``lock_free_access`` is
        accepted for compatibility and changes nothing. Use :meth:`read_lock` to
        exclude writers and maintenance while reading.

        Raises:
            FlatFileDbNotFoundError: the segment was deleted (a FileNotFoundError).
            InvalidLocationError: not a segment of this store, offsets past the
                committed end, bad slice (a ValueError).
            TypeError: not a location or slice, offsets not ints.
            CorruptionError: a compressed frame fails to decode or its checksum.
        """
        if data_location.__class__ is DataLocation and self._words[W_EPOCH] == self._epoch:
            file_path, start, end = data_location
            reader = self._by_path.get(file_path)
            if reader is None:
                file_path, start, end, reader = self._resolve(data_location)
        else:
            file_path, start, end, reader = self._resolve(data_location)
        if slice is not None:
            start, end = fast_slice(start, end, slice) or apply_slice(file_path, start, end, slice)
        if type(start) is int and type(end) is int \
                and 0 <= start < end <= reader.mapped and end - start <= MAP_READ_BYTES:  # pylint: disable=unidiomatic-typecheck
            return reader.mm[start:end]  # type: ignore[index]  # mapped > 0 means mm is set
        return self._readers.read(reader, file_path, start, end)

    def _lookup(self, location: Any) -> tuple[Any, Any, Any, SegmentReader]:
        """The fast path of get() as a function: a cached reader for a cached path, else _resolve."""
        if location.__class__ is DataLocation and self._words[W_EPOCH] == self._epoch:
            reader = self._by_path.get(location[0])
            if reader is not None:
                return location[0], location[1], location[2], reader
        return self._resolve(location)

    def _resolve(self, location: Any) -> tuple[Any, int, int, SegmentReader]:
        self._reopen_if_closed()
        resolved = self._readers.resolve(location)
        self._epoch = self._readers.epoch
        return resolved

    def read_lock(self) -> ContextManager[None]:
        """Context manager: hold the store's read lock (excludes writers and maintenance).

        Not on a read-only instance (FlatFileDbReadOnlyError): taking the lock needs the lock
        file, which a read-only open neither creates nor writes.
        """
        self._refuse_write("read_lock")
        self._reopen_if_closed()
        return self._lock.read(self.lock_timeout)

    def frame_cache_info(self) -> dict[str, int]:
        """Counters of the decompressed-frame cache: hits, misses (= frames decompressed), bytes held."""
        cache = self._frame_cache
        return {"hits": cache.hits, "misses": cache.misses, "bytes": cache.size_bytes, "max_bytes": cache.max_bytes}

    # -- segments ---------------------------------------------------------------------

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
        with self._lock.write(self.lock_timeout):
            # No resync: deleting a sealed segment needs no repair of the mutable one, and that
            # repair (after a put or rotation that failed on a full disk: a seek table rewritten, a
            # segment created) needs disk space, which is what a delete is often called to free.
            # Every segment below the state page's mutable segment is sealed, even while a dead
            # writer's rotation is half done (the page then still names the segment it sealed).
            if number >= self._words[W_SEGMENT]:
                raise FlatFileDbUnsafeAccessError(
                    f"Deleting the mutable file is not allowed. Ever. ({file_path}; seal it first with rotate())")
            removed = 0
            # Data first, index last: an index left alone by a crash is removed by recovery.
            for name in (segment_name(number, False), segment_name(number, True), index_name(number)):
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

    def segments(self) -> list[int]:
        """Numbers of every segment present, oldest first (the last is the mutable one)."""
        self._reopen_if_closed()
        numbers = {n for n in (parse_segment_name(name) for name in os.listdir(self._dir_fd)) if n is not None}
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
            view = self._readers.mutable_view()
            limit = view.index_bytes if number == view.segment else None
            try:
                records = index_records(self._dir_fd, number, limit)
            except OSError:
                continue  # deleted meanwhile
            for record in records:
                if record.rtype == REC_BLOB:
                    yield BlobRecord(number, record.a, record.a + record.b, record.c)
                elif record.rtype == REC_SEAL:
                    break

    def iter_locations(self) -> Iterator[DataLocation]:
        """Every committed blob's location, in disk order: rebuilds a lost key-value store."""
        paths: dict[int, str] = {}
        for record in self.iter_records():
            path = paths.get(record.segment)
            if path is None:
                path = paths[record.segment] = self.issued_path(record.segment)
            yield DataLocation(path, record.start_offset, record.end_offset)

    def issued_path(self, number: int) -> str:
        """The path string put() gave the blobs of segment ``number``: its suffix is the one the
        segment was written with, so listed locations compare equal to stored ones even after
        the segment was recompressed (a location resolves by number, whatever its suffix)."""
        kind = written_kind(self._dir_fd, number)
        if kind is None:
            return self.segment_path(number)
        return str(self.datadir / segment_name(number, kind == KIND_ZSTD))

    def segment_path(self, number: int) -> str:
        """The path string of segment ``number`` as locations name it (existing suffix preferred)."""
        return str(self.datadir / segment_name(number, self._segment_kind(number) == KIND_ZSTD))

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
        return verify_store(self._dir_fd, self._dir_str, self._readers.mutable_view, progress, full)

    # -- compact locations ----------------------------------------------------------

    def pack_location(self, location: DataLocation) -> bytes:
        """A 20-byte form of a location, independent of the datadir's path (FORMAT.md section 7)."""
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


def _repair_if_alive(store: weakref.ref[Store]) -> None:
    """ReaderCache's repair callback: the store's repair, through a weak reference."""
    instance = store()
    if instance is not None:
        instance._repair_state()  # pylint: disable=protected-access  # this module's class


__all__ = ["Store", "DEFAULT_FRAME_BYTES", "DEFAULT_MAX_DAT_FILE_SIZE"]
