"""The public class ``FlatFileDb``, and the names the original engine's README imports from here.

``FlatFileDb`` is the engine (store.py) with its maintenance operations (maintenance.py);
this module spells out its constructor, documents every option, and makes it picklable.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

from .errors import FlatFileDbUnsafeAccessError, RemoteTimeoutError, TieringError
from .frames import DEFAULT_LEVEL, DEFAULT_MIN_SAVING
from .maintenance import CompressMode, MaintainedStore, as_compress_mode, compress_sealed_if_it_pays, reframe_sealed
from .store import DEFAULT_FRAME_BYTES, DEFAULT_FRAME_CACHE_BYTES, DEFAULT_MAX_DAT_FILE_SIZE
from .tiering.config import Tiering, check_timeout
from .tiering.remote_db import RemoteFlatFileDb
from .tiering.upload import UploadStoppedError
from .types import DataLocation, Slice

MAX_DAT_FILE_SIZE = DEFAULT_MAX_DAT_FILE_SIZE
DEFAULT_MIN_SEGMENT_SAVING = 0.1


class FlatFileDb(MaintainedStore):
    """An append-only store of blobs in rotating segment files, with its maintenance operations.

    Args:
        datadir: directory of the store (created if missing). A relative path is
            resolved once, against the working directory at construction.
        mutable_file_lock_path: the lock file shared by every process using the store.
            Default (None): ``<datadir>.lock`` beside the datadir, the command line's
            default too (trailing slashes and ``.`` resolved first). Every process must use
            the same lock file for a store: another one is not detected, and writers
            under two lock files corrupt each other's blobs (GUARANTEES.md, "What the
            locks do not do").
        fsync: when True, ``put`` returns only after the blob and its index record
            are on stable storage (GUARANTEES.md).
        use_compression: False/``CompressMode.NO``: raw segments. True/``CompressMode.YES``:
            new segments are seekable Zstandard files. ``CompressMode.AUTO``: new segments are
            written raw and compressed when sealed if a sample shows it saves at least
            ``min_segment_saving``.
        lock_timeout: seconds to wait for the write lock before raising
            FlatFileDbLockTimeoutError; None waits for ever.
        max_file_size: a segment is sealed and a new one started once it holds this many
            bytes (uncompressed; a blob is never split). Also the attribute
            ``MAX_DAT_FILE_SIZE``, which may be changed at any time.
        compression_level: Zstandard level of new frames.
        frame_bytes: largest uncompressed size of one frame; a slice read
            decompresses whole frames, so smaller frames make small reads cheaper.
        frame_cache_bytes: bound of the LRU cache of decompressed frames (0: off).
        compression_threads: frames of one large batch are compressed in parallel.
        reframe_on_seal: rewrite a compressed segment with ``frame_bytes`` frames when
            it is sealed (small puts make small frames, which compress poorly).
        min_frame_saving: per frame: a frame that compression shrinks by less than this
            fraction is stored uncompressed, so reads of it cost a copy, not a decompression
            (LevelDB's rule; default 1/8; 0 stores only what compression enlarges).
        min_segment_saving: per segment, for ``CompressMode.AUTO`` and ``recompress(mode=AUTO)``:
            a sealed segment is compressed only when a sample of it shrinks by at least this
            fraction (default 0.1).
        readonly: open an existing store for reading only: no lock, no recovery, no file
            created or written (the lock file is not touched); works on a read-only mount
            and without write permission; sees what writers in other processes commit.
            Every write raises FlatFileDbReadOnlyError (GUARANTEES.md "Read-only opens").
        log_records: new segments get index version 2, whose records may mark a blob as a log
            record (:meth:`put_log`, :meth:`iter_log`): what the keyed store writes its keys with.
            Releases before version 2 existed cannot open such segments; leave it False
            unless a layer above the engine needs it.
        lock_leases: keep the write lock for a moment after a put (no syscall for the next
            put of this process; GUARANTEES.md "Locks"). False gives it back at once: for a
            layer whose writers already take turns on a lock of their own (the keyed store),
            where a lease would only make the next writer wait for it to end.
        min_savings: deprecated name of ``min_segment_saving`` (a DeprecationWarning).
        tiering: a :class:`~conduit_flat_file_db.tiering.Tiering`: sealed segments are uploaded
            to S3-compatible object storage in the background and read back from it once local
            retention removed their data files (GUARANTEES.md "Tiering").

    Thread and process safety: every method may be called from any thread; many
    processes may open the same datadir with the same lock path (GUARANTEES.md).
    A ``FlatFileDb`` pickles as its constructor arguments (with the current
    ``MAX_DAT_FILE_SIZE`` and ``min_segment_saving``): unpickling opens the store
    again, so an instance can be handed to ``spawn`` or ``forkserver`` worker processes.
    """

    def __init__(  # pylint: disable=too-many-arguments,too-many-locals
        self,
        datadir: Path | str,
        mutable_file_lock_path: Path | str | None = None,
        fsync: bool = False,
        use_compression: bool | CompressMode = False,
        *,
        lock_timeout: float | None = None,
        max_file_size: int = DEFAULT_MAX_DAT_FILE_SIZE,
        compression_level: int = DEFAULT_LEVEL,
        frame_bytes: int = DEFAULT_FRAME_BYTES,
        frame_cache_bytes: int = DEFAULT_FRAME_CACHE_BYTES,
        compression_threads: int = 2,
        reframe_on_seal: bool = True,
        min_frame_saving: float = DEFAULT_MIN_SAVING,
        min_segment_saving: float = DEFAULT_MIN_SEGMENT_SAVING,
        readonly: bool = False,
        min_savings: float | None = None,
        log_records: bool = False,
        lock_leases: bool = True,
        tiering: Tiering | None = None,
    ) -> None:
        mode = as_compress_mode(use_compression)
        if min_savings is not None:
            if min_segment_saving != DEFAULT_MIN_SEGMENT_SAVING:
                raise TypeError("give min_segment_saving or its deprecated name min_savings, not both")
            warnings.warn(
                "FlatFileDb(min_savings=...) is deprecated; use min_segment_saving=", DeprecationWarning, stacklevel=2
            )
            min_segment_saving = min_savings
        self.compress_mode = mode
        self.min_segment_saving = min_segment_saving  # checked by the property
        super().__init__(
            datadir,
            mutable_file_lock_path,
            fsync,
            mode is CompressMode.YES,
            lock_timeout=lock_timeout,
            max_file_size=max_file_size,
            compression_level=compression_level,
            frame_bytes=frame_bytes,
            frame_cache_bytes=frame_cache_bytes,
            compression_threads=compression_threads,
            reframe_on_seal=reframe_on_seal,
            min_frame_saving=min_frame_saving,
            readonly=readonly,
            seal_hook=compress_sealed_if_it_pays if mode is CompressMode.AUTO else reframe_sealed,
            log_records=log_records,
            lock_leases=lock_leases,
            tiering=tiering,
        )

    @property
    def min_segment_saving(self) -> float:
        """Under ``CompressMode.AUTO``, the share a sample of a sealed segment must shrink by
        for the segment to be compressed; checked when set, like the constructor's argument
        (so a pickled copy always opens)."""
        return self._min_segment_saving

    @min_segment_saving.setter
    def min_segment_saving(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"min_segment_saving must be a number, not {type(value).__name__}")
        if not 0.0 <= value < 1.0:
            raise ValueError(f"min_segment_saving (min_savings) must be in [0, 1), got {value}")
        self._min_segment_saving = float(value)

    @property
    def min_savings(self) -> float:
        """Deprecated name of :attr:`min_segment_saving`."""
        warnings.warn("FlatFileDb.min_savings is deprecated; use min_segment_saving", DeprecationWarning, stacklevel=2)
        return self.min_segment_saving

    @min_savings.setter
    def min_savings(self, value: float) -> None:
        warnings.warn("FlatFileDb.min_savings is deprecated; use min_segment_saving", DeprecationWarning, stacklevel=2)
        self.min_segment_saving = value

    # -- tiering ------------------------------------------------------------------------------

    def _the_tier(self, operation: str) -> Any:
        self._reopen_if_closed()
        if self._tier is None:
            raise TieringError(f"{operation}(): {self._dir_str} was opened without tiering=Tiering(...)")
        return self._tier

    def sync_tiering(self, timeout: float | None = None) -> None:
        """Return once every sealed segment is uploaded and local retention has been applied.

        Makes the sealed segments durable first (uploads take only durable segments), then
        uploads in this thread. Raises the tier's typed error when an upload fails (after the
        client's retries), RemoteTimeoutError when ``timeout`` seconds pass first (another
        process may hold the upload turn), TieringError without tiering or when ``close()`` in
        another thread cuts it short.
        """
        check_timeout("sync_tiering(timeout=)", timeout)
        self._refuse_write("sync_tiering")
        tier = self._the_tier("sync_tiering")
        deadline = None if timeout is None else time.monotonic() + timeout
        self.sync()
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            pending = tier.run_pass(blocking=True, timeout=left)
            if tier.stopped:  # close() in another thread cut the pass: say so, and reopen nothing
                raise UploadStoppedError(
                    f"{self._dir_str}: the store was closed during sync_tiering(); what is not uploaded "
                    "yet is uploaded after the next open"
                )
            if pending <= 0:
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise RemoteTimeoutError(f"{self._dir_str}: sealed segments still not durable after {timeout} s")
            self.sync()

    def tiering_status(self) -> dict[str, Any]:
        """The tier's state: ``pending`` (sealed segments not uploaded yet), ``uploaded``,
        ``remote_only`` (uploaded, no local data file), ``local_bytes``, ``uploads`` (by this
        instance), ``last_error`` and ``last_error_at`` (uploads stalled: nothing is removed
        locally that is not uploaded), ``requests`` (requests and bytes by kind), ``cache``."""
        return dict(self._the_tier("tiering_status").status(self.mutable_segment()))

    def gc_tiering(self) -> dict[str, int]:
        """Remove what crashes left in the bucket: objects of segments that have no manifest (an
        upload cut short) and manifests of segments deleted here (a delete cut short). Returns
        counts: ``{"manifests": n, "objects": m}``."""
        self._refuse_write("gc_tiering")
        tier = self._the_tier("gc_tiering")
        with self._lock.write(self.lock_timeout):
            mutable = self.mutable_segment()
        return dict(tier.gc(mutable))

    @staticmethod
    def open_remote(url: str, **options: Any) -> RemoteFlatFileDb:
        """Open the store uploaded to ``url`` (``s3://bucket/prefix``) read-only, from any machine,
        with no local datadir: see :class:`~conduit_flat_file_db.tiering.remote_db.RemoteFlatFileDb`.
        ``options`` are those of :class:`~conduit_flat_file_db.tiering.Tiering`."""
        return RemoteFlatFileDb(url, **options)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle as the constructor arguments: the copy opens the store afresh (in another
        process, its own descriptors, lock handle and state page: none of these can be sent)."""
        options = {
            "fsync": self.fsync,
            "use_compression": self.compress_mode,
            "lock_timeout": self.lock_timeout,
            "max_file_size": self.MAX_DAT_FILE_SIZE,
            "compression_level": self.compression_level,
            "frame_bytes": self.frame_bytes,
            "frame_cache_bytes": self._frame_cache.max_bytes,
            "compression_threads": self.compression_threads,
            "reframe_on_seal": self.reframe_on_seal,
            "min_frame_saving": self.min_frame_saving,
            "min_segment_saving": self.min_segment_saving,
            "readonly": self.readonly,
            "log_records": self.log_records,
            "lock_leases": self.lock_leases,
            "tiering": self.tiering,
        }
        # The absolute paths resolved at construction: a worker in another working directory must
        # open this store, not a new one beside it.
        return _reopen, (type(self), Path(self._abs_dir), Path(self._abs_lock), options)


def _reopen(cls: type[FlatFileDb], datadir: Path, lock_path: Path, options: dict[str, Any]) -> FlatFileDb:
    """Unpickle a FlatFileDb: open it again with the arguments it was opened with."""
    return cls(datadir, lock_path, **options)


__all__ = ["MAX_DAT_FILE_SIZE", "DataLocation", "FlatFileDb", "FlatFileDbUnsafeAccessError", "Slice"]
