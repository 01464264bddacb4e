"""Maintenance of a keyed store, live: vacuum, expire, verify, stats, sync, backup, rebuild.

Vacuum rewrites, a segment at a time, the rows that a sealed segment holds (values in it, or
key-log records in it that wrote rows still current), then deletes the segment. Each rewrite
is an ordinary commit whose key-log record is made under the engine's write lock after
checking that the rows are still current, so a writer that changed a key meanwhile wins, and
the key logs stay a history whose replay gives the index. A deletion recorded in the segment
is recorded again when an older segment could still hold the key's old value, so a rebuild
never brings a deleted key back.
Readers that looked a key up before its segment went look it up again (keyed/core.py).
"""

from __future__ import annotations

import numbers
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import xxhash

from ..errors import FlatFileDbError, FlatFileDbNotFoundError, FlatFileDbUnsafeAccessError
from ..naming import parse_segment_name
from ..types import DataLocation
from .arrays import ArrayStore
from .core import SEGMENTS_DIR
from .index_base import IndexDamagedError
from .keylog import Entry, Row, decode_key, encode_keylog
from .mapping import _same, is_unchecked

_CHUNK_BYTES = 32 * 2**20  # values copied per commit by vacuum: its memory bound
_CHUNK_ROWS = 20000
_DELETE_EVERY_BYTES = 16 * 2**20  # live bytes copied before the segments they came from are deleted
_DELETE_EVERY_SEGMENTS = 16


@dataclass(frozen=True)
class VacuumResult:
    """What ``vacuum`` did."""

    segments_removed: int
    bytes_reclaimed: int  # bytes on disk of the removed segments
    values_moved: int  # live values copied to new segments


@dataclass(frozen=True)
class KeyedStats:
    """Sizes of a keyed store. ``live_bytes``: the values of the keys; ``log_bytes``: the key-log
    records (the keys, locations and metadata recorded beside the values); ``dead_bytes``: the
    rest of the segments' bytes (overwritten and deleted values, padding), what vacuum reclaims;
    ``disk_bytes``: every file of the store (segments, index, locks)."""

    keys: int
    live_bytes: int
    dead_bytes: int
    disk_bytes: int
    segments: int
    log_bytes: int = 0


@dataclass
class KeyedVerifyReport:
    """What ``verify`` found: ``ok`` when nothing is wrong."""

    keys_checked: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems


class MaintainedStore(ArrayStore):
    """Maintenance operations (see KeyedStore for the whole class)."""

    # -- vacuum ---------------------------------------------------------------------------

    def vacuum(self, min_dead_fraction: float = 0.1) -> VacuumResult:
        """Reclaim the space of overwritten and deleted values, while other threads and
        processes read and write. Seals the mutable segment first, then rewrites the live
        values of each sealed segment whose dead bytes are at least ``min_dead_fraction`` of
        it (0: every segment with a dead byte) and deletes it. Disk use grows meanwhile by the
        live values copied since the last deletion (deletions come every 16 MiB copied, or every
        16 segments). Vacuums of one store run one at a time."""
        self._check_writable("vacuum")
        if isinstance(min_dead_fraction, bool) or not isinstance(min_dead_fraction, numbers.Real):
            raise TypeError(f"min_dead_fraction is a number between 0 and 1, not {type(min_dead_fraction).__name__}")
        if not 0.0 <= min_dead_fraction <= 1.0:
            raise ValueError(f"min_dead_fraction is between 0 and 1, not {min_dead_fraction!r}")
        lock = self._vacuum_lock
        if lock is None:
            raise self._unlocked_error()
        with lock.write(self.lock_timeout):
            return self._vacuum_locked(min_dead_fraction)

    def _vacuum_locked(self, min_dead_fraction: float) -> VacuumResult:
        self.db.rotate()
        mutable = self.db.mutable_segment()  # only segments sealed before the barrier are candidates
        # A barrier: a write commits its values and its key log under one acquisition of the
        # engine's lock, so once rotate() returned every key naming a segment below ``mutable``
        # is in the key logs; applied, it is in the index (with the records of writers that died),
        # and the rows read below are all the rows each of those segments holds.
        self._apply()
        if self.index.checkpoint().segment < mutable:
            # An empty key log moves the checkpoint out of the segments this vacuum may delete:
            # an open checks the checkpoint's record is in the segments, and would take the
            # index for one ahead of them (and rebuild it all) if a vacuum had deleted it.
            self._commit([])
            self._apply()
        usage = self.index.segment_usage()
        sizes = {s.number: (s.logical_bytes, s.disk_bytes) for s in self.db.stats().segments}
        logs: dict[int, int] = {}
        for record in self.db.iter_log():
            logs[record.segment] = logs.get(record.segment, 0) + record.end_offset - record.start_offset
        moved = 0
        done: list[tuple[int, int]] = []  # (segment, disk bytes) rewritten, not yet deleted
        pending = 0  # live bytes copied since the last deletion
        removed: list[int] = []
        for number in sorted(sizes):
            if number >= mutable:
                break
            logical, disk = sizes[number]
            live, keys = usage.get(number, (0, 0))
            dead = logical - live - logs.get(number, 0)  # key logs are not dead: a rewrite writes them again
            if keys and (dead <= 0 or dead / logical < min_dead_fraction):
                continue  # nothing to reclaim, or too little for the copy it costs
            try:
                moved += self._vacuum_segment(number)
            except FlatFileDbNotFoundError:
                continue  # deleted meanwhile
            done.append((number, disk))
            pending += live
            if pending >= _DELETE_EVERY_BYTES or len(done) >= _DELETE_EVERY_SEGMENTS:
                removed += self._delete_rewritten(done)
                done, pending = [], 0
        removed += self._delete_rewritten(done)
        return VacuumResult(len(removed), sum(sizes[number][1] for number in removed), moved)

    def _delete_rewritten(self, done: list[tuple[int, int]]) -> list[int]:
        """Delete segments whose rows were written again, once those are durable (one sync for
        the group: disk use grows by at most a group's live bytes); returns the ones deleted."""
        if not done:
            return []
        self.db.sync()  # the rewritten rows are durable before the only other copy goes
        # Applied too: the checkpoint is then past every record in these segments, so a process
        # that had not read them restarts from it (keyed/core.py) rather than miss them.
        self._apply()
        deleted = []
        for number, _ in done:
            try:
                self.db.delete_file(self.db.segment_path(number))
            except FlatFileDbUnsafeAccessError:
                continue
            deleted.append(number)
        return deleted

    def _vacuum_segment(self, number: int) -> int:
        """Write again every row segment ``number`` holds, and the deletions it records that an
        older segment could undo; returns how many values were copied."""
        moved = 0
        rows = sorted(self.index.rows_of_segments([number]), key=lambda pair: (pair[1].segment, pair[1].start))
        chunk: list[tuple[bytes, Row]] = []
        size = 0
        for key, row in rows:
            chunk.append((key, row))
            size += row.end - row.start if row.segment == number else 0
            if size >= _CHUNK_BYTES or len(chunk) >= _CHUNK_ROWS:
                moved += self._rewrite_rows(number, chunk, [])
                chunk, size = [], 0
        older = any(n < number for n in self.db.segments())
        deleted = self._deletions_in(number) if older else []
        moved += self._rewrite_rows(number, chunk, deleted)
        return moved

    def _deletions_in(self, number: int) -> list[bytes]:
        keys: dict[bytes, None] = {}
        for record in self.db.iter_log((number, 0)):
            if record.segment != number:
                break
            keys.update((entry.key, None) for entry in self._read_keylog(record) if entry.row is None)
        return list(keys)

    def _rewrite_rows(self, number: int, rows: list[tuple[bytes, Row]], deleted: list[bytes]) -> int:
        """Commit again ``rows`` (copying the values in segment ``number``) and the deletions of
        ``deleted``, those still current when the key-log record is made; returns how many
        values were copied and recorded."""
        if not (rows or deleted):
            return 0
        copies = [(key, row) for key, row in rows if row.segment == number]
        now = self._lookup_many([key for key, _ in copies])
        copies = [(key, row) for (key, row), current in zip(copies, now) if _same(current, row)]  # no copy of the dead
        datas = self.db.get_many([self._location(row) for _, row in copies]) if copies else []
        created = time.time_ns()
        made: list[Any] = []

        def make_log(locations: list[DataLocation]) -> bytes:
            # Under the engine's write lock: no commit can come between this check and the record.
            self._refresh()
            current = self._lookup_many([key for key, _ in rows])
            still = {key for (key, row), found in zip(rows, current) if _same(found, row)}
            entries = [
                Entry(key, row._replace(segment=self._segment_of(loc), start=loc[1], end=loc[2]))
                for (key, row), loc in zip(copies, locations)
                if key in still
            ]
            made.append(len(entries))
            entries += [Entry(key, row) for key, row in rows if key in still and row.segment != number]
            entries += [Entry(key, None) for key, found in zip(deleted, self._lookup_many(deleted)) if found is None]
            blob = encode_keylog(entries, created)
            made[:] = [entries, blob, made[0]]
            return blob

        self._logged(self.db.put_logged(datas, make_log), made)
        return int(made[2])

    # -- expiry ---------------------------------------------------------------------------

    def expire(self, max_bytes: int | None = None, max_age: float | None = None) -> int:
        """Delete the keys written more than ``max_age`` seconds ago, then the oldest keys (in
        disk order) until the live values take at most ``max_bytes``; then vacuum. Returns how
        many keys were deleted."""
        self._check_writable("expire")
        if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0):
            raise ValueError(f"max_bytes is a non-negative int, not {max_bytes!r}")
        if max_age is not None and (isinstance(max_age, bool) or not isinstance(max_age, numbers.Real)):
            raise TypeError(f"max_age is a number of seconds, not {type(max_age).__name__}")
        if max_age is not None and not max_age >= 0:
            raise ValueError(f"max_age is a non-negative number of seconds, not {max_age!r}")
        deleted = 0
        now = time.time_ns()
        age_ns = None if max_age is None else max_age * 10**9  # inf, or an int past any time: nothing is that old
        if age_ns is not None and age_ns < now:
            cutoff = now - int(age_ns)
            deleted += self._delete_where((key, row) for key, row in self._scan() if row.created_ns < cutoff)
        if max_bytes is not None:
            deleted += self._delete_where(self._oldest_beyond(max_bytes))
        if deleted:
            self.vacuum()
        return deleted

    def _oldest_beyond(self, max_bytes: int) -> Iterator[tuple[bytes, Row]]:
        self._apply()
        usage = self.index.segment_usage()
        live = sum(bytes_ for bytes_, _ in usage.values())
        for number in sorted(usage):
            if live <= max_bytes:
                return
            rows = sorted(
                (row.start, key, row) for key, row in self.index.rows_of_segments([number]) if row.segment == number
            )
            for _, key, row in rows:
                if live <= max_bytes:
                    return
                live -= row.end - row.start
                yield key, row

    def _delete_where(self, rows: Iterator[tuple[bytes, Row]]) -> int:
        count = 0
        batch: list[tuple[bytes, Row]] = []
        for pair in rows:
            batch.append(pair)
            if len(batch) >= 10000:
                count += self._delete_if_current(batch)
                batch = []
        if batch:
            count += self._delete_if_current(batch)
        return count

    # -- checks and figures ---------------------------------------------------------------

    def verify(self, full: bool = True) -> KeyedVerifyReport:
        """Check the engine (every segment, and with ``full`` every blob's checksum) and the
        index against it: every key's value present and, with ``full``, equal to the bytes
        written (its checksum); the index's checkpoint present in the key logs."""
        self._check_open("verify")
        report = KeyedVerifyReport()
        damaged: IndexDamagedError | None = None
        try:
            if not self.readonly:
                self._apply()
        except IndexDamagedError as exc:
            damaged = exc
        engine = self.db.verify(full)
        report.problems += [str(problem) for problem in engine.problems]
        report.problems += [
            f"key-log record of segment {segment} at {offset} skipped (skip_damaged_logs=True): {why}"
            for (segment, offset), why in sorted(self._skipped.items())
        ]
        if damaged is None:
            try:
                self._verify_keys(report, full)
            except IndexDamagedError as exc:
                damaged = exc
        if damaged is not None:  # reported, not raised: what verify() is for
            report.problems.append(str(damaged))
            return report
        try:
            stats = self.stats()
        except (FlatFileDbError, OSError) as exc:  # a damaged segment: reported, not raised
            report.problems.append(f"the segments cannot be counted: {exc}")
            return report
        report.notes.append(
            f"{stats.dead_bytes} bytes in segments are neither values of a key nor key logs (vacuum reclaims them)"
        )
        return report

    def _verify_keys(self, report: KeyedVerifyReport, full: bool) -> None:
        """verify()'s check of the index against the segments (see verify)."""
        checkpoint = self.index.checkpoint()
        if checkpoint.segment >= 0 and not self._record_present(checkpoint):
            report.problems.append(f"the index has applied a key log the segments do not hold ({checkpoint})")
        present = set(self.db.segments())
        chunk: list[tuple[bytes, Row]] = []
        for key, row in self._scan():
            report.keys_checked += 1
            if row.segment not in present:
                # Listed before the scan began: a segment made since (a rotation while the scan
                # read on) is not a dangling key, nor a key written again or deleted meanwhile.
                present = set(self.db.segments())
                now = self._lookup(key)
                if now is None:
                    continue
                if now.segment not in present:
                    report.problems.append(f"dangling key {decode_key(key)!r}: its segment {now.segment} is gone")
                    continue
                row = now
            if full:
                chunk.append((key, row))
                if len(chunk) >= 1000:
                    self._check_values(chunk, report)
                    chunk = []
        self._check_values(chunk, report)

    def _check_values(self, rows: list[tuple[bytes, Row]], report: KeyedVerifyReport) -> None:
        for key, row in rows:
            if is_unchecked(row.meta):
                continue
            try:
                data = self.db.get(self._location(row))
            except (FlatFileDbError, OSError) as exc:
                report.problems.append(f"key {decode_key(key)!r}: its value cannot be read: {exc}")
                continue
            if xxhash.xxh3_64_intdigest(data) != row.checksum:
                report.problems.append(f"key {decode_key(key)!r}: its value fails its checksum at {row}")

    def stats(self) -> KeyedStats:
        """Keys, live and dead bytes, bytes on disk (segments and index), segments. (Open
        read-only: as of the index, which may lack the latest writes until a writer applies them.)"""
        self._check_open("stats")
        if not self.readonly:
            self._apply()
        usage = self.index.segment_usage()
        live = sum(bytes_ for bytes_, _ in usage.values())
        engine = self.db.stats()
        log = sum(record.end_offset - record.start_offset for record in self.db.iter_log())
        dead = max(0, engine.logical_bytes - live - log)
        return KeyedStats(self.index.count(), live, dead, _tree_bytes(self._dir), len(engine.segments), log)

    # -- durability, copies, rebuild ------------------------------------------------------

    def sync(self) -> None:
        """Make every write acknowledged so far durable (for ``fsync=False`` stores)."""
        self._check_writable("sync")
        self.db.sync()
        self.index.sync()

    def backup(self, dest: str | os.PathLike[str]) -> None:
        """Write a consistent copy of the store to the new directory ``dest``, outside the
        store's (writers wait meanwhile; readers do not); open it as a KeyedStore. The copy is on stable storage
        when this returns (every file and directory of it fsynced, after the locks are let go)."""
        self._check_writable("backup")
        target = Path(os.path.abspath(os.fspath(dest)))
        real_dir = os.path.realpath(self._dir)
        if os.path.commonpath([real_dir, os.path.realpath(target)]) == real_dir:
            # A copy in segments/ or staging/ (or index.lmdb) is a stray file the store trips on.
            raise ValueError(f"backup destination {target} is inside the store's directory {self._dir}")
        if target.exists() and any(target.iterdir()):
            raise FileExistsError(f"backup destination {target} exists and is not empty")
        (target / SEGMENTS_DIR).mkdir(parents=True, exist_ok=True)
        vacuum_lock = self._vacuum_lock
        if vacuum_lock is None:
            raise self._unlocked_error()
        with vacuum_lock.write(self.lock_timeout), self._write_lock():
            self._apply_locked()
            self.db.sync()
            source = os.path.join(self._dir, SEGMENTS_DIR)
            with self.db.read_lock():  # writers wait: no segment changes while it is copied
                for name in sorted(os.listdir(source)):
                    if parse_segment_name(name) is not None or name.endswith(".idx"):
                        shutil.copy2(os.path.join(source, name), target / SEGMENTS_DIR / name)
            # The index's checkpoint cannot move meanwhile (index.lock is held): the copy's key
            # logs hold every record it has applied.
            self.index.backup_to(str(target / self.index.NAME))
        _fsync_tree(target)

    def rebuild_index(self) -> int:
        """Build the index again from the key logs in the segments; returns the number of keys."""
        self._check_writable("rebuild_index")
        with self._write_lock():
            try:
                self._rebuild_locked()
            except IndexDamagedError as exc:
                # A damaged page that only a read reaching it finds (the open checks the header and
                # the state table): the rows cannot even be cleared, so the file goes.
                self._new_index_locked(exc)
                self._rebuild_locked()
        return len(self)


def _fsync_tree(root: Path) -> None:
    """fsync every file under ``root``, then each directory after what it holds, then the
    directory that holds ``root``: a copy written with plain writes is durable afterwards."""
    for dirpath, _, filenames in os.walk(root, topdown=False):
        for name in filenames:
            _fsync_path(os.path.join(dirpath, name), os.O_RDONLY)
        _fsync_path(dirpath, os.O_RDONLY | os.O_DIRECTORY)
    _fsync_path(str(root.parent), os.O_RDONLY | os.O_DIRECTORY)


def _fsync_path(path: str, flags: int) -> None:
    fd = os.open(path, flags | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tree_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


__all__ = ["KeyedStats", "KeyedVerifyReport", "MaintainedStore", "VacuumResult"]
