"""The store engine: puts append to the one mutable segment; gets read any committed slice.

``Store`` is the engine: open and close, put and put_many, get, rotate, sync. Subclasses add
bulk reads (bulk.py), ingest of streams and files (ingest.py), the catalogue of segments
(catalog.py) and maintenance (maintenance.py); ``FlatFileDb`` (flat_file_db.py) is the
public class.

This module decides *when* (locking, rotation, compression, caching); writer.py,
write_maps.py, reader.py and segment.py decide *how*. Hot paths are written for few
syscalls and few Python calls. A small put into a raw segment (no fsync) copies the blob
and its index record into shared maps of the two files (write_maps.py): no syscall but the
lock's ``lockf`` pair, and none at all while this process holds a lease on the lock
(locking.py). A small put into a compressed segment stores its frame and records the same
way and writes the seek table's new tail with one ``pwrite``; a larger put writes with
``pwrite``. A get of a mapped raw segment copies from the map; otherwise it is one ``pread``.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import itertools
import logging
import os
import sys
import threading
import warnings
import weakref
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, ContextManager, Iterable, Iterator, TypeVar

from .arguments import (
    as_bytes_like,
    bytes_like_ok,
    check_level,
    check_lock_path,
    check_options,
    check_paths,
    default_lock_path,
)
from .errors import FlatFileDbError, FlatFileDbReadOnlyError, FlatFileDbUnsafeAccessError
from .frames import (
    DEFAULT_LEVEL,
    DEFAULT_MIN_SAVING,
    MAX_FRAME_DECOMPRESSED_BYTES,
    STORED_BELOW_BYTES,
    FrameCache,
    check_min_saving,
    compress_frames,
    stored_frame,
)
from .index import (
    FLAG_LOG,
    INDEX_VERSION,
    INDEX_VERSION_LOG,
    KIND_RAW,
    KIND_ZSTD,
    REC_BLOB,
    RECORD_BYTES,
    blob_checksum,
    encode_blob,
    encode_record,
)
from .locking import ProcessLock, ReadOnlyLock, process_lock_for, release_process_lock
from .reader import MAP_READ_BYTES, ReaderCache, SegmentReader, apply_slice, fast_slice
from .readonly import ReadOnlyState, open_datadir
from .segment import MUTABLE_FRAMES_MAX
from .state import W_DIRTY, W_END, W_EPOCH, W_FRAMES, W_SEGMENT, W_SYNCED_BELOW, SharedState
from .syncer import SYNC_DELAY_SECONDS, WRITER_BACKLOG, SealHookRunner, SealSyncer, finalize
from .tiering.config import Tiering
from .tiering.tier import Tier
from .types import Buffer, DataLocation, Slice
from .writer import SegmentWriter

logger = logging.getLogger("conduit_flat_file_db")

DEFAULT_MAX_DAT_FILE_SIZE = 128 * 2**20
DEFAULT_FRAME_BYTES = 16 * 2**10  # README "Frame size": ratio vs slice latency, measured
DEFAULT_FRAME_CACHE_BYTES = 64 * 2**20
_CLOSED_WORDS = (-1,) * 32  # stands in for the state page while closed: every epoch check fails
new_location = functools.partial(tuple.__new__, DataLocation)  # skips NamedTuple.__new__'s Python frame
_S = TypeVar("_S", bound="Store")
SealHook = Callable[[Any, list[int]], None]
"""Called as ``hook(store, numbers)`` after segments are sealed, in the store's seal hook thread
(syncer.SealHookRunner: the put that sealed does not wait for it), outside the write lock, so a
policy above the engine (compress when it pays) decides what becomes of them. A plain function
taking the store, rather than a bound method: a bound method held by the store is a reference
cycle that would keep a dropped store's descriptors open until the cyclic collector runs."""


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
        log_records: bool = False,
        lock_leases: bool = True,
        tiering: Any = None,
    ) -> None:
        check_paths(datadir, mutable_file_lock_path)
        check_options(lock_timeout, frame_bytes, MAX_FRAME_DECOMPRESSED_BYTES, frame_cache_bytes, compression_threads)
        if mutable_file_lock_path is None:
            mutable_file_lock_path = default_lock_path(datadir)
        self.datadir = Path(datadir)
        self.mutable_file_lock_path = Path(mutable_file_lock_path)
        self.fsync = bool(fsync)
        self.readonly = bool(readonly)
        self.use_compression = bool(use_compression) and not self.readonly  # nothing to compress
        self.lock_timeout = lock_timeout
        self.compression_level = check_level(compression_level)
        self.frame_bytes = frame_bytes
        self.compression_threads = compression_threads
        self.reframe_on_seal = reframe_on_seal
        self.min_frame_saving = check_min_saving(min_frame_saving)
        self.MAX_DAT_FILE_SIZE = max_file_size  # pylint: disable=invalid-name  # reference API (checked on set)
        self._seal_hook = seal_hook
        # A read-only instance never seals: no hook runs there.
        self._hooks = SealHookRunner(self, _run_seal_hook) if seal_hook is not None and not self.readonly else None
        self.log_records = bool(log_records)
        self.lock_leases = bool(lock_leases)
        self._dir_str = str(self.datadir)
        self._abs_dir = os.path.abspath(self.datadir)
        self._abs_lock = os.path.abspath(self.mutable_file_lock_path)
        check_lock_path(self._abs_dir, self._abs_lock)
        self._base_dir = os.getcwd()
        self._frame_cache = FrameCache(frame_cache_bytes)  # size 0 caches nothing but still counts
        self._guard = threading.Lock()  # opening/closing, never on a hot path
        _LIVE_STORES[id(self)] = self  # for the guard's reset in a forked child
        self._closed = True
        self._words: Any = _CLOSED_WORDS
        self._epoch = -2
        self._by_path: dict[Any, SegmentReader] = {}
        self._lost: list[int] = []  # see lost_segments()
        self.tiering = check_tiering(tiering)
        self._tier: Any = None  # tiering.tier.Tier while open with tiering
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
                if not self.lock_leases:
                    lock.leases = False
                with lock.write(self.lock_timeout):
                    state = SharedState(dir_fd)
                    state.check_lock_file(lock.fileno(), self._abs_lock)
                    writer = SegmentWriter(
                        dir_fd,
                        self.datadir,
                        state,
                        fsync=self.fsync,
                        new_kind=KIND_ZSTD if self.use_compression else KIND_RAW,
                        new_version=INDEX_VERSION_LOG if self.log_records else INDEX_VERSION,
                    )
                    writer.recover(power_loss_check=True, may_defer=True)
                    self._lost += writer.lost
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
            self._syncer = SealSyncer(dir_fd, state.words, 0.0 if self.fsync else SYNC_DELAY_SECONDS)
            mutable = state.words[W_SEGMENT]
            if state.words[W_SYNCED_BELOW] < mutable:  # sealed but not known durable: fsynced in the background
                self._syncer.request(mutable)
            # The repair callback must not hold the instance: that cycle would keep a dropped
            # instance (and its descriptors) alive until the cyclic collector ran.
            self._readers = ReaderCache(
                dir_fd,
                self._dir_str,
                self._base_dir,
                state,
                self._frame_cache,
                functools.partial(_repair_if_alive, weakref.ref(self)),
            )
            self._open_tier(dir_fd, state.words, readonly=False)
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
        self._open_tier(dir_fd, state.words, readonly=True)
        self._opened(state.words)

    def _open_tier(self, dir_fd: int, words: Any, readonly: bool) -> None:
        """With tiering: the tier (claim and probe of the bucket), and remote reads for the readers.
        Nothing the tier holds may hold the instance (no bound method of it): the tier's thread
        would keep a dropped instance alive, never finalized."""
        if self.tiering is None:
            return
        try:
            self._tier = Tier(
                self.tiering,
                dir_fd,
                self._dir_str,
                self._abs_lock,
                functools.partial(_tier_words, words),
                self._lock.write,
                None if readonly else self._state.bump_epoch,
                readonly=readonly,
            )
        except BaseException:
            self._close_files()
            raise
        self._readers.remote = self._tier.reader
        if not readonly:
            self._tier.wake()

    def _opened(self, words: Any) -> None:
        self._by_path = self._readers.by_path
        self._words = words
        self._epoch = self._readers.epoch
        self._closed = False
        if self._hooks is not None:
            self._hooks.resume()  # hooks of seals that raced a close run now

    def close(self) -> None:
        """Release descriptors and the state page. The store reopens itself on next use.

        Waits first for the seal hook's work on segments sealed so far (the re-framing or
        compression of a sealed segment: seconds for a 128 MiB segment), so that the segments
        are in their final form once close() returns and no thread of the store is left using
        its descriptors.
        """
        if self._closed:
            return
        self._refuse_inside_read_lock("close()")
        with self._guard:
            if self._closed:
                return
            if self._hooks is not None:
                # Under the guard (the hook never takes it, nor does it wait for a thread that
                # holds it) and without the write lock (which the hook takes to switch files).
                self._hooks.quiesce()
            self._closed = True
            self._words = _CLOSED_WORDS
            self._epoch = -2
            self._readers.reset()
            self._by_path = {}
            self._frame_cache.clear()
            if self._tier is not None:
                self._tier.close()  # before the state page goes: the tier's thread reads it
                self._tier = None
            self._close_files()

    def _close_writer(self) -> None:
        """Close the writer under the write lock, so that no write of another thread of this process
        is inside it: closing its descriptors under a put would make its next write fail, or
        land in whatever file took their numbers since. A thread that waited for the lock finds
        the instance closed and opens it again (_write_locked_open). When this instance's puts
        left the compressed mutable segment's seek table behind its frames (put_mapped_zstd), it
        is brought up to date first, so a closed store's files are complete seekable files (on a
        full disk it stays a valid table of fewer frames). When the lock cannot be had within
        ``lock_timeout``, the writer is closed without it (logged)."""
        writer = self._writer
        try:
            self._lock.acquire_write(self.lock_timeout)
        except FlatFileDbError as exc:
            logger.warning("%s: closed without the write lock: %s", self._dir_str, exc)
            writer.close()
            return
        try:
            if writer.unlisted:
                try:
                    writer.list_frames()
                except OSError as exc:
                    logger.info(
                        "%s: the seek table of the mutable segment stays behind its frames: %s", self._dir_str, exc
                    )
            writer.close()
        finally:
            self._lock.release_write()

    def _close_files(self) -> None:
        """Release the lock, the state page and the descriptors of an open instance."""
        if isinstance(self._lock, ProcessLock):
            self._close_writer()
            # fsync=False asked for no wait on the disk: a seal's fsync still running is left
            # to finish alone, and the next open fsyncs what it did not reach.
            self._syncer.close(wait=self.fsync)
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
            # and the exit handler already waited for pending seal hooks and seal fsyncs. Closing
            # here would join threads that finalization has stopped (the sync and seal hook
            # threads, the lease reaper): a hang.
            return
        try:
            warnings.warn(f"unclosed {self!r}", ResourceWarning, source=self)
        finally:  # even when warnings are errors
            # Dropped inside this thread's read_lock() of the same lock file, where close() is
            # refused: closed in a thread of its own, as a store finalized by a collection is.
            lock = self._lock
            finalize(self.close, elsewhere=isinstance(lock, ProcessLock) and lock.read_held_here())

    def lost_segments(self) -> list[int]:
        """Numbers of the segments this instance's opens removed after a power loss, because they
        could not be checked: files adopted without a checksum (``adopt_file``) whose fsync was not
        confirmed before the loss. Each removal is also logged as an error. A layer that keeps
        locations (the keyed store) forgets those that point into them."""
        return list(self._lost)

    def _refuse_write(self, operation: str) -> None:
        """Raise FlatFileDbReadOnlyError on a read-only instance, before anything is touched."""
        if self.readonly:
            raise FlatFileDbReadOnlyError(
                f"{operation}(): {self._dir_str} was opened with readonly=True (no writes, no lock)"
            )

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

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.readonly:
            return f"{type(self).__name__}({self._dir_str!r}, readonly=True)"
        return f"{type(self).__name__}({self._dir_str!r}, use_compression={self.use_compression}, fsync={self.fsync})"

    # -- writing ----------------------------------------------------------------------

    def _frames(self, data: Any) -> tuple[list[bytes], list[int], bool]:
        """Frames for one put or batch: compressed, or stored when small (compressed at seal);
        (frames, their uncompressed sizes, stored?)."""
        size = len(data)
        if size < STORED_BELOW_BYTES:
            return [stored_frame(data)], [size], True
        frame = self.frame_bytes
        dsizes = [min(frame, size - i) for i in range(0, size, frame)]
        return (
            compress_frames(data, frame, self.compression_level, self.compression_threads, self.min_frame_saving),
            dsizes,
            False,
        )

    def _after_seal(self, sealed: list[int]) -> None:
        """After segments this thread just sealed (outside the write lock): have them fsynced in
        the background; wait only if older seals are still not durable (``fsync=True``: any;
        ``fsync=False``: those more than WRITER_BACKLOG segments older, so a writer never waits
        for the disk unless it outruns it); then hand them to the seal hook's thread, without
        waiting for it (a re-framing takes seconds: the put that sealed would stand out)."""
        if not sealed:
            return
        self._syncer.request(max(sealed) + 1)
        self._syncer.wait(min(sealed) - (0 if self.fsync else WRITER_BACKLOG))
        if self._hooks is not None:
            self._hooks.submit(sealed)  # it wakes the tier afterwards: the tier uploads the final form
        elif self._tier is not None:
            self._tier.wake()

    def _wait_seal_hooks(self, operation: str = "a wait for the seal hook") -> None:
        """Wait until the seal hook has done its work on every segment sealed so far (for the
        calls whose result depends on it: sync and recompress; close quiesces it instead)."""
        if self._hooks is not None:
            self._refuse_inside_read_lock(operation)
            self._hooks.wait()

    def _refuse_inside_read_lock(self, operation: str) -> None:
        """Raise FlatFileDbUnsafeAccessError, changing nothing, in a thread that holds this store's
        read lock (``read_lock()``) when ``operation`` waits for the write lock, or for the seal
        hook, which takes it: it would wait for ever for the thread that waits."""
        lock = self._lock
        if isinstance(lock, ProcessLock) and lock.read_held_here():
            raise FlatFileDbUnsafeAccessError(
                f"{operation} in a thread that holds the read lock of {self._dir_str} (read_lock()) would "
                "wait for that thread for ever; call it after the read_lock() block"
            )

    def _write_lock(self) -> ContextManager[None]:
        return self._writing()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """The write lock of this instance, open (see _write_locked_open), for a with-block."""
        lock = self._write_locked_open()
        try:
            yield
        finally:
            lock.release_write()

    def _write_locked_open(self) -> Any:
        """Take the write lock of this instance, open: closed (also by another thread while this
        one waited for the lock), it is opened again and the lock taken anew. Returns the lock,
        held. (close() closes the writer under the write lock: a write holding it never has its
        descriptors closed under it, and one that waited finds the instance closed here.)"""
        while True:
            if self._closed:
                self._open()
            lock = self._lock
            try:
                lock.acquire_write(self.lock_timeout)
            except FlatFileDbError:
                if self._closed:
                    continue  # the close took the lock with it
                raise
            if not self._closed:
                return lock
            lock.release_write()

    def put(self, data: Buffer) -> DataLocation:
        """Append one blob and return its location.

        ``data``: bytes, bytearray, or any C-contiguous buffer (memoryview, numpy array,
        ``array.array``, ``mmap``), stored as its bytes in memory order. A writable buffer is
        read in place, without a copy: it must not change until put returns (bytes changed
        meanwhile are stored with a checksum of other bytes, which verify() reports).
        Raises UnsupportedBufferError (a TypeError) for anything else, NonContiguousBufferError
        (a TypeError and ValueError) for a buffer not in C order; FlatFileDbLockTimeoutError
        when ``lock_timeout`` passes first. Nothing is written on either error.
        A put that seals the full mutable segment leaves its re-framing (or compression) to the
        store's seal hook thread and returns without waiting for it; ``close()`` waits.
        """
        if type(data) is not bytes:  # pylint: disable=unidiomatic-typecheck  # fast path for the common case
            data = as_bytes_like(data)
        checksum = blob_checksum(data)
        # Compressed before the lock; a small blob becomes a stored frame, built under the lock
        # in the mutable segment's map (put_mapped_zstd) or by _put_one_locked.
        frames = self._frames(data) if self.use_compression and len(data) >= STORED_BELOW_BYTES else None
        if self._closed:
            self._open()
        lock = self._lock
        try:
            lock.acquire_write(self.lock_timeout)  # a read-only instance's raises FlatFileDbReadOnlyError
        except FlatFileDbError:
            if not self._closed:  # a timeout, a read-only instance: not a close that took the lock
                raise
            lock = self._write_locked_open()
        if self._closed:  # closed by another thread while this one waited for the lock
            lock.release_write()
            lock = self._write_locked_open()
        try:
            writer = self._writer
            if frames is None and len(data) <= writer.map_limit:
                if writer.kind == KIND_RAW:
                    start = writer.put_mapped(data, checksum, self.MAX_DAT_FILE_SIZE)
                else:
                    start = writer.put_mapped_zstd(data, checksum, self.MAX_DAT_FILE_SIZE)
                if start >= 0:  # the common case: nothing to prepare, room in the maps
                    return new_location((writer.path, start, start + len(data)))
            location = self._put_one_locked(data, checksum, frames)
            sealed = writer.take_sealed() if writer.sealed else None
        finally:
            lock.release_write()
        if sealed:
            self._after_seal(sealed)
        return location

    def _put_one_locked(
        self, data: Any, checksum: int, frames: tuple[list[bytes], list[int], bool] | None, flags: int = 0
    ) -> DataLocation:
        """put()'s general path (the write lock held): prepare the mutable segment if needed,
        then append through the maps when they can take it, else with a write. ``flags``: of the
        BLOB record (FLAG_LOG for a log record, in a segment of index version 2)."""
        writer = self._writer
        words = writer.words  # (not self._words: a close in another thread sets it before it waits for the lock)
        if (
            words[W_DIRTY]
            or words[W_SEGMENT] != writer.segment
            or words[W_END] >= self.MAX_DAT_FILE_SIZE
            or words[W_FRAMES] >= MUTABLE_FRAMES_MAX
        ):
            start = writer.prepare(self.MAX_DAT_FILE_SIZE)
        else:
            start = words[W_END]
        end = start + len(data)
        record = encode_record(REC_BLOB, flags, start, end - start, checksum) if flags else None
        if writer.kind == KIND_RAW:
            if end - start > writer.map_limit or not writer.append_mapped(data, checksum, start, end, flags):
                writer.append_raw(data, None, start, end, record or encode_blob(start, end - start, checksum))
        elif flags or not writer.append_mapped_zstd(data, checksum, start):
            if frames is None:  # a small blob, or the mutable segment is compressed though this instance is not
                frames = self._frames(data)
            writer.append_zstd(
                frames[0], frames[1], start, end, record or encode_blob(start, end - start, checksum), stored=frames[2]
            )
        return new_location((writer.path, start, end))

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
        locations: list[DataLocation] = []
        with self._writing():
            index = 0
            while index < len(items):
                index = self._put_run_locked(items, checksums, index, locations, frames)
                frames = None  # precompressed frames cover the whole batch only
            sealed = self._writer.take_sealed()
        self._after_seal(sealed)
        return locations

    def _put_run_locked(  # pylint: disable=too-many-arguments
        self,
        items: list[Any],
        checksums: list[int],
        index: int,
        locations: list[DataLocation],
        frames: tuple[list[bytes], list[int], bool] | None,
        log: bool = False,
    ) -> int:
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
        if log and stop == len(items):  # the last item is a log record
            last = encode_record(REC_BLOB, FLAG_LOG, starts[-1], sizes[count - 1], checksums[stop - 1])
            records = records[:-RECORD_BYTES] + last
        run = items[index:stop]
        if writer.kind == KIND_RAW:
            writer.append_raw(None, run, start, ends[-1], records)
        else:
            if frames is None or index != 0 or stop != len(items):
                frames = self._frames(b"".join(run))
            writer.append_zstd(frames[0], frames[1], start, ends[-1], records, stored=frames[2])
        locations.extend(map(new_location, zip(itertools.repeat(writer.path), starts, ends)))
        return stop

    def sync(self) -> None:
        """Make every acknowledged blob durable now (for ``fsync=False`` stores).

        One ``fdatasync`` of the mutable segment's data and index, after waiting for the
        background fsync of recently sealed segments; afterwards a power loss cannot cost
        any blob acknowledged before this call. Raises the OSError of a failed fsync. When
        another thread's close() (``fsync=False``) leaves the fsync of sealed segments undone,
        the instance is opened again and the fsync done by it. Waits too for the seal hook's
        re-framing of segments sealed so far.
        """
        self._refuse_write("sync")
        self._reopen_if_closed()
        self._wait_seal_hooks("sync()")
        while True:
            with self._writing():
                self._writer.resync()
                self._writer.sync()
                mutable = self._writer.segment
                syncer = self._syncer
            syncer.request(mutable)
            error = syncer.wait(mutable)
            if not isinstance(error, FlatFileDbUnsafeAccessError):  # (that one: a close left it)
                break
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
        with self._writing():
            writer = self._writer
            if writer.prepare(self.MAX_DAT_FILE_SIZE) and force_new_file:
                writer.rotate()
            result = Path(writer.path), writer.segment
            sealed = writer.take_sealed()
        self._after_seal(sealed)
        return result

    # -- reading ----------------------------------------------------------------------

    def get(
        self,
        data_location: DataLocation,
        slice: Slice | None = None,  # pylint: disable=redefined-builtin
        lock_free_access: bool = False,  # pylint: disable=unused-argument  # reference API
    ) -> bytes:
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
        # _lookup and map_read inlined: one Python call less per get (the hot path).
        if data_location.__class__ is DataLocation and self._words[W_EPOCH] == self._epoch:
            file_path, start, end = data_location
            reader = self._by_path.get(file_path)
            if reader is None:
                file_path, start, end, reader = self._resolve(data_location)
        else:
            file_path, start, end, reader = self._resolve(data_location)
        if slice is not None:
            # The location itself first (as a get of the whole blob checks it): a slice inside a
            # location that starts before 0 or ends past the segment is refused, not served.
            if start.__class__ is not int or end.__class__ is not int or not 0 <= start <= end <= reader.limit:
                start, end = self._readers.check_range(reader, file_path, start, end)
            start, end = fast_slice(start, end, slice) or apply_slice(file_path, start, end, slice)
        if (
            type(start) is int  # pylint: disable=unidiomatic-typecheck
            and type(end) is int  # pylint: disable=unidiomatic-typecheck
            and 0 <= start < end <= reader.mapped
            and end - start <= MAP_READ_BYTES
        ):
            return reader.mm[start:end]  # type: ignore[index]  # mapped > 0 means mm is set
        if (
            reader.raw is False
            and type(start) is int  # pylint: disable=unidiomatic-typecheck
            and type(end) is int  # pylint: disable=unidiomatic-typecheck
            and 0 <= start <= end <= reader.limit
        ):
            return reader.read(start, end)  # compressed, inside the committed end: no range check left
        return self._readers.read(reader, file_path, start, end)

    def _lookup(self, location: Any) -> tuple[Any, Any, Any, SegmentReader]:
        """The fast path of get() as a function: a cached reader for a cached path, else _resolve.
        (Offsets come back as given on the fast path: callers check them, as get() does.)"""
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


# By id, not a WeakSet: that hashes the store, and a subclass that defines __eq__ has no hash.
_LIVE_STORES: weakref.WeakValueDictionary[int, Store] = weakref.WeakValueDictionary()


def _after_fork_in_child() -> None:
    # A thread of the parent that was opening or closing a store (a close waits seconds for the
    # seal hook) does not exist in the child: the guard it held would stay held for ever.
    # The same for a reading thread inside the frame cache or a refresh of the segment readers:
    # the cache starts empty (its contents may be mid-change), the readers open afresh.
    # pylint: disable=protected-access  # this module's class and its parts
    for store in list(_LIVE_STORES.values()):
        store._guard = threading.Lock()
        store._frame_cache.reset_after_fork()
        readers = getattr(store, "_readers", None)  # None: a store still being opened at the fork
        if readers is not None:
            readers.reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def check_tiering(tiering: Any) -> Tiering | None:
    """``tiering`` if it is None or a ``Tiering``; TypeError otherwise (before anything is written)."""
    if tiering is not None and not isinstance(tiering, Tiering):
        raise TypeError(
            "tiering must be a Tiering (from conduit_flat_file_db.tiering import Tiering), "
            f"not {type(tiering).__name__}"
        )
    return tiering


def map_read(reader: SegmentReader, start: Any, end: Any) -> bytes | None:
    """Bytes [start, end) copied from the segment's read map when the map-read test passes (int
    offsets, a non-empty range within the mapped part, at most MAP_READ_BYTES: past that one pread
    is cheaper than faulting the pages in); else None, and the caller reads them with a pread."""
    if type(start) is int and type(end) is int and 0 <= start < end <= reader.mapped and end - start <= MAP_READ_BYTES:  # pylint: disable=unidiomatic-typecheck
        return reader.mm[start:end]  # type: ignore[index]  # mapped > 0 means mm is set
    return None


def _run_seal_hook(store: Store, sealed: list[int]) -> None:
    """The seal hook thread's job: the hook on segments just sealed, then the tier woken."""
    # pylint: disable=protected-access  # this module's class
    # The hook's work (re-framing, compressing) is an optimisation of segments already
    # sealed and durable: it never raises, so no put, close or later job is affected.
    try:
        store._seal_hook(store, sealed)  # type: ignore[misc]  # set whenever a runner exists
    except Exception:  # pylint: disable=broad-exception-caught
        logger.exception("%s: after sealing segments %s the seal hook failed", store.datadir, sealed)
    if store._tier is not None:
        store._tier.wake()


def _tier_words(words: Any) -> tuple[int, int]:
    """(mutable segment, every segment below this is fsynced) of a state page's ``words``: what
    the tier may upload."""
    return words[W_SEGMENT], words[W_SYNCED_BELOW]


def _repair_if_alive(store: weakref.ref[Store]) -> None:
    """ReaderCache's repair callback: the store's repair, through a weak reference."""
    instance = store()
    if instance is not None:
        instance._repair_state()  # pylint: disable=protected-access  # this module's class


__all__ = ["DEFAULT_FRAME_BYTES", "DEFAULT_MAX_DAT_FILE_SIZE", "SealHook", "Store", "map_read", "new_location"]
