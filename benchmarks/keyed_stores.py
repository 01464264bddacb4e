"""The stores the keyed-store benchmark measures side by side, behind one small interface.

Each store is opened in its own directory. ``put`` and ``get`` are the store's own bound callables
(or the thinnest closure its API allows), so a timed loop pays the store's cost and one call, not
an adapter's method dispatch. Every store runs without fsync, as the keyed store does by default:
LMDB with sync=False and metasync=False, SQLite in WAL with synchronous=NORMAL, disk-objectstore
with do_fsync=False; RocksDB's and diskcache's defaults do not sync each write either.

A peer whose module does not import is reported as missing, with the import error, instead of
failing the run: the library never depends on any of them.
"""

from __future__ import annotations

import importlib
import os
import sqlite3
from dataclasses import dataclass
from typing import Any, Callable

from conduit_flat_file_db import FlatFileDb

KEYED = "keyed (sqlite index)"
KEYED_LMDB = "keyed (lmdb index)"
ENGINE = "engine alone (FlatFileDb)"
SQLITE = "sqlite, values inline"
LMDB = "lmdb, values inline"
DISKCACHE = "diskcache"
DOS = "disk-objectstore packs"
ROCKSDB = "rocksdb, blob files"

LMDB_MAP_SIZE = 256 * 2**30  # virtual address space only: the file grows as pages are used
SQLITE_BUSY_MS = 60_000  # writers of other processes wait, as the keyed store's writers do
SQLITE_IN_CHUNK = 500  # bound variables per SELECT ... IN (...) of get_many


class BenchStore:
    """One open store: ``put``/``get`` for single values, batch calls, ``close``.

    ``put`` returns the handle a later ``get`` takes: the key itself, or (engine alone,
    disk-objectstore) the location or hash the store chose. ``takes_key`` is False when ``put``
    takes the value only.
    """

    takes_key = True
    handles_are_keys = True

    def __init__(self, put: Callable[..., Any], get: Callable[[Any], bytes]) -> None:
        self.put = put
        self.get = get

    def put_many(self, pairs: list[tuple[bytes, bytes]]) -> Any:
        """Store ``pairs`` in one batch of the store's own batch API; handles unless they are the keys."""
        raise NotImplementedError

    def get_many(self, handles: list[Any]) -> list[bytes]:
        """The values of ``handles`` in their order, by the store's batch read if it has one."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the store; what it has not written by now is its whole-job cost."""
        raise NotImplementedError


class KeyedBench(BenchStore):
    """KeyedStore with its SQLite or LMDB index."""

    def __init__(self, path: str, index: str, max_file_size: int | None) -> None:
        keyed_store = importlib.import_module("conduit_flat_file_db").KeyedStore
        kwargs: dict[str, Any] = {"index": index}
        if max_file_size is not None:
            kwargs["max_file_size"] = max_file_size
        self.store = keyed_store(path, **kwargs)
        super().__init__(self.store.__setitem__, self.store.__getitem__)

    def put_many(self, pairs: list[tuple[bytes, bytes]]) -> Any:
        self.store.put_many(pairs)

    def get_many(self, handles: list[Any]) -> list[bytes]:
        values: list[bytes] = self.store.get_many(handles)
        return values

    def close(self) -> None:
        self.store.close()


class EngineBench(BenchStore):
    """The engine alone: FlatFileDb put/get of the same values, locations for keys."""

    takes_key = False
    handles_are_keys = False

    def __init__(self, path: str, max_file_size: int | None) -> None:
        self.db = FlatFileDb(
            os.path.join(path, "segments"),
            os.path.join(path, "segments.lock"),
            max_file_size=max_file_size or 128 * 2**20,
        )
        super().__init__(self.db.put, self.db.get)

    def put_many(self, pairs: list[tuple[bytes, bytes]]) -> Any:
        return self.db.put_many([value for _key, value in pairs])

    def get_many(self, handles: list[Any]) -> list[bytes]:
        return self.db.get_many(handles)

    def close(self) -> None:
        self.db.close()


class SqliteBench(BenchStore):
    """One SQLite table, key BLOB PRIMARY KEY, value BLOB; WAL, synchronous=NORMAL; autocommit puts."""

    def __init__(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        self.conn = sqlite3.connect(
            os.path.join(path, "kv.sqlite3"), isolation_level=None, timeout=SQLITE_BUSY_MS / 1e3
        )
        self.conn.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_MS}")
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.conn.execute("CREATE TABLE IF NOT EXISTS kv (key BLOB PRIMARY KEY, value BLOB)")
        execute = self.conn.execute
        insert = "INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)"
        select = "SELECT value FROM kv WHERE key = ?"

        def put(key: bytes, value: bytes) -> None:
            execute(insert, (key, value))

        def get(key: bytes) -> bytes:
            row = execute(select, (key,)).fetchone()
            if row is None:
                raise KeyError(key)
            found: bytes = row[0]
            return found

        super().__init__(put, get)

    def put_many(self, pairs: list[tuple[bytes, bytes]]) -> Any:
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.executemany("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", pairs)
        self.conn.execute("COMMIT")

    def get_many(self, handles: list[Any]) -> list[bytes]:
        found: dict[bytes, bytes] = {}
        for start in range(0, len(handles), SQLITE_IN_CHUNK):
            chunk = handles[start : start + SQLITE_IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            found.update(self.conn.execute(f"SELECT key, value FROM kv WHERE key IN ({marks})", chunk))
        return [found[key] for key in handles]

    def close(self) -> None:
        self.conn.close()


class LmdbBench(BenchStore):
    """py-lmdb, one write transaction per put, one read transaction per get; values inline."""

    def __init__(self, path: str) -> None:
        lmdb = importlib.import_module("lmdb")
        self.env = lmdb.open(path, map_size=LMDB_MAP_SIZE, sync=False, metasync=False)
        begin = self.env.begin

        def put(key: bytes, value: bytes) -> None:
            with begin(write=True) as txn:
                txn.put(key, value)

        def get(key: bytes) -> bytes:
            with begin() as txn:
                value: bytes | None = txn.get(key)
            if value is None:
                raise KeyError(key)
            return value

        super().__init__(put, get)

    def put_many(self, pairs: list[tuple[bytes, bytes]]) -> Any:
        with self.env.begin(write=True) as txn:
            txn.cursor().putmulti(pairs)

    def get_many(self, handles: list[Any]) -> list[bytes]:
        with self.env.begin() as txn:
            get = txn.get
            return [get(key) for key in handles]

    def close(self) -> None:
        self.env.close()


class DiskcacheBench(BenchStore):
    """diskcache.Cache with its defaults (SQLite WAL; values under 32 KiB inline in SQLite)."""

    def __init__(self, path: str) -> None:
        self.cache = importlib.import_module("diskcache").Cache(path)
        super().__init__(self.cache.__setitem__, self.cache.__getitem__)

    def put_many(self, pairs: list[tuple[bytes, bytes]]) -> Any:
        cache = self.cache
        with cache.transact():
            for key, value in pairs:
                cache[key] = value

    def get_many(self, handles: list[Any]) -> list[bytes]:
        get = self.cache.__getitem__
        return [get(key) for key in handles]

    def close(self) -> None:
        self.cache.close()


class DosBench(BenchStore):
    """disk-objectstore Container: values straight into packs (add_objects_to_pack), its hashes for keys."""

    takes_key = False
    handles_are_keys = False

    def __init__(self, path: str) -> None:
        container = importlib.import_module("disk_objectstore").Container(os.path.join(path, "container"))
        if not container.is_initialised:
            container.init_container()
        self.container = container
        add = container.add_objects_to_pack

        def put(value: bytes) -> str:
            hashkey: str = add([value], do_fsync=False)[0]
            return hashkey

        super().__init__(put, container.get_object_content)

    def put_many(self, pairs: list[tuple[bytes, bytes]]) -> Any:
        hashkeys: list[str] = self.container.add_objects_to_pack([value for _key, value in pairs], do_fsync=False)
        return hashkeys

    def get_many(self, handles: list[Any]) -> list[bytes]:
        found = self.container.get_objects_content(handles)
        return [found[key] for key in handles]

    def close(self) -> None:
        self.container.close()


class RocksBench(BenchStore):
    """rocksdict (RocksDB) in raw mode with blob files: values in blob files, keys in the LSM tree."""

    def __init__(self, path: str) -> None:
        rocksdict = importlib.import_module("rocksdict")
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_enable_blob_files(True)
        self.batch_class = rocksdict.WriteBatch
        self.db = rocksdict.Rdict(path, options)
        super().__init__(self.db.__setitem__, self.db.__getitem__)

    def put_many(self, pairs: list[tuple[bytes, bytes]]) -> Any:
        batch = self.batch_class(raw_mode=True)
        put = batch.put
        for key, value in pairs:
            put(key, value)
        self.db.write(batch)

    def get_many(self, handles: list[Any]) -> list[bytes]:
        values: list[bytes] = self.db[handles]
        return values

    def close(self) -> None:
        self.db.close()


@dataclass(frozen=True)
class StoreKind:
    """A store by name: the modules it needs and how to open one in a directory."""

    name: str
    modules: tuple[str, ...]
    opener: Callable[[str, int | None], BenchStore]

    def missing(self) -> str | None:
        """Why the store cannot run here (its import error), or None."""
        for module in self.modules:
            try:
                imported = importlib.import_module(module)
            except ImportError as exc:
                return f"missing: {type(exc).__name__}: {exc}"
            if module == "conduit_flat_file_db" and not hasattr(imported, "KeyedStore"):
                return "missing: conduit_flat_file_db has no KeyedStore"
        return None

    def open(self, path: str, max_file_size: int | None = None) -> BenchStore:
        """Open (creating) the store in directory ``path``."""
        return self.opener(path, max_file_size)


ALL_STORES = (
    StoreKind(KEYED, ("conduit_flat_file_db",), lambda path, size: KeyedBench(path, "sqlite", size)),
    StoreKind(KEYED_LMDB, ("conduit_flat_file_db", "lmdb"), lambda path, size: KeyedBench(path, "lmdb", size)),
    StoreKind(ENGINE, (), EngineBench),
    StoreKind(SQLITE, (), lambda path, _size: SqliteBench(path)),
    StoreKind(LMDB, ("lmdb",), lambda path, _size: LmdbBench(path)),
    StoreKind(DISKCACHE, ("diskcache",), lambda path, _size: DiskcacheBench(path)),
    StoreKind(DOS, ("disk_objectstore",), lambda path, _size: DosBench(path)),
    StoreKind(ROCKSDB, ("rocksdict",), lambda path, _size: RocksBench(path)),
)
KEYED_NAMES = (KEYED, KEYED_LMDB)
BY_NAME = {kind.name: kind for kind in ALL_STORES}
