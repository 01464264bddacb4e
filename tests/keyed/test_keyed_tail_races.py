"""The keyed store's unapplied tail against the things that move under it: an index rebuilt while
others read, several instances writing the same keys while one applies, read-only instances that
only follow, and vacuums deleting the segments a reader had not read yet.

Every check is exact: the operations are sequential (one instance at a time, or threads reading
values that never change), so a read must give the last acknowledged write of the key, a deleted
key must stay deleted, and len() and iteration must agree with the model.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from keyed_support import INDEXES, open_keyed

pytestmark = pytest.mark.concurrency

REBUILD_KEYS = 12000


@INDEXES
def test_a_rebuild_of_the_index_never_shows_a_reader_a_missing_or_older_value(tmp_path: Path, index: str) -> None:
    """rebuild_index() replays every key log into the index while other threads read through a
    read-only instance and through the rebuilding instance itself: each read gives the key's
    newest value and len() the number of keys, never the empty or half-replayed index."""
    path = tmp_path / "store"
    with open_keyed(path, index) as store:
        store.put_many([(f"k{i}", b"old") for i in range(REBUILD_KEYS)])
        store.put_many([(f"k{i}", b"new%d" % i) for i in range(REBUILD_KEYS)])
        store.delete_many([f"k{i}" for i in range(0, REBUILD_KEYS, 3)])
    alive = [i for i in range(REBUILD_KEYS) if i % 3]
    probes = [alive[0], alive[len(alive) // 2], alive[-1]]
    writer = open_keyed(path, index)
    reader = open_keyed(path, index, readonly=True)
    stop = threading.Event()
    rebuilding = threading.Event()
    problems: list[str] = []
    reads = [0]

    def read_until_stopped(store: object) -> None:
        assert hasattr(store, "get")
        while not stop.is_set():
            during = rebuilding.is_set()
            for i in probes:
                got = store.get(f"k{i}")
                if got != b"new%d" % i:
                    problems.append(f"{store!r}: k{i} read {got!r}")
            if store.get("k0") is not None:
                problems.append(f"{store!r}: the deleted k0 reads")
            count = len(store)  # type: ignore[arg-type]
            if count != len(alive):
                problems.append(f"{store!r}: len() is {count}, not {len(alive)}")
            reads[0] += during and rebuilding.is_set()

    threads = [threading.Thread(target=read_until_stopped, args=(store,)) for store in (reader, writer)]
    try:
        for thread in threads:
            thread.start()
        for _ in range(3):
            rebuilding.set()
            assert writer.rebuild_index() == len(alive)
            rebuilding.clear()
            time.sleep(0.01)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        reader.close()
        writer.close()
    assert not problems, f"{len(problems)} bad reads: {problems[:6]}"
    assert reads[0] > 0, "no read ran while the index was being rebuilt: the test did not test it"


@INDEXES
@pytest.mark.parametrize("readonly", [True, False])
def test_a_store_read_from_another_thread_closes_from_this_one(tmp_path: Path, index: str, readonly: bool) -> None:
    """A store whose index another thread read (its own connection) closes without an error from
    the thread that opened it, read-only or not, and opens again."""
    path = tmp_path / "store"
    with open_keyed(path, index) as store:
        store["k"] = b"v"
    store = open_keyed(path, index, readonly=readonly)
    seen: list[object] = []
    thread = threading.Thread(target=lambda: seen.append(store.get("k")))
    thread.start()
    thread.join()
    store.close()
    assert seen == [b"v"]
    with open_keyed(path, index, readonly=readonly) as again:
        assert again["k"] == b"v"
