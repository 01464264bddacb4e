"""A keyed store on a full disk: a write the disk refuses raises an OSError (never an error of the
index's own library), loses nothing acknowledged, and the store works again once space is freed.

A write is its engine commit (values and key-log record) and, when its instance's tail is long
enough, an apply of the tail to the index: either can meet the full disk. The engine's refusal
is OSError(ENOSPC) with nothing committed; the index's refusal comes after the commit, so the
write happened (GUARANTEES.md "Keyed store") and every instance sees it.
"""

from __future__ import annotations

from typing import Any

import pytest

# Imported the way pytest imports them, from this folder (pylint does not look there).
from fulldisk_fixtures import FullDisk, disk_fixture  # noqa: F401  # pylint: disable=import-error,unused-import

from conduit_flat_file_db import KeyedStore
from conduit_flat_file_db.keyed.index_base import IndexWriteError

pytestmark = pytest.mark.fulldisk

TAIL_KEYS = 2000  # a tail just short of the 2,048 keys at which a write applies it


def _write(store: KeyedStore, reader: KeyedStore, items: list[tuple[str, bytes]], model: dict[str, Any]) -> str:
    """put_many ``items``; the model takes them when the call returned, or when it raised after
    its commit (the readers see them). Returns what happened."""
    try:
        store.put_many(items)
    except Exception as exc:  # pylint: disable=broad-exception-caught  # the type is what is tested
        assert isinstance(exc, OSError), f"a write on a full disk raised {type(exc).__mro__}: {exc!r}"
        if reader.get(items[0][0]) is not None:
            assert isinstance(exc, IndexWriteError), f"a write that happened raised {exc!r}"
            model.update(items)
            return "raised after its commit"
        return "refused"
    model.update(items)
    return "written"


def _check(store: KeyedStore, model: dict[str, Any], where: str) -> None:
    bad = [key for key, value in model.items() if store.get(key) != value]
    assert not bad, f"{where}: {len(bad)} acknowledged keys read otherwise, e.g. {bad[:4]}"
    assert len(store) == len(model), f"{where}: len() is {len(store)}, not {len(model)}"


@pytest.mark.parametrize("index", ["sqlite", "lmdb"])
@pytest.mark.parametrize("free_kib", [4, 16, 64, 256])
def test_a_keyed_write_on_a_full_disk_is_an_os_error_and_loses_nothing(
    disk: FullDisk, index: str, free_kib: int
) -> None:
    """With a tail of almost 2,048 keys and ``free_kib`` KiB free, writes of 100 keys: each is
    written, refused (OSError), or raises an OSError after its commit (then every instance sees
    it); the writer and a read-only instance read every acknowledged key; close() on the full disk
    raises at most an OSError; with the space back the store opens, verifies and writes."""
    path = disk.mount / "kv"
    model: dict[str, Any] = {}
    store = KeyedStore(path, index=index, max_file_size=2**20)
    reader = KeyedStore(path, index=index, readonly=True)
    try:
        items = [(f"k{i}", b"v%d" % i) for i in range(TAIL_KEYS)]
        store.put_many(items)
        model.update(items)
        disk.filler.fill_to(free_kib * 1024)
        outcomes = [_write(store, reader, [(f"z{n}-{i}", b"w%d" % i) for i in range(100)], model) for n in range(3)]
        assert outcomes != ["written"] * 3, "the disk refused nothing: the test filled nothing"
        _check(store, model, f"the writer after {outcomes}")
        _check(reader, model, f"a read-only instance after {outcomes}")
        try:
            store.close()
        except OSError:
            pass  # the apply at close met the full disk: the key logs hold every write
    finally:
        store.close()
        reader.close()
        disk.filler.release()
    with KeyedStore(path, index=index) as again:
        _check(again, model, "reopened with space")
        assert again.verify().ok
        again["after"] = b"space is back"
        model["after"] = b"space is back"
    with KeyedStore(path, index=index, readonly=True) as again:
        _check(again, model, "reopened read-only")
