"""The keyed store's index in LMDB (``index="lmdb"``, the optional ``lmdb`` extra).

Two named databases in ``index.lmdb/``: ``keys`` (encoded key -> packed row) and ``state``
(the checkpoint). LMDB allows one writer and readers that never wait; the keyed store's
write lock makes that writer the lock's holder. An environment may be opened only once per
process, so instances of one process share it (a registry, as the engine shares its lock).
"""

from __future__ import annotations

import os
import struct
import threading
from typing import Any, Iterable, Iterator

from .index_base import Checkpoint, IndexBase, IndexDamagedError
from .keylog import Entry, Row

_ROW = struct.Struct("<IQQQqI")  # segment, start, end, checksum, created_ns, logseg; meta follows
_CHECKPOINT = struct.Struct("<qQQ")
_MAP_SIZE = 2**40  # address space reserved, not disk: the file grows as rows are written
_envs: dict[tuple[str, bool], tuple[Any, int, int]] = {}  # (path, readonly) -> (env, users, pid)
_envs_guard = threading.Lock()


def _import_lmdb() -> Any:
    try:
        import lmdb  # pylint: disable=import-outside-toplevel  # an optional extra

        return lmdb
    except ImportError as exc:
        raise ImportError(
            "KeyedStore(index='lmdb') needs the lmdb package: pip install 'conduit_flat_file_db[lmdb]'"
        ) from exc


def _pack(row: Row) -> bytes:
    return _ROW.pack(row.segment, row.start, row.end, row.checksum, row.created_ns, row.logseg) + row.meta


def _unpack(raw: bytes | memoryview) -> Row:
    seg, start, end, checksum, created, logseg = _ROW.unpack_from(raw, 0)
    return Row(seg, start, end, checksum, created, logseg, bytes(raw[_ROW.size :]))


class LmdbIndex(IndexBase):
    """The index in ``index.lmdb/``."""

    NAME = "index.lmdb"

    def __init__(self, path: str, readonly: bool) -> None:
        lmdb = _import_lmdb()
        self.path = path
        self.readonly = readonly
        self._key = (os.path.realpath(path), readonly)
        if readonly and not os.path.exists(os.path.join(path, "data.mdb")):
            raise IndexDamagedError(f"{path} does not exist")
        with _envs_guard:
            env, users, pid = _envs.get(self._key, (None, 0, 0))
            if env is None or pid != os.getpid():
                try:
                    env = lmdb.open(
                        path,
                        map_size=_MAP_SIZE,
                        max_dbs=2,
                        readonly=readonly,
                        lock=not readonly,
                        sync=False,
                        metasync=False,
                        readahead=False,
                        max_readers=1024,
                    )
                except lmdb.Error as exc:
                    raise IndexDamagedError(f"{path}: {exc}") from exc
                users = 0
            _envs[self._key] = (env, users + 1, os.getpid())
        self.env = env
        try:
            self._keys = env.open_db(b"keys", create=not readonly)
            self._state = env.open_db(b"state", create=not readonly)
        except lmdb.Error as exc:
            self.close()
            raise IndexDamagedError(f"{path}: {exc}") from exc

    def close(self) -> None:
        with _envs_guard:
            env, users, pid = _envs.get(self._key, (None, 0, 0))
            if env is not self.env:
                return
            if users <= 1:
                del _envs[self._key]
                if pid == os.getpid():
                    env.close()
            else:
                _envs[self._key] = (env, users - 1, pid)

    def check(self) -> None:
        self.checkpoint()

    def lookup(self, key: bytes) -> Row | None:
        with self.env.begin(db=self._keys, buffers=True) as txn:
            raw = txn.get(key)
            return None if raw is None else _unpack(raw)

    def lookup_many(self, keys: list[bytes]) -> list[Row | None]:
        with self.env.begin(db=self._keys, buffers=True) as txn:
            found = [txn.get(key) for key in keys]
            return [None if raw is None else _unpack(raw) for raw in found]

    def count(self) -> int:
        with self.env.begin() as txn:
            return int(txn.stat(self._keys)["entries"])

    def checkpoint(self) -> Checkpoint:
        with self.env.begin(db=self._state) as txn:
            raw = txn.get(b"checkpoint")
        if raw is None:
            return Checkpoint(-1, 0, 0)
        return Checkpoint(*_CHECKPOINT.unpack(raw))

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

    def apply(self, entries: Iterable[Entry], checkpoint: Checkpoint) -> None:
        with self.env.begin(write=True) as txn:
            for key, row in entries:
                if row is None:
                    txn.delete(key, db=self._keys)
                else:
                    txn.put(key, _pack(row), db=self._keys)
            txn.put(b"checkpoint", _CHECKPOINT.pack(*checkpoint), db=self._state)

    def clear(self) -> None:
        with self.env.begin(write=True) as txn:
            txn.drop(self._keys, delete=False)
            txn.delete(b"checkpoint", db=self._state)

    def backup_to(self, dest: str) -> None:
        os.makedirs(dest, exist_ok=True)
        self.env.copy(dest)

    def sync(self) -> None:
        """Flush the environment to disk (it is opened without a sync per commit)."""
        self.env.sync(True)
