"""The keyed store's index in SQLite (the default): one table of rows, one of state.

The index is a cache of the key logs (keylog.py), written only by the process holding the
keyed store's write lock, so SQLite never sees two writers and never answers "database is
locked" to one; readers use WAL snapshots and never wait for the writer. ``synchronous=NORMAL``:
a commit does not fsync. A power loss may cost the index its last commits, which the key
logs in the segments restore (see KeyedStore's open); it cannot corrupt a WAL database.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import threading
import weakref
from typing import Any, Callable, Iterable, Iterator, NoReturn, TypeVar, cast

from ..errors import FlatFileDbError
from .index_base import (
    Checkpoint,
    IndexBase,
    IndexDamagedError,
    decode_checkpoint,
    encode_checkpoint,
    index_write_error,
)
from .keylog import Row, new_row

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    key BLOB PRIMARY KEY, seg INTEGER NOT NULL, start INTEGER NOT NULL, end INTEGER NOT NULL,
    checksum INTEGER NOT NULL, created INTEGER NOT NULL, logseg INTEGER NOT NULL, meta BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state (name TEXT PRIMARY KEY, value NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO state VALUES ('count', 0), ('format', 1), ('checkpoint', X'');
CREATE TRIGGER IF NOT EXISTS keys_counted_in AFTER INSERT ON keys
    BEGIN UPDATE state SET value = value + 1 WHERE name = 'count'; END;
CREATE TRIGGER IF NOT EXISTS keys_counted_out AFTER DELETE ON keys
    BEGIN UPDATE state SET value = value - 1 WHERE name = 'count'; END;
"""
_UPSERT = (
    "INSERT INTO keys VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET seg = excluded.seg,"
    " start = excluded.start, end = excluded.end, checksum = excluded.checksum, created = excluded.created,"
    " logseg = excluded.logseg, meta = excluded.meta"
)
_SELECT = "SELECT seg, start, end, checksum, created, logseg, meta FROM keys WHERE key = ?"
_SIGN = 2**63
_SQLITE_FULL = 13  # primary result codes (sqlite3.SQLITE_FULL and SQLITE_IOERR from Python 3.11)
_SQLITE_IOERR = 10
_CACHE_KIB = 32768  # page cache of each connection: the upper B-tree levels stay in memory
_CHECKPOINT_BYTES = 40 * 2**20  # WAL size past which tidy() checkpoints (a commit: past 4x)
_F = TypeVar("_F", bound=Callable[..., Any])


def _damaged(path: str, exc: sqlite3.DatabaseError) -> IndexDamagedError:
    """The IndexDamagedError of a read or write that SQLite refused (a malformed page, a file
    that is not a database): the key logs hold everything, and a rebuild replaces the file."""
    return IndexDamagedError(
        f"{path}: the index cannot be read ({exc}); rebuild_index() on the store open for writing"
        " sets it aside and rebuilds it from the key logs (so does a writer's open, once it is removed)"
    )


def _reads(method: _F) -> _F:
    """A read of the index whose sqlite3.DatabaseError is an IndexDamagedError: a damaged page is
    found by the read that reaches it, long after the open checked the header and state table."""

    @functools.wraps(method)
    def read(self: SqliteIndex, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            raise _damaged(self.path, exc) from exc

    return cast(_F, read)


def _signed(value: int) -> int:
    """A u64 as SQLite's signed 64-bit integer."""
    return value - 2**64 if value >= _SIGN else value


def _row(found: tuple[int, int, int, int, int, int, bytes]) -> Row:
    if found[3] >= 0:
        return new_row(found)
    seg, start, end, checksum, created, logseg, meta = found
    return new_row((seg, start, end, checksum % 2**64, created, logseg, meta))


class SqliteIndex(IndexBase):
    """The index in ``index.sqlite3``: a connection per thread, opened on first use."""

    NAME = "index.sqlite3"

    def __init__(self, path: str, readonly: bool) -> None:
        self.path = path
        self.readonly = readonly
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._guard = threading.Lock()
        self._pid = os.getpid()
        self._closed = False
        _instances.add(self)
        if readonly:
            if not os.path.exists(path):
                raise IndexDamagedError(f"{path} does not exist")
        else:
            try:
                conn = self._conn()
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(_SCHEMA)
                self.check()
            except sqlite3.DatabaseError as exc:
                self.close()
                raise IndexDamagedError(f"{path}: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        if self.readonly:
            # mode=ro reads a WAL database (it may create the -shm file); on read-only media
            # where it cannot, immutable=1 reads the file as it is. Each thread uses its own
            # connection; close() closes them all from its own thread (check_same_thread=False).
            try:
                conn = sqlite3.connect(
                    f"file:{self.path}?mode=ro", uri=True, isolation_level=None, timeout=600, check_same_thread=False
                )
                conn.execute("SELECT value FROM state WHERE name = 'count'").fetchone()
            except sqlite3.OperationalError:
                if os.access(os.path.dirname(self.path), os.W_OK):
                    raise  # immutable=1 would ignore a writer's WAL: only for media nothing writes
                conn = sqlite3.connect(
                    f"file:{self.path}?immutable=1", uri=True, isolation_level=None, check_same_thread=False
                )
        else:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=600, check_same_thread=False)
            conn.execute("PRAGMA synchronous=NORMAL")
            # No checkpoint inside a commit (which runs under the keyed store's write lock, so
            # every other writer's apply would wait for it): tidy() makes them after the lock is
            # released, once the WAL holds _CHECKPOINT_BYTES, and a commit only past four times
            # that. Applies write thousands of random keys at a time: a checkpoint every 1,000
            # pages (the default) copies the same pages back again and again; every ~40 MiB of
            # WAL it costs half as much per key, measured.
            conn.execute("PRAGMA wal_autocheckpoint=0")
            conn.execute("PRAGMA journal_size_limit=8388608")  # and the WAL shrinks back after one
        conn.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
        return conn

    def _conn(self) -> sqlite3.Connection:
        try:
            return self._local.conn  # type: ignore[no-any-return]  # the hot path: this thread's connection
        except AttributeError:
            pass
        local = self._local
        if self._closed:  # a thread that passed the store's check as another closed it
            raise FlatFileDbError(f"{self.path}: the index is closed")
        conn = self._connect()
        with self._guard:
            if self._closed:  # closed meanwhile: kept, this connection would serve it for good
                conn.close()
                raise FlatFileDbError(f"{self.path}: the index is closed")
            local.conn = conn
            self._all.append(conn)
        return conn

    def _forget_connections(self) -> None:
        """In a forked child: the parent's connections are not this process's to use or close."""
        self._guard = threading.Lock()
        self._all, self._pid = [], os.getpid()
        self._local = threading.local()

    def check(self) -> None:
        _check_size(self.path)
        conn = self._conn()
        try:
            names = {name for (name,) in conn.execute("SELECT name FROM state")}
            if not {"count", "format", "checkpoint"} <= names:
                raise IndexDamagedError(f"{self.path}: its state table is incomplete")
            (fmt,) = conn.execute("SELECT value FROM state WHERE name = 'format'").fetchone()
            if fmt != 1:
                raise IndexDamagedError(f"{self.path}: index format {fmt} is not supported")
        except sqlite3.DatabaseError as exc:
            raise IndexDamagedError(f"{self.path}: {exc}") from exc

    def close(self) -> None:
        """Close this thread's connection and let go of the others: each closes with its last
        reference, at once when idle, else when the call another thread is making on it returns
        (closing a connection under another thread's call frees what the call uses: a crash)."""
        with self._guard:
            self._all = []
            self._closed = True
        mine = getattr(self._local, "conn", None)
        self._local = threading.local()  # (with it, every thread's reference to its connection)
        if mine is not None and self._pid == os.getpid():
            mine.close()

    # -- reads --------------------------------------------------------------------------

    def lookup(self, key: bytes) -> Row | None:
        try:  # (inline, not @_reads: the hot path of every get)
            found = self._conn().execute(_SELECT, (key,)).fetchone()
        except sqlite3.DatabaseError as exc:
            raise _damaged(self.path, exc) from exc
        return None if found is None else _row(found)

    @_reads
    def lookup_many(self, keys: list[bytes]) -> list[Row | None]:
        conn = self._conn()
        found: dict[bytes, Row] = {}
        for first in range(0, len(keys), 500):
            chunk = keys[first : first + 500]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT key, seg, start, end, checksum, created, logseg, meta FROM keys WHERE key IN ({marks})"
            for key, *rest in conn.execute(query, chunk):
                found[key] = _row(tuple(rest))
        return [found.get(key) for key in keys]

    @_reads
    def count(self) -> int:
        (value,) = self._conn().execute("SELECT value FROM state WHERE name = 'count'").fetchone()
        return int(value)

    @_reads
    def checkpoint(self) -> Checkpoint:
        (raw,) = self._conn().execute("SELECT value FROM state WHERE name = 'checkpoint'").fetchone()
        return decode_checkpoint(raw)

    @_reads
    def snapshot(self, keys: list[bytes]) -> tuple[int, Checkpoint, list[bool]]:
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            count = self.count()
            checkpoint = self.checkpoint()
            present = [row is not None for row in self.lookup_many(keys)]
        finally:
            conn.execute("COMMIT")
        return count, checkpoint, present

    @_reads
    def scan(self, prefix: bytes = b"", after: bytes | None = None, limit: int = 1000) -> list[tuple[bytes, Row]]:
        conn = self._conn()
        low = prefix if after is None else max(prefix, after)
        op = ">" if after is not None and after >= prefix else ">="
        query = f"SELECT key, seg, start, end, checksum, created, logseg, meta FROM keys WHERE key {op} ?"
        params: list[object] = [low]
        high = _after_prefix(prefix)
        if high is not None:
            query += " AND key < ?"
            params.append(high)
        query += " ORDER BY key LIMIT ?"
        params.append(limit)
        return [(key, _row(tuple(rest))) for key, *rest in conn.execute(query, params)]

    @_reads
    def segment_usage(self) -> dict[int, tuple[int, int]]:
        query = "SELECT seg, sum(end - start), count(*) FROM keys GROUP BY seg"
        return {seg: (live, count) for seg, live, count in self._conn().execute(query)}

    def rows_of_segments(self, segments: Iterable[int]) -> Iterator[tuple[bytes, Row]]:
        wanted = sorted(set(segments))
        marks = ",".join("?" * len(wanted))
        query = (
            "SELECT key, seg, start, end, checksum, created, logseg, meta FROM keys"
            f" WHERE seg IN ({marks}) OR logseg IN ({marks})"
        )
        try:
            for key, *rest in self._conn().execute(query, wanted + wanted):
                yield key, _row(tuple(rest))
        except sqlite3.DatabaseError as exc:
            raise _damaged(self.path, exc) from exc

    # -- writes (the keyed store's write lock held) ---------------------------------------

    def apply_rows(self, rows: Iterable[tuple[bytes, Row | None, int]], checkpoint: Checkpoint) -> None:
        conn = self._conn()
        with _transaction(conn, self.path):
            _write_rows(conn, rows, checkpoint)
        self._checkpoint_past(4 * _CHECKPOINT_BYTES)  # bounded even if no caller tidies

    def tidy(self) -> None:
        """A WAL checkpoint once the WAL holds _CHECKPOINT_BYTES (PASSIVE: it waits for no
        reader and no writer; what readers still use is copied by a later one)."""
        self._checkpoint_past(_CHECKPOINT_BYTES)

    def _checkpoint_past(self, limit: int) -> None:
        try:
            size = os.stat(f"{self.path}-wal").st_size
        except FileNotFoundError:
            return
        if size >= limit:
            try:
                self._conn().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.OperationalError as exc:
                _raise_write_error(self.path, exc)

    def clear(self) -> None:
        conn = self._conn()
        with _transaction(conn, self.path):
            _clear(conn)

    def replace(self, chunks: Iterable[tuple[Iterable[tuple[bytes, Row | None, int]], Checkpoint]]) -> None:
        conn = self._conn()
        with _transaction(conn, self.path):  # readers keep their WAL snapshot of the old index until the commit
            _clear(conn)
            for rows, checkpoint in chunks:
                _write_rows(conn, rows, checkpoint)

    def backup_to(self, dest: str) -> None:
        target = sqlite3.connect(dest)
        try:
            self._conn().backup(target)
        finally:
            target.close()


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection, path: str) -> Iterator[None]:
    """One write transaction: committed when the block ends, rolled back when it raises; a full
    disk or an I/O error is an IndexWriteError (an OSError), not sqlite3's OperationalError."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    except sqlite3.OperationalError as exc:
        _raise_write_error(path, exc)
    except sqlite3.DatabaseError as exc:  # a malformed page, a file that is not a database
        raise _damaged(path, exc) from exc


def _raise_write_error(path: str, exc: sqlite3.OperationalError) -> NoReturn:
    """Raise a full disk or an I/O error as an IndexWriteError (an OSError), else ``exc``."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+; the message before
    full = code & 0xFF == _SQLITE_FULL if code is not None else "full" in str(exc)
    if full or (code & 0xFF == _SQLITE_IOERR if code is not None else "I/O error" in str(exc)):
        raise index_write_error(path, exc, full) from exc
    raise exc


def _write_rows(
    conn: sqlite3.Connection, rows: Iterable[tuple[bytes, Row | None, int]], checkpoint: Checkpoint
) -> None:
    """Set rows and the checkpoint (in the caller's transaction); see IndexBase.apply_rows."""
    puts: list[tuple[object, ...]] = []
    deletes: list[tuple[bytes]] = []
    for key, row, logseg in rows:
        if row is None:
            deletes.append((key,))
        else:
            seg, start, end, checksum, created, _, meta = row
            puts.append(
                (key, seg, start, end, checksum - 2**64 if checksum >= _SIGN else checksum, created, logseg, meta)
            )
    puts.sort()  # in key order: each B-tree page is visited once per transaction
    if deletes:
        conn.executemany("DELETE FROM keys WHERE key = ?", deletes)
    if puts:
        conn.executemany(_UPSERT, puts)
    conn.execute("UPDATE state SET value = ? WHERE name = 'checkpoint'", (encode_checkpoint(checkpoint),))


def _clear(conn: sqlite3.Connection) -> None:
    """Remove every row and reset the checkpoint (in the caller's transaction)."""
    conn.execute("DELETE FROM keys")
    conn.execute("UPDATE state SET value = 0 WHERE name = 'count'")
    conn.execute("UPDATE state SET value = X'' WHERE name = 'checkpoint'")


_instances: weakref.WeakSet[SqliteIndex] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for instance in list(_instances):
        instance._forget_connections()  # pylint: disable=protected-access  # this module's class


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _check_size(path: str) -> None:
    """A database file shorter than the pages its header counts was cut (a lost tail): SQLite
    would answer "malformed" to the reads of the missing pages, long after the open."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(100)
            size = os.fstat(handle.fileno()).st_size
    except FileNotFoundError:
        return
    if len(header) < 100:
        if header:
            raise IndexDamagedError(f"{path}: {len(header)} bytes, shorter than a database header")
        return
    page = int.from_bytes(header[16:18], "big")
    page = 65536 if page == 1 else page
    pages = int.from_bytes(header[28:32], "big")
    valid = header[24:28] == header[92:96]  # the page count is valid when written with the change counter
    if valid and size < pages * page:
        raise IndexDamagedError(f"{path}: {size} bytes, but its header counts {pages} pages of {page} bytes")


def _after_prefix(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with ``prefix`` (None: no bound)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes((stripped[-1] + 1,))
