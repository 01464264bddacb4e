"""The keyed store used the wrong way, or given damaged files: each misuse is a typed error that
says what is wrong, nothing is written by a refused call, no key ever reads other bytes, and a
damaged index is rebuilt from the key logs (found by hostile-user testing)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from conduit_flat_file_db import KeyedStore
from conduit_flat_file_db.keyed.index_base import IndexDamagedError


def _damage_sqlite_pages_after_the_state_table(path: Path) -> None:
    """Invert every page of the SQLite file after the state table's: the header, the schema and
    the state table (what an open checks) stay whole, the rows' pages do not."""
    with sqlite3.connect(path) as conn:
        roots = dict(conn.execute("SELECT name, rootpage FROM sqlite_master WHERE type = 'table'"))
        (page,) = conn.execute("PRAGMA page_size").fetchone()
    conn.close()
    data = bytearray(path.read_bytes())
    first = roots["state"] * page  # the pages are numbered from 1: this is the page after it
    assert roots["keys"] < roots["state"] and len(data) > first + 4 * page
    data[first:] = bytes(byte ^ 0xFF for byte in data[first:])
    path.write_bytes(data)


def test_a_sqlite_index_damaged_past_what_the_open_checks_is_a_typed_error_and_rebuilt(tmp_path: Path) -> None:
    """A malformed page of the SQLite index that the open's checks do not reach was a raw
    sqlite3.DatabaseError at the first read reaching it, and rebuild_index() failed the same way
    (it clears the rows first): the store could not be repaired but by deleting the file. Reads
    now raise IndexDamagedError, and rebuild_index() sets the file aside and rebuilds it."""
    values = {f"k{i}": f"value {i}".encode() * 4 for i in range(3000)}
    with KeyedStore(tmp_path / "kv") as store:
        store.put_many(values.items())
    _damage_sqlite_pages_after_the_state_table(tmp_path / "kv" / "index.sqlite3")
    with KeyedStore(tmp_path / "kv", readonly=True) as reader, pytest.raises(IndexDamagedError, match="rebuild_index"):
        for key in values:
            reader.get(key)
    with KeyedStore(tmp_path / "kv") as store:
        with pytest.raises(IndexDamagedError):
            list(store.items())
        assert store.rebuild_index() == len(values)
        assert dict(store.items()) == values
        assert store.verify().ok
    assert any(".damaged-" in p.name for p in (tmp_path / "kv").iterdir())
    with KeyedStore(tmp_path / "kv", readonly=True) as reader:
        assert reader.get_many(list(values)) == list(values.values())
