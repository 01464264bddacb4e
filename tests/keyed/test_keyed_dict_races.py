"""The dict operations that read and then write (pop, popitem, setdefault) against another
instance or process writing the same keys: each is one step, so no acknowledged write is lost
between its read and its write, and what it returns is what the store held."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from keyed_support import INDEXES, in_children, open_keyed
from keyed_workers import popitem_until_empty, setdefault_each

from conduit_flat_file_db.errors import FlatFileDbReadOnlyError

pytestmark = pytest.mark.concurrency


def _once(hook: Any, wrapped: Any, before: bool = False) -> Any:
    """``wrapped`` that runs ``hook()`` after its first call returns (``before``: before it)."""
    fired: list[bool] = []

    def call(*args: Any, **kwargs: Any) -> Any:
        if before and not fired:
            fired.append(True)
            hook()
        result = wrapped(*args, **kwargs)
        if not fired:
            fired.append(True)
            hook()
        return result

    return call


@INDEXES
def test_pop_never_deletes_a_value_written_after_it_read_the_key(tmp_path: Path, index: str) -> None:
    """Another instance puts a key between pop()'s read of it and its deletion: pop returns the
    new value and deletes it, or returns the old one and the new value stays; never the old value
    returned and the new one deleted unseen."""
    with open_keyed(tmp_path / "s", index) as first, open_keyed(tmp_path / "s", index) as other:
        first["k"] = b"old"

        def put_new() -> None:
            other["k"] = b"new"

        first.db.get = _once(put_new, first.db.get)  # type: ignore[method-assign]
        popped = first.pop("k")
        assert (popped, other.get("k")) in [(b"new", None), (b"old", b"new")]
        assert first.get("k") == other.get("k")


@INDEXES
def test_setdefault_never_overwrites_a_value_written_after_it_found_the_key_absent(tmp_path: Path, index: str) -> None:
    """Another instance puts a key between setdefault()'s lookup (absent) and its write: that
    value stays, and setdefault returns it."""
    with open_keyed(tmp_path / "s", index) as first, open_keyed(tmp_path / "s", index) as other:

        def put_other() -> None:
            other["k"] = b"theirs"

        first.db.put_logged = _once(put_other, first.db.put_logged, before=True)  # type: ignore[method-assign]
        assert first.setdefault("k", b"mine") == b"theirs"
        assert first["k"] == other["k"] == b"theirs"
        assert first.setdefault("k", b"again") == b"theirs"


def test_pop_popitem_and_setdefault_take_dicts_arguments_and_refuse_the_rest(tmp_path: Path) -> None:
    """pop with more than one default is a TypeError that deletes nothing; popitem of an empty
    store is a KeyError; a read-only store refuses all three even for an absent key."""
    path = tmp_path / "s"
    with open_keyed(path, "sqlite") as store:
        store["k"] = b"v"
        with pytest.raises(TypeError, match="at most 2 arguments"):
            store.pop("k", 1, 2)
        assert store["k"] == b"v"
        assert store.pop("absent", None) is None
        assert store.setdefault("new", b"d") == b"d"
        assert store.setdefault("new", b"e") == b"d"
        assert sorted([store.popitem(), store.popitem()]) == [("k", b"v"), ("new", b"d")]
        with pytest.raises(KeyError):
            store.popitem()
        store["k"] = b"v"
    with open_keyed(path, "sqlite", readonly=True) as reader:
        for call in (lambda: reader.pop("absent", None), reader.popitem, lambda: reader.setdefault("k", b"x")):
            with pytest.raises(FlatFileDbReadOnlyError):
                call()
        assert reader["k"] == b"v"


@INDEXES
def test_two_processes_popping_items_pop_each_key_once(tmp_path: Path, index: str) -> None:
    """Two processes popitem() until the store is empty: every key is popped by exactly one of
    them, with its value, and neither stops early with a KeyError while keys remain."""
    path = tmp_path / "s"
    count = 600
    with open_keyed(path, index) as store:
        store.put_many([(f"k{i:04}", b"v%d" % i) for i in range(count)])
    results = in_children(popitem_until_empty, (str(path), index), (str(path), index))
    popped = [pair for result, _ in results for pair in result]
    assert [left for _, left in results] == [0, 0]
    assert sorted(popped) == [(f"k{i:04}", b"v%d" % i) for i in sorted(range(count), key=lambda i: f"k{i:04}")]
    with open_keyed(path, index) as store:
        assert len(store) == 0


@INDEXES
def test_two_processes_setdefault_agree_on_every_key(tmp_path: Path, index: str) -> None:
    """Two processes setdefault() the same keys with different defaults: for each key both get
    the same value, the one stored."""
    path = tmp_path / "s"
    keys = 1500
    open_keyed(path, index).close()
    results = in_children(setdefault_each, (str(path), index, keys, b"one"), (str(path), index, keys, b"two"))
    with open_keyed(path, index) as store:
        stored = [store[f"k{i}"] for i in range(keys)]
    assert results == [stored, stored]
