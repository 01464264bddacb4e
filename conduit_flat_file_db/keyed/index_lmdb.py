"""The keyed store's index in LMDB (``index="lmdb"``, the optional ``lmdb`` extra).

Two named databases in ``index.lmdb/``: ``keys`` (encoded key -> packed row) and ``state``
(the checkpoint). LMDB allows one writer and readers that never wait; the keyed store's
write lock makes that writer the lock's holder. An environment may be opened only once per
process, so instances of one process share it (a registry, as the engine shares its lock).
"""

from __future__ import annotations

import contextlib
import functools
import os
import struct
import threading
from typing import Any, Callable, Iterable, Iterator, TypeVar, cast

from ..blocks import allocate
from ..errors import FlatFileDbError
from ..state import BOOT_ID
from .index_base import (
    Checkpoint,
    IndexBase,
    IndexDamagedError,
    decode_checkpoint,
    encode_checkpoint,
    index_write_error,
)
from .keylog import Row, new_row

_ROW = struct.Struct("<IQQQqI")  # segment, start, end, checksum, created_ns, logseg; meta follows
_ROW_BYTES = _ROW.size
_MAP_SIZE = 2**40  # address space reserved, not disk: the file grows as rows are written
_envs: dict[str, tuple[Any, int, int, bool]] = {}  # real path -> (env, users, pid, opened read-only)
_envs_guard = threading.Lock()
# Written with every commit: the environment is opened without a sync per commit, so after a
# power loss (a new boot) the file may hold pages of a tree whose other pages never reached the
# disk. An index last written in another boot, and not closed cleanly then, is rebuilt.
_BOOT = struct.pack("<QQ", *BOOT_ID)
_CLEAN = b"closed cleanly"
_F = TypeVar("_F", bound=Callable[..., Any])


def _import_lmdb() -> Any:
    try:
        import lmdb  # pylint: disable=import-outside-toplevel  # an optional extra

        return lmdb
    except ImportError as exc:
        raise ImportError(
            "KeyedStore(index='lmdb') needs the lmdb package: pip install 'conduit_flat_file_db[lmdb]'"
        ) from exc


def _open_env(lmdb: Any, path: str, readonly: bool) -> Any:
    """Open the environment. A reader takes LMDB's reader lock like a writer (without it, a
    writer may reuse the pages it is reading); only where the lock file cannot be written (a
    read-only medium, where no writer can be either) does it read without."""
    options = {"map_size": _MAP_SIZE, "max_dbs": 2, "readonly": readonly, "sync": False, "metasync": False}
    try:
        return lmdb.open(path, lock=True, readahead=False, max_readers=1024, **options)
    except lmdb.Error as exc:
        if readonly and not os.access(path, os.W_OK):
            try:
                return lmdb.open(path, lock=False, readahead=False, **options)
            except lmdb.Error as again:
                raise IndexDamagedError(f"{path}: {again}") from again
        raise IndexDamagedError(f"{path}: {exc}") from exc


def _pack(row: Row) -> bytes:
    return _ROW.pack(row.segment, row.start, row.end, row.checksum, row.created_ns, row.logseg) + row.meta


def _boot_time() -> float | None:
    """When this machine booted (seconds since the epoch), from /proc/stat; None when unknown."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


_BOOT_TIME = _boot_time()


def _written_this_boot(mtime: float) -> bool:
    """Whether a file last modified at ``mtime`` was written since this machine booted (a minute
    of margin for the clock); False when the boot time is unknown."""
    return _BOOT_TIME is not None and mtime > _BOOT_TIME + 60


def _read_error(index: LmdbIndex, exc: BaseException) -> FlatFileDbError:
    """The typed error of a read that LMDB refused: IndexDamagedError for a damaged tree (which
    a writer's open answers by rebuilding the index), FlatFileDbError for anything else (too
    many readers, a map resized by another process: the index is not damaged, so no rebuild)."""
    if isinstance(exc, index._corrupted):  # pylint: disable=protected-access  # this module's class
        return _damaged(index.path, exc)
    return FlatFileDbError(f"{index.path}: the index could not be read ({exc})")


def _damaged(path: str, exc: BaseException) -> IndexDamagedError:
    """The IndexDamagedError of a read that LMDB refused (a page of the wrong type, a tree
    that leads nowhere): the key logs hold everything, and a rebuild replaces the index."""
    return IndexDamagedError(
        f"{path}: the index cannot be read ({exc}); rebuild_index() on the store open for writing"
        " sets it aside and rebuilds it from the key logs (so does a writer's open, once it is removed)"
    )


def _reads(method: _F) -> _F:
    """A read of the index whose lmdb.Error is an IndexDamagedError (LMDB checks no page: a
    damaged one is found by the read that reaches it)."""

    @functools.wraps(method)
    def read(self: LmdbIndex, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except self._error as exc:  # pylint: disable=protected-access  # this module's class
            raise _read_error(self, exc) from exc

    return cast(_F, read)


def _unpack(raw: bytes | memoryview) -> Row:
    meta = raw[_ROW_BYTES:]
    return new_row(_ROW.unpack_from(raw, 0) + (meta if type(meta) is bytes else bytes(meta),))  # pylint: disable=unidiomatic-typecheck


class LmdbIndex(IndexBase):
    """The index in ``index.lmdb/``."""

    NAME = "index.lmdb"

    def __init__(self, path: str, readonly: bool) -> None:
        lmdb = _import_lmdb()
        self.path = path
        self.readonly = readonly
        self._key = os.path.realpath(path)
        if readonly and not os.path.exists(os.path.join(path, "data.mdb")):
            raise IndexDamagedError(f"{path} does not exist")
        with _envs_guard:
            env, users, pid, env_readonly = _envs.get(self._key, (None, 0, 0, True))
            if env is not None and pid == os.getpid() and env_readonly and not readonly:
                raise IndexDamagedError(
                    f"{path} is open read-only in this process; close its read-only stores before opening it to write"
                )
            if env is None or pid != os.getpid():
                env = _open_env(lmdb, path, readonly)
                users, env_readonly = 0, readonly
            _envs[self._key] = (env, users + 1, os.getpid(), env_readonly)
        self.env = env
        self._error, self._map_full = lmdb.Error, lmdb.MapFullError
        self._corrupted = (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.BadTxnError, lmdb.InvalidError)
        try:
            self._check_size()
            self._keys = env.open_db(b"keys", create=not readonly)
            self._state = env.open_db(b"state", create=not readonly)
        except lmdb.Error as exc:
            self.close()
            raise IndexDamagedError(f"{path}: {exc}") from exc
        except IndexDamagedError:
            self.close()
            raise

    @_reads
    def trusted(self) -> bool:
        """False when the index was written in another boot and not closed cleanly then."""
        with self.env.begin(db=self._state) as txn:
            boot = txn.get(b"boot")
        return boot is None or (boot in (_BOOT, _CLEAN) and BOOT_ID != (0, 0))

    def close(self) -> None:
        if (
            not self.readonly
            and getattr(self, "_state", None) is not None
            and os.getpid() == _envs.get(self._key, (0, 0, 0))[2]
        ):
            try:
                self.env.sync(True)
                with self.env.begin(write=True) as txn:
                    if txn.get(b"boot", db=self._state) == _BOOT:
                        txn.put(b"boot", _CLEAN, db=self._state)
                self.env.sync(True)
            except Exception:  # pylint: disable=broad-exception-caught  # the next open checks it anyway
                pass
        with _envs_guard:
            env, users, pid, env_readonly = _envs.get(self._key, (None, 0, 0, True))
            if env is not self.env:
                return
            if users <= 1:
                del _envs[self._key]
                if pid == os.getpid():
                    env.close()
            else:
                _envs[self._key] = (env, users - 1, pid, env_readonly)

    def check(self) -> None:
        self._check_size()
        self.checkpoint()

    def _check_size(self) -> None:
        """A data file shorter than the pages its meta page names would be a SIGBUS on the first
        read of a missing page (LMDB maps the file), which no handler can turn into an error.

        Written in another boot (a power loss took pages): refused, before any read of the tree.
        Written since this boot, the file may be shorter rightly: LMDB never writes the pages a
        transaction allocated and freed again (loose pages), which the meta page counts but no
        tree reaches, and a writer killed before a later transaction wrote past them leaves the
        file so (every page a tree reaches was written before the meta page that names it, into
        the page cache, which a killed process does not take with it). Such a file, or one cut
        short by hand, is grown to the size its meta page names with ``fallocate``, which adds
        zero pages and never overwrites a page a live writer has just written past the old end:
        a read that reaches a zero page is then LMDB's MDB_CORRUPTED (IndexDamagedError, and a
        writer's open rebuilds the index), not a killed process. Where the file cannot be grown
        so (no write permission, no ``fallocate``), it is refused as damaged."""
        info, page = self.env.info(), self.env.stat()["psize"]
        data = os.path.join(self.path, "data.mdb")
        st = os.stat(data)
        size, need = st.st_size, (info["last_pgno"] + 1) * page
        if size >= need:
            return
        if not _written_this_boot(st.st_mtime):
            raise IndexDamagedError(
                f"{self.path}: data.mdb is {size} bytes but its meta page names {need // page} pages"
            )
        try:
            fd = os.open(data, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            code: int | None = exc.errno
        else:
            try:
                code = allocate(fd, size, need - size)
            finally:
                os.close(fd)
        if code:
            raise IndexDamagedError(
                f"{self.path}: data.mdb is {size} bytes but its meta page names {need // page} pages, and it"
                f" cannot be grown to that size to be read safely ({os.strerror(code)})"
            )

    def lookup(self, key: bytes) -> Row | None:
        # No with-block: the read transaction ends when it is dropped, at once (measured 0.6 us
        # of a 2.2 us lookup saved, on every get).
        try:  # (inline, not @_reads: the hot path of every get)
            raw = self.env.begin(db=self._keys).get(key)
        except self._error as exc:
            raise _read_error(self, exc) from exc
        return None if raw is None else _unpack(raw)

    @_reads
    def lookup_many(self, keys: list[bytes]) -> list[Row | None]:
        with self.env.begin(db=self._keys, buffers=True) as txn:
            found = [txn.get(key) for key in keys]
            return [None if raw is None else _unpack(raw) for raw in found]

    @_reads
    def count(self) -> int:
        with self.env.begin() as txn:
            return int(txn.stat(self._keys)["entries"])

    @_reads
    def checkpoint(self) -> Checkpoint:
        with self.env.begin(db=self._state) as txn:
            raw = txn.get(b"checkpoint")
        return decode_checkpoint(raw)

    @_reads
    def snapshot(self, keys: list[bytes]) -> tuple[int, Checkpoint, list[bool]]:
        with self.env.begin() as txn:
            count = int(txn.stat(self._keys)["entries"])
            raw = txn.get(b"checkpoint", db=self._state)
            present = [txn.get(key, db=self._keys) is not None for key in keys]
        return count, decode_checkpoint(raw), present

    @_reads
    def scan(self, prefix: bytes = b"", after: bytes | None = None, limit: int = 1000) -> list[tuple[bytes, Row]]:
        found: list[tuple[bytes, Row]] = []
        with self.env.begin(db=self._keys) as txn:
            cursor = txn.cursor()
            start = prefix if after is None or after < prefix else after
            if not cursor.set_range(start):
                return found
            for key, raw in cursor:
                if not key.startswith(prefix):
                    break
                if after is not None and key <= after:
                    continue
                found.append((key, _unpack(raw)))
                if len(found) >= limit:
                    break
        return found

    def _all_rows(self) -> Iterator[tuple[bytes, Row]]:
        after: bytes | None = None
        while True:
            chunk = self.scan(b"", after, 10000)
            yield from chunk
            if len(chunk) < 10000:
                return
            after = chunk[-1][0]

    def segment_usage(self) -> dict[int, tuple[int, int]]:
        usage: dict[int, tuple[int, int]] = {}
        for _, row in self._all_rows():
            live, count = usage.get(row.segment, (0, 0))
            usage[row.segment] = (live + row.end - row.start, count + 1)
        return usage

    def rows_of_segments(self, segments: Iterable[int]) -> Iterator[tuple[bytes, Row]]:
        wanted = set(segments)
        for key, row in self._all_rows():
            if row.segment in wanted or row.logseg in wanted:
                yield key, row

    @contextlib.contextmanager
    def _write(self) -> Iterator[Any]:
        """A write transaction, committed when the block ends; an error of LMDB writing (a full
        disk, an I/O error, a full map) is an IndexWriteError (an OSError)."""
        try:
            with self.env.begin(write=True) as txn:
                yield txn
        except self._corrupted as exc:  # the tree it writes is damaged: a rebuild replaces it
            raise _damaged(self.path, exc) from exc
        except self._error as exc:
            full = "No space" in str(exc) or isinstance(exc, self._map_full)
            raise index_write_error(self.path, exc, full) from exc

    def apply_rows(self, rows: Iterable[tuple[bytes, Row | None, int]], checkpoint: Checkpoint) -> None:
        with self._write() as txn:
            self._write_rows(txn, rows, checkpoint)

    def _write_rows(self, txn: Any, rows: Iterable[tuple[bytes, Row | None, int]], checkpoint: Checkpoint) -> None:
        """Set rows and the checkpoint in write transaction ``txn`` (see IndexBase.apply_rows)."""
        pack = _ROW.pack
        puts: list[tuple[bytes, bytes]] = []
        deletes: list[bytes] = []
        for key, row, logseg in rows:
            if row is None:
                deletes.append(key)
            else:
                seg, start, end, checksum, created, _, meta = row
                puts.append((key, pack(seg, start, end, checksum, created, logseg) + meta))
        puts.sort()  # in key order: each B-tree page is visited once per transaction
        for key in deletes:
            txn.delete(key, db=self._keys)
        if puts:
            txn.cursor(db=self._keys).putmulti(puts)
        txn.put(b"checkpoint", encode_checkpoint(checkpoint), db=self._state)
        txn.put(b"boot", _BOOT, db=self._state)

    def clear(self) -> None:
        with self._write() as txn:
            txn.drop(self._keys, delete=False)
            txn.delete(b"checkpoint", db=self._state)

    def replace(self, chunks: Iterable[tuple[Iterable[tuple[bytes, Row | None, int]], Checkpoint]]) -> None:
        with self._write() as txn:  # readers keep their snapshot of the old index until the commit
            txn.drop(self._keys, delete=False)
            txn.delete(b"checkpoint", db=self._state)
            for rows, checkpoint in chunks:
                self._write_rows(txn, rows, checkpoint)

    def backup_to(self, dest: str) -> None:
        os.makedirs(dest, exist_ok=True)
        self.env.copy(dest)

    def sync(self) -> None:
        """Flush the environment to disk (it is opened without a sync per commit)."""
        self.env.sync(True)
