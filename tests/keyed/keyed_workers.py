"""Bodies of the keyed-store tests' child processes: writers, readers and a vacuum loop sharing one
store, writers that are SIGKILLed at random instants, and array writers under a memory limit.

They are module-level functions of a module the fork server imports, so a child starts without
importing anything. Each writes what the parent checks to files named in its config.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import random
import resource
import threading
import time
import traceback
from multiprocessing.synchronize import Event
from typing import Any, Callable

from keyed_support import Key, OpLog, iter_chunks, key_to_json, open_keyed, value_for, version_of

from conduit_flat_file_db import FlatFileDbError, KeyedStore

SHARED_KEYS: list[Key] = [f"shared-{i}" for i in range(6)] + [f"shared-{i}".encode() for i in range(6)]
VICTIM_KEYS: list[Key] = [f"k{i}" for i in range(60)] + [f"k{i}".encode() for i in range(60)]
ARRAY_DTYPE = "<u8"
ARRAY_MULTIPLIER = 0x9E3779B97F4A7C15
ARRAY_CHUNK = 2**22  # elements filled or checked at once: 32 MiB
VICTIM_SECONDS = 60.0  # a victim the parent failed to kill stops by itself


def own_keys(writer: int) -> list[Key]:
    """The keys only writer ``writer`` writes (str and bytes keys)."""
    return [f"w{writer}-{i}" if i % 2 else f"w{writer}-{i}".encode() for i in range(30)]


def guarded(cfg: dict[str, Any], body: Callable[[], None]) -> None:
    """Run ``body``; on any exception write its traceback to cfg["errors"] and re-raise."""
    try:
        body()
    except BaseException:
        with open(cfg["errors"], "a", encoding="utf-8") as handle:
            handle.write(traceback.format_exc())
        raise


# -- writers, readers and vacuum on one store --------------------------------------------------


def writer_role(cfg: dict[str, Any], ready: Event, stop: Event) -> None:
    """Put, put_many, update and delete keys (mostly its own, some shared) until ``stop``; logs each op."""
    guarded(cfg, lambda: _writer(cfg, ready, stop))


def _writer(cfg: dict[str, Any], ready: Event, stop: Event) -> None:
    rng = random.Random(cfg["seed"])
    log = OpLog(cfg["log"])
    own = own_keys(cfg["writer"])
    version = cfg["writer"] * 10**7
    with open_keyed(cfg["path"], cfg["index"], max_file_size=cfg["max_file_size"]) as store:
        while not stop.is_set():
            keys = own if rng.random() < 0.8 else SHARED_KEYS
            roll = rng.random()
            if roll < 0.65:
                items: list[tuple[Key, int | None]] = []
                for _ in range(1 if roll < 0.4 else rng.randint(1, 8)):
                    version += 1
                    items.append((rng.choice(keys), version))
                log.intent("put", items)
                pairs = [(k, value_for(k, v)) for k, v in items if v is not None]
                if len(pairs) == 1:
                    store[pairs[0][0]] = pairs[0][1]
                elif roll < 0.55:
                    store.put_many(pairs)
                else:
                    store.update(pairs)
            else:
                doomed = rng.sample(keys, 1 if roll < 0.9 else rng.randint(2, 5))
                log.intent("delete", [(k, None) for k in doomed])
                if len(doomed) == 1:
                    try:
                        del store[doomed[0]]
                    except KeyError:
                        pass
                else:
                    store.delete_many(doomed)
            log.ack()
            ready.set()


class Observer:
    """What a reader saw: every value checked byte for byte, versions per own key never going back."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.reads = 0
        self.problems: list[str] = []
        self.seen: set[tuple[str, int]] = set()
        self.last: dict[Key, int] = {}

    def saw(self, key: Key, value: bytes) -> None:
        """One value read for ``key``."""
        self.reads += 1
        try:
            version = version_of(key, value, self.where)
        except AssertionError as exc:
            self.problems.append(str(exc))
            return
        self.seen.add((json.dumps(key_to_json(key)), version))
        if not key_bytes_of(key).startswith(b"shared"):
            if version < self.last.get(key, -1):
                self.problems.append(
                    f"{self.where}: key {key!r} read version {version} after version {self.last[key]} (a stale read)"
                )
            self.last[key] = max(version, self.last.get(key, -1))


def key_bytes_of(key: Key) -> bytes:
    """The bytes of a key."""
    return key.encode() if isinstance(key, str) else key


def reader_role(cfg: dict[str, Any], ready: Event, stop: Event) -> None:
    """Read every way the API offers until ``stop``; write what was seen to cfg["result"]."""
    guarded(cfg, lambda: _reader(cfg, ready, stop))


def _reader(cfg: dict[str, Any], ready: Event, stop: Event) -> None:
    rng = random.Random(cfg["seed"])
    observer = Observer(f"reader {cfg['seed']}")
    universe = [k for w in range(cfg["writers"]) for k in own_keys(w)] + SHARED_KEYS
    with open_keyed(cfg["path"], cfg["index"], readonly=cfg["readonly"]) as store:
        while not stop.is_set():
            read_once(store, rng, universe, observer)
            if observer.reads >= 20:
                ready.set()
    with open(cfg["result"], "w", encoding="utf-8") as handle:
        json.dump({"reads": observer.reads, "problems": observer.problems[:30], "seen": sorted(observer.seen)}, handle)


def read_gets(store: KeyedStore, keys: list[Key], observer: Observer) -> None:
    """get() of each key (None: absent)."""
    for key in keys:
        value = store.get(key)
        if value is not None:
            observer.saw(key, value)


def read_many(store: KeyedStore, keys: list[Key], observer: Observer) -> None:
    """get_many() (KeyError: one of them is absent)."""
    try:
        values = store.get_many(keys)
    except KeyError:
        return
    for key, value in zip(keys, values):
        observer.saw(key, value)


def read_items(store: KeyedStore, keys: list[Key], observer: Observer) -> None:  # pylint: disable=unused-argument
    """items(): every key and value."""
    for key, value in store.items():
        observer.saw(key, value)


def read_prefix(store: KeyedStore, keys: list[Key], observer: Observer) -> None:  # pylint: disable=unused-argument
    """keys(prefix) for a prefix of each type: only keys of its type that start with it."""
    prefixes: list[Key] = ["w1-", b"w0-", "shared", b"shared"]
    for prefix in prefixes:
        for key in store.keys(prefix=prefix):
            assert key_bytes_of(key).startswith(key_bytes_of(prefix)) and type(key) is type(prefix), (key, prefix)
    observer.reads += 1


def read_open(store: KeyedStore, keys: list[Key], observer: Observer) -> None:
    """open() as a file, seek, read (KeyError: absent)."""
    try:
        with store.open(keys[0]) as handle:
            handle.seek(0)
            observer.saw(keys[0], handle.read())
    except KeyError:
        pass


def read_objects(store: KeyedStore, keys: list[Key], observer: Observer) -> None:
    """iter_objects(): absent keys skipped, each readable holds its meta's size."""
    with store.iter_objects(keys) as objects:
        for key, readable, meta in objects:
            data = readable.read()
            assert meta.size == len(data), f"iter_objects: {key!r}: meta.size {meta.size}, read {len(data)}"
            observer.saw(key, data)


def read_meta(store: KeyedStore, keys: list[Key], observer: Observer) -> None:
    """``in`` and meta() (KeyError: deleted in between)."""
    for key in keys:
        if key in store:
            try:
                store.meta(key)
            except KeyError:
                pass
    observer.reads += 1


READS = [read_gets, read_many, read_items, read_prefix, read_open, read_objects, read_meta]


def read_once(store: KeyedStore, rng: random.Random, universe: list[Key], observer: Observer) -> None:
    """One read of a random kind; KeyError only where a key may be absent."""
    rng.choice(READS)(store, rng.sample(universe, rng.randint(1, 6)), observer)


def vacuum_role(cfg: dict[str, Any], ready: Event, stop: Event) -> None:
    """vacuum() in a loop, verify() and stats() now and then, until ``stop``."""
    guarded(cfg, lambda: _vacuum(cfg, ready, stop))


def _vacuum(cfg: dict[str, Any], ready: Event, stop: Event) -> None:
    result: dict[str, Any] = {"vacuums": 0, "segments_removed": 0, "problems": []}
    with open_keyed(cfg["path"], cfg["index"], max_file_size=cfg["max_file_size"]) as store:
        while not stop.is_set():
            done = store.vacuum()
            result["vacuums"] += 1
            result["segments_removed"] += done.segments_removed
            if result["vacuums"] % 4 == 0:
                report = store.verify()
                if not report.ok:
                    result["problems"].append(f"live verify(): {report.problems[:5]}")
                store.stats()
            ready.set()
            time.sleep(0.01)
    with open(cfg["result"], "w", encoding="utf-8") as handle:
        json.dump(result, handle)


# -- victims of SIGKILL -------------------------------------------------------------------------


def victim_role(cfg: dict[str, Any]) -> None:
    """Ops of one kind (mostly) on VICTIM_KEYS until killed; each op logged before and after."""
    rng = random.Random(cfg["seed"])
    log = OpLog(cfg["log"])
    version = cfg["base_version"]
    kind = cfg["kind"]
    weights = {
        "put": (0.8, 0.0, 0.2, 0.0, 0.0),
        "put_many": (0.1, 0.7, 0.1, 0.1, 0.0),
        "delete": (0.25, 0.1, 0.45, 0.2, 0.0),
        "vacuum": (0.35, 0.1, 0.25, 0.05, 0.25),
    }[kind]
    deadline = time.monotonic() + VICTIM_SECONDS
    with open_keyed(cfg["path"], cfg["index"], fsync=cfg["fsync"], max_file_size=cfg["max_file_size"]) as store:
        log.note(f"ready {os.getpid()}")
        while time.monotonic() < deadline:
            op = rng.choices(["put", "put_many", "delete", "delete_many", "vacuum"], weights)[0]
            if op in ("put", "put_many"):
                items: list[tuple[Key, int | None]] = []
                for _ in range(1 if op == "put" else rng.randint(1, 30)):
                    version += 1
                    items.append((rng.choice(VICTIM_KEYS), version))
                log.intent(op, items)
                pairs = [(k, value_for(k, v)) for k, v in items if v is not None]
                if op == "put":
                    store.put(*pairs[0])
                else:
                    store.put_many(pairs)
            elif op in ("delete", "delete_many"):
                doomed = rng.sample(VICTIM_KEYS, 1 if op == "delete" else rng.randint(2, 20))
                log.intent(op, [(k, None) for k in doomed])
                if op == "delete":
                    try:
                        del store[doomed[0]]
                    except KeyError:
                        pass
                else:
                    store.delete_many(doomed)
            else:
                log.intent("vacuum", [])
                store.vacuum()
            log.ack()


# -- arrays larger than the memory of the process that writes them ------------------------------


def array_values(start: int, stop: int) -> Any:
    """The uint64 values at flat positions start..stop of the test array (a multiplicative hash)."""
    import numpy  # pylint: disable=import-outside-toplevel  # numpy is imported by the array tests only

    values = numpy.arange(start, stop, dtype=numpy.uint64)
    numpy.multiply(values, numpy.uint64(ARRAY_MULTIPLIER), out=values)
    return values


def fill_array_role(cfg: dict[str, Any]) -> int:
    """create_array() an array larger than this process may allocate (RLIMIT_DATA), fill it in
    place chunk by chunk and commit it; returns the peak resident set size in bytes. With
    cfg["marker"], write that file once half filled and wait inside the with-block to be killed."""
    import numpy  # pylint: disable=import-outside-toplevel  # numpy is imported by the array tests only

    limit = int(cfg["data_limit"])
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    try:
        numpy.empty(limit // 8 + 2**20, dtype=numpy.uint64)
    except MemoryError:
        pass
    else:
        raise AssertionError(f"RLIMIT_DATA of {limit} bytes lets this process allocate more than that")
    shape = tuple(cfg["shape"])
    with open_keyed(cfg["path"], cfg["index"]) as store:
        with store.create_array(cfg["key"], shape, ARRAY_DTYPE) as array:
            flat = array.reshape(-1)
            total = flat.shape[0]
            for start, stop in iter_chunks(total, ARRAY_CHUNK):
                flat[start:stop] = array_values(start, stop)
                if cfg.get("marker") and stop >= total // 2:
                    with open(cfg["marker"], "w", encoding="utf-8") as handle:
                        handle.write("half filled")
                    time.sleep(VICTIM_SECONDS)
                    raise AssertionError("the parent did not kill this process inside create_array()")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# -- dict operations that read and then write, racing in two processes -------------------------


def popitem_until_empty(path: str, index: str, start: Event) -> tuple[list[tuple[Key, bytes]], int]:
    """popitem() until it raises KeyError: the (key, value) pairs it returned, and how many keys
    the store held then (keys are only removed meanwhile: 0 unless it stopped early)."""
    popped: list[tuple[Key, bytes]] = []
    with open_keyed(path, index) as store:
        start.wait(60)
        while True:
            try:
                popped.append(store.popitem())
            except KeyError:
                return popped, len(store)


def setdefault_each(path: str, index: str, keys: int, mine: bytes, start: Event) -> list[bytes]:
    """setdefault(k, ``mine``) for each key; the values it returned."""
    with open_keyed(path, index) as store:
        start.wait(60)
        return [store.setdefault(f"k{i}", mine) for i in range(keys)]


# -- a store closed by one thread while others use it -------------------------------------------


def close_under_threads(path: str, index: str, trials: int) -> dict[str, int]:
    """``trials`` times: open a store, let threads read it (get, get_many, len and a prefix
    scan), close it from this thread meanwhile. Returns how many threads stopped with each
    error type (FlatFileDbError by name, others with their traceback), and "open descriptors":
    how many files of the stores stay open after."""
    stopped: dict[str, int] = {}
    for trial in range(trials):
        _close_under_threads_once(os.path.join(path, str(trial)), index, 0.01 + trial * 0.002, stopped)
    deadline = time.monotonic() + 10  # (background threads of the engine close some of its files)
    while _fds_under(path) and time.monotonic() < deadline:
        gc.collect()  # a connection in use when the store closed goes with that call's frames
        time.sleep(0.05)
    if _fds_under(path):
        stopped["open descriptors"] = len(_fds_under(path))
    return stopped


def _close_under_threads_once(where: str, index: str, after: float, stopped: dict[str, int]) -> None:
    """One trial of close_under_threads: close after ``after`` seconds of reads."""
    store = open_keyed(where, index)
    store.put_many([(f"k{i}", b"v%d" % i) for i in range(2000)])
    calls: list[Callable[[int], object]] = [
        lambda i: store[f"k{i % 2000}"],
        lambda i: store.get_many([f"k{(i + j) % 2000}" for j in range(50)]),
        lambda i: (len(store), list(store.keys(prefix="k1"))),
    ]
    go = threading.Event()

    def use(call: Callable[[int], object]) -> None:
        go.wait()
        for i in itertools.count():
            try:
                call(i)
            except Exception as exc:  # pylint: disable=broad-exception-caught  # counted, checked by the parent
                name = type(exc).__name__
                if not isinstance(exc, FlatFileDbError):
                    name = repr(exc) + "".join(traceback.format_tb(exc.__traceback__)[-3:])
                stopped[name] = stopped.get(name, 0) + 1
                return

    threads = [threading.Thread(target=use, args=(call,)) for call in calls for _ in range(2)]
    for thread in threads:
        thread.start()
    go.set()
    time.sleep(after)
    store.close()
    for thread in threads:
        thread.join(30)


def _fds_under(path: str) -> list[str]:
    """What this process's descriptors name under ``path``."""
    names = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile (the listing's own descriptor)
        if target.startswith(path):
            names.append(target)
    return names


# -- one store, two kinds of index ----------------------------------------------------------------


def write_rounds(path: str, index: str, writer: int, rounds: int, start: Event) -> dict[str, str | None]:
    """Write keys of this writer's own in ``rounds`` rounds (each key again, every third deleted
    in odd rounds), vacuum after each round, through an ``index`` instance; returns each key's
    final value (hex, None when deleted)."""
    final: dict[str, str | None] = {}
    lmdb = index == "lmdb"  # with other options than the SQLite writer's
    with open_keyed(path, index, max_file_size=16384 if lmdb else 8192, use_compression=lmdb) as store:
        start.wait(60)
        for round_ in range(rounds):
            for i in range(60):
                key = f"w{writer}-{i}"
                if round_ % 2 and i % 3 == 0:
                    store.delete_many([key])
                    final[key] = None
                else:
                    value = b"%d:%d:%d;" % (writer, i, round_) * (1 + i % 7)
                    store[key] = value
                    final[key] = value.hex()
            store.vacuum(0.0)
    return final
