"""The keyed index is a cache of the segments: lost or damaged, it is rebuilt equal to what it was.

A store gets a history (puts with and without user meta, batches, overwrites, str and bytes keys,
add(), arrays, deletes, clear(), vacuum() over small segments); its whole mapping with every
KeyMeta is recorded; then its index is deleted, or its files are overwritten with garbage, and the
reopened store must have the same keys, the same values and the same meta: no key lost, no key
deleted before (or before a vacuum) resurrected. rebuild_index() on an open store must find the
same. Damaged LMDB files are opened in a child process (a bad memory map can crash the process).
"""

from __future__ import annotations

import hashlib
import random
import shutil
from pathlib import Path
from typing import Any

import numpy
import pytest
from keyed_support import INDEXES, Key, describe_difference, open_keyed, read_state, run_in_child, value_for

from conduit_flat_file_db import KeyedStore

KEYS: list[Key] = [f"item/{i}" for i in range(40)] + [f"item/{i}".encode() for i in range(40)] + ["é/ü", b"\x00\xff"]
KEYS += ["doomed", "again"] + [f"filler{i}" for i in range(20)]
SMALL_SEGMENTS = 8 * 1024


META_FIELDS = ("key", "size", "segment", "offset", "compressed", "created", "checksum", "user", "array")


def snapshot(store: KeyedStore) -> dict[Key, tuple[bytes, tuple[Any, ...]]]:
    """Every key's value and KeyMeta (its documented fields), read through the API; every value
    the test wrote through value_for must read back byte for byte."""
    read_state(store, "snapshot", only=lambda key: key in KEYS)
    got = {}
    for key in store:
        meta = store.meta(key)
        got[key] = (store[key], tuple(getattr(meta, field) for field in META_FIELDS))
    return got


def write_history(path: Path, index: str, history: str, seed: int) -> None:
    """One of the histories the tests rebuild after (see HISTORIES)."""
    rng = random.Random(seed)
    version = 0
    with open_keyed(path, index, max_file_size=SMALL_SEGMENTS) as store:
        for round_ in range(3):
            for _ in range(60):
                version += 1
                key = rng.choice(KEYS)
                meta = {"round": round_, "n": version, "tags": ["a", "é"]} if rng.random() < 0.5 else None
                store.put(key, value_for(key, version), meta=meta)
            batch = [(rng.choice(KEYS), version + i) for i in range(1, 9)]
            version += 9
            store.put_many([(key, value_for(key, v)) for key, v in batch])
            if history != "puts_only":
                doomed = rng.sample(KEYS, 25)
                store.delete_many(doomed[:20])
                for key in doomed[20:]:
                    store.pop(key, None)
            if history == "deletes_and_vacuum":
                done = store.vacuum()
                assert done.segments_removed > 0, f"vacuum() removed no segment in round {round_}: {done}"
        store.put_array(b"array", numpy.arange(1000, dtype="<f8").reshape(10, 100))
        content = store.add(b"content-addressed bytes")
        assert content == hashlib.sha256(b"content-addressed bytes").hexdigest()
        if history == "clear_then_puts":
            store.clear()
            for i in range(10):
                store.put(KEYS[i], value_for(KEYS[i], 10**6 + i), meta={"after": "clear"})
        if history == "deletes_and_vacuum":
            store.vacuum()


HISTORIES = ["puts_only", "with_deletes", "deletes_and_vacuum", "clear_then_puts"]


def drop_index(path: Path, index: str) -> None:
    """Delete the index's files."""
    if index == "lmdb":
        shutil.rmtree(path / "index.lmdb")
    else:
        for file in path.glob("index.sqlite3*"):
            file.unlink()


def garble_index(path: Path, index: str) -> None:
    """Overwrite the index's main file with garbage of the same size (header included)."""
    main = path / "index.lmdb" / "data.mdb" if index == "lmdb" else path / "index.sqlite3"
    size = main.stat().st_size
    main.write_bytes(random.Random(1).randbytes(size))
    for file in path.glob("index.sqlite3-*"):
        file.unlink()


def reopen_snapshot(path: str, index: str) -> dict[Key, tuple[bytes, tuple[Any, ...]]]:
    """Open the store (rebuilding its index) and snapshot it; verify() must be clean."""
    with open_keyed(path, index) as store:
        got = snapshot(store)
        report = store.verify()
        assert report.ok, report.problems[:10]
    return got


def assert_same(
    got: dict[Key, tuple[bytes, tuple[Any, ...]]], want: dict[Key, tuple[bytes, tuple[Any, ...]]], what: str
) -> None:
    """Same keys, values and meta; the message names what differs."""
    assert list(got) == list(want), f"{what}: keys differ: " + describe_difference(
        {k: 0 for k in got}, {k: 0 for k in want}
    )
    values = [key for key in want if got[key][0] != want[key][0]]
    assert not values, f"{what}: other values for {values[:10]}"
    metas = [(key, want[key][1], got[key][1]) for key in want if got[key][1] != want[key][1]]
    assert not metas, f"{what}: other meta (key, before, after) for {len(metas)} keys: {metas[:3]}"


@INDEXES
@pytest.mark.parametrize("history", HISTORIES)
@pytest.mark.parametrize("damage", ["deleted", "garbage"])
def test_lost_or_garbled_index_is_rebuilt_equal_to_the_lost_one(
    tmp_path: Path, index: str, history: str, damage: str
) -> None:
    """Delete the index (or overwrite it with garbage): the reopened store has the same keys,
    values and meta, and no deleted key comes back."""
    path = tmp_path / "store"
    write_history(path, index, history, seed=len(history))
    with open_keyed(path, index) as store:
        before = snapshot(store)
    (drop_index if damage == "deleted" else garble_index)(path, index)
    after = run_in_child(reopen_snapshot, str(path), index)
    assert_same(after, before, f"{history}, index {damage}")
    again = reopen_snapshot(str(path), index)
    assert_same(again, before, f"{history}, index {damage}, reopened after the rebuild")


@INDEXES
@pytest.mark.parametrize("history", HISTORIES)
def test_rebuild_index_on_an_open_store_finds_the_same_mapping(tmp_path: Path, index: str, history: str) -> None:
    """rebuild_index() while the store is open (and a read-only twin is open) changes nothing
    a user can see."""
    path = tmp_path / "store"
    write_history(path, index, history, seed=len(history) + 1)
    with open_keyed(path, index) as store, open_keyed(path, index, readonly=True) as twin:
        before = snapshot(store)
        store.rebuild_index()
        assert_same(snapshot(store), before, f"{history}: after rebuild_index()")
        assert_same(snapshot(twin), before, f"{history}: the read-only twin after rebuild_index()")
        store.put(b"after", b"x")
        assert twin.get(b"after") == b"x"


@INDEXES
def test_key_deleted_before_a_vacuum_is_not_resurrected_by_a_rebuild(tmp_path: Path, index: str) -> None:
    """put k (old segment), fill segments, delete k, vacuum, put k2 only: after the index is lost,
    k stays deleted; a key put, deleted and put again keeps its last value."""
    path = tmp_path / "store"
    with open_keyed(path, index, max_file_size=SMALL_SEGMENTS) as store:
        store.put("doomed", value_for("doomed", 1))
        store.put("again", value_for("again", 1))
        for i in range(200):
            store.put(f"filler{i % 20}", value_for(f"filler{i % 20}", i))
        del store["doomed"]
        del store["again"]
        store.put("again", value_for("again", 2))
        for i in range(200, 400):
            store.put(f"filler{i % 20}", value_for(f"filler{i % 20}", i))
        assert store.vacuum().segments_removed > 0
        before = snapshot(store)
        assert "doomed" not in before
    drop_index(path, index)
    after = run_in_child(reopen_snapshot, str(path), index)
    assert "doomed" not in after, "a key deleted before vacuum() came back when the index was rebuilt"
    assert_same(after, before, "rebuilt after deletes and vacuum")
