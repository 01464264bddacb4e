"""The keyed store's core: its directory, the commit of keys beside values, and lookups.

A write appends its values and then one key-log record naming their keys, in one engine
commit (``put_logged``: one acquisition of the engine's write lock). That is the whole write:
the index (SQLite or LMDB) is a cache of the key logs, brought up to them in batches
("applied") by whichever writer finds the unapplied tail long enough, and at close.

Every instance follows the log past what it has read into an in-memory *tail*: the newest row
(or deletion) of each key written since, with the position of its record. A lookup first asks
the engine whether the log moved (a few reads of its shared state page), reads the new
records if it did, and then consults the tail before the index. So a write is visible to every
process as soon as ``put`` returns, whether or not it was applied. Applying (under
``index.lock``, which only appliers take) writes the tail's entries past the index's
checkpoint and moves the checkpoint to the last record read, in one index transaction.

A crash leaves values no key names (reclaimed by vacuum), or key logs not yet applied, which
the next applier applies. The index can be behind the key logs, never ahead: after a power
loss a writer's open checks that the checkpoint's record is still in the segments, and
rebuilds the index from them if not.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Iterable, Iterator, TypeVar

import xxhash

from ..errors import (
    CorruptionError,
    FlatFileDbError,
    FlatFileDbNotFoundError,
    FlatFileDbReadOnlyError,
    FormatError,
    IndexVersionError,
    InvalidLocationError,
)
from ..flat_file_db import FlatFileDb
from ..locking import ProcessLock, process_lock_for, release_process_lock
from ..log_records import LOG_START, LoggedOne, LoggedPut, LogPosition
from ..naming import STATE_FILE_NAME, parse_name
from ..syncer import finalize
from ..types import BlobRecord, DataLocation, Slice
from .index_base import Checkpoint, IndexBase, IndexDamagedError
from .keylog import Entry, Row, decode_keylog, encode_key, encode_keylog, encode_one_put, new_row

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]  # pylint: disable=invalid-name

logger = logging.getLogger("conduit_flat_file_db")

SEGMENTS_DIR = "segments"
LOCK_NAME = "index.lock"
VACUUM_LOCK_NAME = "vacuum.lock"  # held to write by the vacuum (or backup) at work; shared by
# writers of values that become segments of their own (streams, arrays) from their copy to their
# commit: in between no key names the segment, and a vacuum would take it for an orphan
SEGMENTS_LOCK_NAME = "segments.lock"
STAGING_DIR = "staging"
_RETRIES = 8  # lookups again when a vacuum moved a value between the lookup and the read
APPLY_AT = 2048  # a writer applies the tail to the index once it holds this many keys
_TAIL_MAX = 16384  # a reader drops the applied part of its tail beyond this many keys
_APPLY_CHUNK = 100_000  # keys applied per index transaction while catching up
_MISSING = object()
_SKIP_HINT = (
    "; the keys it wrote are unknown. KeyedStore(..., skip_damaged_logs=True) opens the store without"
    " it: those keys keep their values from before it, or are absent (verify() lists it)"
)
_checksum = xxhash.xxh3_64_intdigest
_new_location = tuple.__new__
_new_checkpoint = functools.partial(tuple.__new__, Checkpoint)
_K = TypeVar("_K", bound="KeyedCore")


def _open_index(kind: str, directory: str, readonly: bool) -> IndexBase:
    if kind == "sqlite":
        from .index_sqlite import SqliteIndex  # pylint: disable=import-outside-toplevel  # one of two

        return SqliteIndex(os.path.join(directory, SqliteIndex.NAME), readonly)
    if kind == "lmdb":
        from .index_lmdb import LmdbIndex  # pylint: disable=import-outside-toplevel  # an optional extra

        return LmdbIndex(os.path.join(directory, LmdbIndex.NAME), readonly)
    raise ValueError(f"index is 'sqlite' or 'lmdb', not {kind!r}")


class KeyedCore:  # pylint: disable=too-many-instance-attributes  # configuration, engine, index, caches
    """Directory, engine, index, write lock; the commit and the lookup. See KeyedStore."""

    def __init__(  # pylint: disable=too-many-arguments
        self,
        path: str | os.PathLike[str],
        *,
        readonly: bool = False,
        use_compression: bool = False,
        fsync: bool = False,
        index: str = "sqlite",
        max_file_size: int = 128 * 2**20,
        lock_timeout: float | None = None,
        skip_damaged_logs: bool = False,
    ) -> None:
        if index not in ("sqlite", "lmdb"):
            raise ValueError(f"index is 'sqlite' or 'lmdb', not {index!r}")
        for name, flag in (("readonly", readonly), ("fsync", fsync), ("skip_damaged_logs", skip_damaged_logs)):
            if not isinstance(flag, bool):  # readonly="no" was true: a store opened the other way
                raise TypeError(f"{name} is True or False, not {flag!r:.40}")
        if isinstance(path, (str, os.PathLike)) and not os.fspath(path):
            raise ValueError("a keyed store's path is empty (it would be the current directory: pass '.')")
        self._options = {
            "readonly": readonly,
            "use_compression": use_compression,
            "fsync": fsync,
            "index": index,
            "max_file_size": max_file_size,
            "lock_timeout": lock_timeout,
            "skip_damaged_logs": skip_damaged_logs,
        }
        self.path = Path(os.path.abspath(os.fspath(path)))
        self.readonly = bool(readonly)
        self.fsync = bool(fsync)
        self.index_kind = index
        self.lock_timeout = lock_timeout
        self._dir = str(self.path)
        self._paths: dict[int, str] = {}
        self._segs: dict[str, int] = {}
        self._closed = True
        # The tail: key -> (row or None, segment and end of its record), past the index's
        # checkpoint as far as this instance has read the key logs (to _position; the last
        # record read is _last). Changed under _tail_lock; read without it (dict lookups).
        self._tail_lock = threading.RLock()
        self._tail: dict[bytes, tuple[Row | None, int, int]] = {}
        self._position = LOG_START
        self._last = Checkpoint(-1, 0, 0)
        self._present: set[int] = set()  # segments known to exist (read again on a miss)
        self.skip_damaged_logs = bool(skip_damaged_logs)
        self._skipped: dict[tuple[int, int], str] = {}  # damaged key-log records passed over: why
        if not os.path.isdir(os.path.join(self._dir, SEGMENTS_DIR)):
            if self.readonly:
                raise FlatFileDbNotFoundError(f"{self._dir} is not a keyed store (no {SEGMENTS_DIR}/ in it)")
            _refuse_engine_datadir(self._dir)
        self.db = FlatFileDb(
            os.path.join(self._dir, SEGMENTS_DIR),
            os.path.join(self._dir, SEGMENTS_LOCK_NAME),
            False,  # a commit is made durable once, after its key log (sync() below)
            use_compression,
            lock_timeout=lock_timeout,
            max_file_size=max_file_size,
            readonly=self.readonly,
            log_records=True,
        )
        self._lock: ProcessLock | None = None
        self._vacuum_lock: ProcessLock | None = None
        try:
            if not self.readonly:
                # After the engine checked the options it shares: a refused one creates nothing.
                os.makedirs(os.path.join(self._dir, STAGING_DIR), exist_ok=True)
                self._lock = process_lock_for(os.path.join(self._dir, LOCK_NAME))
                self._lock.leases = False  # a lease would keep the next writer waiting up to its end
                self._vacuum_lock = process_lock_for(os.path.join(self._dir, VACUUM_LOCK_NAME))
            self.index = self._open_index_or_rebuild()
            if not self.readonly:
                self._sweep_staging()
        except BaseException:
            self._release()
            raise
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------

    def _open_index_or_rebuild(self) -> IndexBase:
        if self.readonly:
            try:
                index = _open_index(self.index_kind, self._dir, True)
            except IndexDamagedError as exc:
                raise IndexDamagedError(f"{exc}; open the store once for writing to rebuild its index") from exc
            try:
                checkpoint = index.checkpoint()
            except BaseException:
                index.close()  # (an LMDB environment left open read-only would refuse this process's writers)
                raise
            self._position = LogPosition(checkpoint.segment, checkpoint.end, checkpoint.index_bytes)
            self._last = checkpoint
            return index
        with self._write_lock():
            try:
                index = _open_index(self.index_kind, self._dir, False)
            except IndexDamagedError as exc:
                index = self._fresh_index_locked(exc)
            try:
                try:
                    self._recover_locked(index)
                except IndexDamagedError as exc:  # found by a read past the open's checks (LMDB's)
                    index.close()
                    index = self._fresh_index_locked(exc)
                    self._recover_locked(index)
            except BaseException:
                index.close()
                raise
        return index

    def _fresh_index_locked(self, exc: IndexDamagedError) -> IndexBase:
        """Set the damaged index aside and open an empty one, which recovery fills from the key logs."""
        logger.error("%s: the index cannot be used (%s); rebuilding it from the key logs", self._dir, exc)
        self._set_aside_index()
        return _open_index(self.index_kind, self._dir, False)

    def _set_aside_index(self) -> None:
        """Move a damaged index out of the way (kept for inspection, never read again)."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for name in ("index.sqlite3", "index.sqlite3-wal", "index.sqlite3-shm", "index.lmdb"):
            source = os.path.join(self._dir, name)
            if os.path.exists(source):
                os.rename(source, f"{source}.damaged-{stamp}-{os.getpid()}")

    def _new_index_locked(self, exc: IndexDamagedError) -> None:
        """Set this instance's damaged index aside and open an empty one in its place (index.lock
        held; other processes read the old file until they open the store again)."""
        self.index.close()
        self.index = self._fresh_index_locked(exc)

    def _recover_locked(self, index: IndexBase, rebuild: bool = False) -> None:
        """Bring ``index`` up to the key logs: rebuild it (or with ``rebuild``) when it is ahead
        of them (a power loss cut the segments' tail after the index recorded it), else replay
        what it lacks."""
        if not rebuild and not index.trusted():
            logger.error("%s: the index was not closed cleanly before a reboot; rebuilding it", self._dir)
            rebuild = True
        if not rebuild:
            checkpoint = index.checkpoint()
            if checkpoint.segment >= 0 and not self._record_present(checkpoint):
                logger.error(
                    "%s: the index has applied a key log the segments no longer hold (a power loss); rebuilding it",
                    self._dir,
                )
                rebuild = True
        if not rebuild:
            self._catch_up(index)
            return
        with self._tail_lock:
            self._tail = {}
            self._position = LOG_START
            self._last = Checkpoint(-1, 0, 0)
        self.index = index
        self._rebuild_locked()

    def _record_present(self, checkpoint: Checkpoint) -> bool:
        """Whether the key-log record the checkpoint names is still in the segments: read where
        the checkpoint says its BLOB record ends (one pread), else by a scan of the segment."""
        found = self.db.log_record_at(LogPosition(checkpoint.segment, checkpoint.end, checkpoint.index_bytes))
        if found is not None and found.checksum == checkpoint.checksum:
            return True
        for record in self.db.iter_log((checkpoint.segment, 0)):
            if record.segment != checkpoint.segment or record.end_offset > checkpoint.end:
                return False
            if record.end_offset == checkpoint.end:
                return record.checksum == checkpoint.checksum
        return False

    def close(self) -> None:
        """Apply what the index lacks, then close the index and the engine; a closed store
        cannot be used again."""
        if self._closed:
            return
        try:
            self._closed = True
            if not self.readonly and self._tail:
                self._apply()
        finally:
            self._release()

    def _release(self) -> None:
        index = getattr(self, "index", None)
        if index is not None:
            index.close()
        self.db.close()
        for lock in (self._lock, self._vacuum_lock):
            if lock is not None:
                release_process_lock(lock)
        self._lock = self._vacuum_lock = None

    def __enter__(self: _K) -> _K:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            # Finalized by a collection, inside what its thread holds (the index environments'
            # guard, an index transaction, the write lock): closed in a thread of its own.
            finalize(self.close)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle as the constructor's arguments: the copy opens the store afresh (in a worker
        process, its own descriptors, locks and index connections)."""
        return _reopen, (type(self), self._dir, self._options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._dir!r}, index={self.index_kind!r}, readonly={self.readonly})"

    # -- locations ------------------------------------------------------------------------

    def _path(self, segment: int) -> str:
        path = self._paths.get(segment)
        if path is None:
            path = self._paths[segment] = self.db.segment_path(segment, as_issued=True)
            self._segs[path] = segment
        return path

    def _segment_of(self, location: DataLocation) -> int:
        segment = self._segs.get(location[0])
        if segment is None:
            name = os.path.basename(location[0])
            segment = int(name[5:13])  # data_NNNNNNNN.dat[.zst]: naming.py
            self._segs[location[0]] = segment
            self._paths.setdefault(segment, location[0])
        return segment

    def _location(self, row: Row) -> DataLocation:
        path = self._paths.get(row.segment) or self._path(row.segment)
        return _new_location(DataLocation, (path, row.start, row.end))

    # -- the write path -------------------------------------------------------------------

    @contextlib.contextmanager
    def _no_vacuum(self) -> Iterator[None]:
        """Hold off vacuums (shared with other such writers) while a segment no key names yet is
        being made and committed."""
        lock = self._vacuum_lock
        if lock is None:
            raise self._unlocked_error()
        with lock.read(self.lock_timeout):
            yield

    def _write_lock(self) -> Any:
        if self._lock is None:
            raise self._unlocked_error()
        return self._lock.write(self.lock_timeout)

    def _unlocked_error(self) -> FlatFileDbError:
        """Why this instance holds no locks: it is open read-only, or it was closed."""
        if self.readonly:
            return FlatFileDbReadOnlyError(f"{self._dir}: the keyed store is open read-only")
        return FlatFileDbError(f"the keyed store {self._dir} is closed")

    def _check_writable(self, what: str) -> None:
        if self.readonly:
            raise FlatFileDbReadOnlyError(f"{what}: the keyed store {self._dir} is open read-only")
        self._check_open(what)

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise FlatFileDbError(f"{what}: the keyed store {self._dir} is closed")

    def _commit(
        self, puts: list[tuple[bytes, Any, bytes]], dels: Iterable[bytes] = (), refs: Iterable[Entry] = ()
    ) -> None:
        """Commit ``puts`` (key, value, meta), deletions and ``refs`` (PUT entries of values
        already stored: streams, arrays) as one key-log record, in that order."""
        values = [value for _, value, _ in puts]
        checksums = [_checksum(value) for value in values]
        created = time.time_ns()
        tail: list[Entry] = [Entry(key, None) for key in dels]
        tail.extend(refs)
        made: list[Any] = []
        segment_of = self._segment_of

        def make_log(locations: list[DataLocation]) -> bytes:
            segments = self._segs
            entries: list[Any] = []
            append = entries.append
            for (key, _, meta), loc, checksum in zip(puts, locations, checksums):
                segment = segments.get(loc[0])
                if segment is None:
                    segment = segment_of(loc)
                append((key, new_row((segment, loc[1], loc[2], checksum, created, 0, meta))))
            entries.extend(tail)
            blob = encode_keylog(entries, created)
            made.append(entries)
            made.append(blob)
            return blob

        self._check_writable("write")
        self._logged(self.db.put_logged(values, make_log), made)

    def _commit_one(self, key: bytes, value: Any, meta: bytes) -> None:
        """_commit([(key, value, meta)]), for the one-key write (its hot path): the engine builds
        nothing but the record, and commits the value and its record together."""
        created = time.time_ns()
        rows: list[Row] = []

        def make_log(segment: int, start: int, end: int, checksum: int) -> bytes:
            rows.append(new_row((segment, start, end, checksum, created, 0, meta)))
            return encode_one_put(key, segment, start, end, checksum, created, meta)

        put = self.db.put_logged_one(value, make_log)
        self._logged_one(key, rows[-1], put)

    def _logged_one(self, key: bytes, row: Row, put: LoggedOne) -> None:
        """_logged for the commit of one key (put_logged_one's)."""
        self._own(((key, row),), put.before, put.after, put.log_segment, put.log_end, put.log_checksum)

    def _logged(self, put: LoggedPut, made: list[Any]) -> None:
        """_own for a commit of put_logged (``made``: its entries and key-log record)."""
        entries, blob = made[0], made[1]
        self._own(entries, put.before, put.after, self._segment_of(put.log), put.log[2], _checksum(blob))

    def _own(  # pylint: disable=too-many-arguments,too-many-positional-arguments  # a commit's facts
        self,
        entries: Iterable[tuple[bytes, Row | None]],
        before: LogPosition,
        after: LogPosition,
        logseg: int,
        end: int,
        checksum: int,
    ) -> None:
        """After a commit (its key-log record in segment ``logseg``, ending at ``end``, with
        ``checksum``; the log position ``before`` and ``after`` it): make it durable if asked,
        add its entries to this instance's tail, and apply the tail to the index when it is
        long enough."""
        if self.fsync:
            self.db.sync()
        with self._tail_lock:
            rows = self._tail
            if before == self._position:
                # Nothing was committed between what this instance read and this commit: its own
                # record is the only one to add (the common case, without reading it back).
                for key, row in entries:
                    rows[key] = (row, logseg, end)
                self._position = after
                self._last = _new_checkpoint((logseg, end, checksum, after.index_bytes))
            else:
                # Other writers committed since this instance last read the key logs: their
                # records are read when something needs them (a lookup, an apply), not here. Its
                # own entries go in now, each unless the tail holds a newer one for its key.
                for key, row in entries:
                    old = rows.get(key)
                    if old is None or (old[1], old[2]) < (logseg, end):
                        rows[key] = (row, logseg, end)
            size = len(rows)
        if size >= APPLY_AT:
            # Applied here, in the writer's thread, waiting for another process's apply if one
            # runs. Measured with four writers: a background thread waits for the GIL between
            # rows (SQLite and LMDB drop it for each) and falls behind; skipping the apply while
            # another runs, or applying a bounded step, lets the backlog grow (longer waits).
            self._apply()

    def _apply(self) -> None:
        """Apply the key logs to the index up to where they end now, at least (takes index.lock).

        Where they end is taken before the lock: another process's apply, which this one may
        wait for, often covers it, and then nothing is left to read (taken after the wait, it
        sent this process on to read every record committed meanwhile, most of them others')."""
        upto = self.db.log_position()
        with self._write_lock():
            self._apply_locked(upto)
        self.index.tidy()

    def _apply_locked(self, upto: LogPosition | None = None) -> None:
        """Bring the index up to ``upto`` (default: the end of the key logs now) or further
        (index.lock held), a chunk at a time.

        The tail lock is held to read the key logs and to take a copy of the tail, not while the
        index transaction runs: writers of this process go on adding to the tail meanwhile. The
        entries applied leave the tail afterwards, those a newer write replaced meanwhile stay."""
        index = self.index
        if upto is None:
            upto = self.db.log_position()  # see _refresh; applied up to here, however fast others write
        while True:
            with self._tail_lock:
                checkpoint = index.checkpoint()
                if (checkpoint.segment, checkpoint.end) > (self._position.segment, self._position.end):
                    self._rebase_locked()  # another process applied past what this one read
                if (checkpoint.segment, checkpoint.end) >= (upto.segment, upto.end):
                    return  # applied as far as asked (by another process; the rebase dropped it)
                more = self._read_tail_locked(upto, _APPLY_CHUNK)
                last = self._last
                read = (last.segment, last.end)
                # Entries past the last record read in order are this instance's own writes, put
                # in before the records of others between: applied later, with those.
                applied = [(key, value) for key, value in self._tail.items() if (value[1], value[2]) <= read]
            done = (checkpoint.segment, checkpoint.end)
            if read > done:
                index.apply_rows(((key, row, seg) for key, (row, seg, end) in applied if (seg, end) > done), last)
            with self._tail_lock:
                tail = self._tail
                for key, value in applied:
                    if tail.get(key) is value:
                        del tail[key]
            if not more:
                return

    def _read_tail_locked(self, upto: LogPosition, limit: int | None = None) -> bool:
        """Read the key logs committed after this instance's position into its tail (the tail
        lock held), as far as ``upto`` (the log's end when the caller began: every commit that
        completed before it) or further; with ``limit``, stop once the tail holds that many keys.
        True when there may be more to read. Never reading on until the log stops moving: under
        writers that never pause, that end never comes (a lookup would chase them for ever)."""
        gaps = 0
        while True:
            tail = self.db.log_tail(self._position, _APPLY_CHUNK)
            if tail.ahead:
                if not self._restart_locked():
                    return False
                continue
            try:
                if tail.missing and min(tail.missing) < self.index.checkpoint().segment:
                    raise FlatFileDbNotFoundError(f"segments {tail.missing} are gone")
                for record in tail.records:
                    self._take_record(record)
            except FlatFileDbNotFoundError:
                # Deleted segments this instance had not read: their records are applied (a
                # vacuum applies before it deletes), so read on from the checkpoint instead.
                gaps += 1
                if gaps > _RETRIES:
                    raise
                self._rebase_locked(gap=True)
                continue
            if tail.records:
                record = tail.records[-1]
                self._last = Checkpoint(record.segment, record.end_offset, record.checksum, tail.last_index_bytes)
            moved = tail.position != self._position
            self._position = tail.position
            if not moved or tail.position >= upto:
                return False
            if limit is not None and len(self._tail) >= limit:
                return True

    def _restart_locked(self) -> bool:
        """This instance's position is past the end of the key logs: a power loss cut the tail
        it was in (a read-only open took it from an index ahead of the segments). Start again
        from the index's checkpoint with an empty tail (what it holds may be of the lost
        records), once a writer's open has rebuilt the index; False while the index is ahead
        too (nothing to read until then). The tail lock held."""
        checkpoint = self.index.checkpoint()
        restart = LogPosition(checkpoint.segment, checkpoint.end, checkpoint.index_bytes)
        if restart == self._position:
            return False
        self._tail = {}
        self._position = restart
        self._last = checkpoint
        return True

    def _take_record(self, record: BlobRecord, rows: dict[bytes, tuple[Row | None, int, int]] | None = None) -> None:
        """Put the entries of one key-log record into the tail (the tail lock held), or into
        ``rows``, each unless it holds a newer entry for its key (this instance's own write, put
        in before the records of others between)."""
        if rows is None:
            rows = self._tail  # (a rebase replaces the dict)
        here = (record.segment, record.end_offset)
        try:
            entries = self._read_keylog(record)
        except CorruptionError as exc:
            if not self.skip_damaged_logs or isinstance(exc.__cause__, IndexVersionError):
                raise
            if (record.segment, record.start_offset) not in self._skipped:
                self._skipped[(record.segment, record.start_offset)] = str(exc)
                logger.error("%s: %s; skipped (skip_damaged_logs=True)", self._dir, exc)
            return
        for key, row in entries:
            if row is not None and row[0] not in self._present:
                self._present = set(self.db.segments())
                if row[0] not in self._present:
                    # A PUT whose value's segment is gone: a vacuum wrote the key again in a later
                    # record before it deleted the segment, or a power loss took an array's
                    # segment (the key keeps its value before it). Skipped, as a replay skips it.
                    continue
            old = rows.get(key)
            if old is None or (old[1], old[2]) <= here:
                rows[key] = (row, record.segment, record.end_offset)

    def _rebase_locked(self, gap: bool = False) -> None:
        """Drop from the tail what the index has applied; after a gap (segments this instance
        had not read were deleted, their records applied first), restart from the checkpoint."""
        checkpoint = self.index.checkpoint()
        done = (checkpoint.segment, checkpoint.end)
        if gap or done > (self._position.segment, self._position.end):
            self._position = LogPosition(checkpoint.segment, checkpoint.end, checkpoint.index_bytes)
            self._last = checkpoint
        self._tail = {key: value for key, value in self._tail.items() if (value[1], value[2]) > done}

    def _rebuild_locked(self) -> None:
        """Replace the index by the replay of every key log (index.lock held), in one index
        transaction: until it commits, readers (this instance's other threads, other processes)
        go on with the index as it was and their tails, never an empty or half-replayed index
        (clearing it and applying the key logs in chunks, each committed, showed them both).
        This instance's tail is left alone meanwhile, and rebased on the new checkpoint after."""
        self.index.replace(self._replay())
        with self._tail_lock:
            self._rebase_locked()

    def _replay(self) -> Iterator[tuple[list[tuple[bytes, Row | None, int]], Checkpoint]]:
        """The final rows of the key logs from the start, a chunk of about _APPLY_CHUNK keys at
        a time, each with the checkpoint of its last record; up to where the log ended when the
        replay began, or later (the tails of readers hold what comes after)."""
        position = LOG_START
        target = self.db.log_position()
        rows: dict[bytes, tuple[Row | None, int, int]] = {}
        last = Checkpoint(-1, 0, 0)
        while True:
            tail = self.db.log_tail(position, _APPLY_CHUNK)
            for record in tail.records:
                try:
                    self._take_record(record, rows)
                except FlatFileDbNotFoundError:
                    continue  # deleted by a vacuum since it was listed: as a replay without it
            if tail.records:
                record = tail.records[-1]
                last = Checkpoint(record.segment, record.end_offset, record.checksum, tail.last_index_bytes)
            moved = tail.position != position
            position = tail.position
            done = not moved or (position.segment, position.end) >= (target.segment, target.end)
            if rows and (done or len(rows) >= _APPLY_CHUNK):
                yield [(key, row, seg) for key, (row, seg, _) in rows.items()], last
                rows = {}
            if done:
                return

    def _catch_up(self, index: IndexBase) -> None:
        """Apply every key-log record after the index's checkpoint (index.lock held)."""
        checkpoint = index.checkpoint()
        with self._tail_lock:
            self._tail = {}
            self._position = LogPosition(checkpoint.segment, checkpoint.end, checkpoint.index_bytes)
            self._last = checkpoint
        self.index = index
        self._apply_locked()

    def _read_keylog(self, record: BlobRecord) -> list[Entry]:
        segment, start, end, checksum = record
        path = self._paths.get(segment) or self._path(segment)
        blob = self.db.get(_new_location(DataLocation, (path, start, end)))
        if _checksum(blob) != checksum:
            raise CorruptionError(f"key-log record at {start} fails its checksum{_SKIP_HINT}", path, start)
        try:
            return decode_keylog(blob, segment, "")[1]
        except IndexVersionError as exc:  # a newer release's record: never skipped
            raise CorruptionError(f"{path} at {start}{exc}", path, start) from exc
        except FormatError as exc:  # its message names no place: ours does
            raise CorruptionError(f"{path} at {start}{exc}{_SKIP_HINT}", path, start) from exc

    # -- what the index and the tail say together ------------------------------------------

    def _refresh(self) -> None:
        """Read the key logs committed since this instance last looked (cheap when none were).

        Refused once the store is closed: every read passes here (a lookup does when the log
        moved, which a closed engine always says), and would reopen the engine and the index
        for good (descriptors, locks, connections that close() never released again)."""
        if self._closed:
            self._check_open("read")
        if self.db.log_moved(self._position):
            # log_position() repairs the state page when a writer died publishing (taking the
            # engine's write lock): done here, not under the tail lock, which a vacuum's key-log
            # record takes while it holds the engine's lock.
            upto = self.db.log_position()
            with self._tail_lock:
                self._read_tail_locked(upto)
                if len(self._tail) > _TAIL_MAX:
                    self._rebase_locked()

    def _lookup(self, key: bytes) -> Row | None:
        """The row of ``key`` now: the tail's, else the index's."""
        if self.db.log_moved(self._position):
            self._refresh()
        found = self._tail.get(key)
        if found is None:
            return self.index.lookup(key)
        return found[0]

    def _lookup_many(self, keys: list[bytes]) -> list[Row | None]:
        self._refresh()
        rows = self._tail
        found = [rows.get(key) for key in keys]
        missing = [key for key, hit in zip(keys, found) if hit is None]
        if not missing:
            return [hit[0] for hit in found]  # type: ignore[index]  # none is None here
        from_index = iter(self.index.lookup_many(missing))
        return [next(from_index) if hit is None else hit[0] for hit in found]

    def _count(self) -> int:
        """How many keys: the index's count corrected by the tail's entries past its checkpoint."""
        for _ in range(_RETRIES):
            self._refresh()
            with self._tail_lock:
                pending = list(self._tail.items())
                position = self._position
            if not pending:
                return self.index.count()
            count, checkpoint, present = self.index.snapshot([key for key, _ in pending])
            done = (checkpoint.segment, checkpoint.end)
            if done > (position.segment, position.end):
                continue  # the index moved past what this instance read: read on
            for (_, (row, seg, end)), was in zip(pending, present):
                if (seg, end) > done:
                    count += (row is not None) - was
            return count
        return self.index.count()

    def _scan(self, prefix: bytes = b"") -> Iterator[tuple[bytes, Row]]:
        """(key, row) of every key starting with ``prefix``, in key order: the index's rows
        merged with the tail's (read once, at the start)."""
        self._refresh()
        with self._tail_lock:
            pending = sorted((key, value[0]) for key, value in self._tail.items() if key.startswith(prefix))
        shadowed = {key for key, _ in pending}
        ahead = iter(pending)
        nxt = next(ahead, None)
        for key, row in self._index_scan(prefix):
            while nxt is not None and nxt[0] < key:
                if nxt[1] is not None:
                    yield nxt[0], nxt[1]
                nxt = next(ahead, None)
            if key not in shadowed:
                yield key, row
        while nxt is not None:
            if nxt[1] is not None:
                yield nxt[0], nxt[1]
            nxt = next(ahead, None)

    def _index_scan(self, prefix: bytes) -> Iterator[tuple[bytes, Row]]:
        after: bytes | None = None
        while True:
            chunk = self.index.scan(prefix, after, 1000)
            yield from chunk
            if len(chunk) < 1000:
                return
            after = chunk[-1][0]

    # -- the read path --------------------------------------------------------------------

    def _read(  # pylint: disable=redefined-builtin
        self, key: bytes, original: object, slice: Slice | None = None, row: Row | object | None = _MISSING
    ) -> bytes:
        """The value of ``key`` (``row``: its row when already looked up); KeyError when absent."""
        if row is _MISSING:
            row = self._lookup(key)
        for _ in range(_RETRIES):
            if row is None:
                raise KeyError(original)
            assert isinstance(row, Row)  # for the type checker: None and _MISSING are handled above
            try:
                value = self.db.get(self._location(row), slice)
            except FlatFileDbNotFoundError:
                again = self._lookup(key)
                if again == row:
                    raise
                row = again
                continue
            if slice is None and _checksum(value) != row.checksum:
                self._check_value(original, row, value)
            return value
        raise FlatFileDbError(f"{self._dir}: key {original!r} kept moving while it was read")

    def _check_value(self, key: object, row: Row, value: bytes) -> None:
        """Raise CorruptionError for a whole value that is not the one its key's row names (its
        checksum differs): a damaged segment or index never hands back other bytes."""
        if row.meta.startswith(b'{"unchecked":true'):
            return  # committed without being read (create_array): no checksum to compare
        location = self._location(row)
        raise CorruptionError(
            f"the value of key {key!r} at {location.start_offset}..{location.end_offset} fails its checksum"
            f" (XXH3-64 {_checksum(value):016x}, its row says {row.checksum:016x})",
            location.file_path,
            location.start_offset,
        )

    def _rows(self, keys: list[Any]) -> tuple[list[bytes], list[Row]]:
        encoded = [encode_key(key) for key in keys]
        rows = self._lookup_many(encoded)
        for key, row in zip(keys, rows):
            if row is None:
                raise KeyError(key)
        return encoded, rows  # type: ignore[return-value]  # None was refused just above

    def _sweep_staging(self) -> None:
        """Remove staging files of writers that died (their flock is free)."""
        staging = self._staging_path()
        try:
            names = os.listdir(staging)
        except FileNotFoundError:
            return
        for name in names:
            path = os.path.join(staging, name)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                if fcntl is not None:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except OSError:
                        continue  # its writer is alive
                with contextlib.suppress(IsADirectoryError, PermissionError):  # not a file a writer left
                    os.unlink(path)
            finally:
                os.close(fd)

    def _staging_path(self) -> str:
        return os.path.join(self._dir, STAGING_DIR)

    def _remove_tree(self, path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)


def _refuse_engine_datadir(directory: str) -> None:
    """Refuse to make a keyed store in a directory that is an engine's datadir (its state file or
    segment files at the top): its segments/, index and locks would be mixed with the datadir's
    files, which no keyed store names (and which the engine, opened there again, reads beside
    the store's directories)."""
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return  # a new store, or not a directory (the engine's open says so)
    found = [name for name in names if name == STATE_FILE_NAME or parse_name(name) is not None]
    if found:
        raise InvalidLocationError(
            f"{directory} is a FlatFileDb datadir ({sorted(found)[0]} in it), not a keyed store: a"
            f" KeyedStore keeps its segments in its own {SEGMENTS_DIR}/ directory; give it a new or"
            " empty directory, or a keyed store's"
        )


def _reopen(cls: type[_K], path: str, options: dict[str, Any]) -> _K:
    return cls(path, **options)


__all__ = ["LOCK_NAME", "SEGMENTS_DIR", "STAGING_DIR", "KeyedCore"]
